"""Fully asynchronous VESPO on two process groups of one JAX job (issue #29).

Two CPU processes of two devices each: process 0 is the learner group,
process 1 the rollout group (`schedule.rollout_processes=1`), training
`reverse` from its committed base policy with VESPO, partial rollouts and a
weight sync every step. The run stops at step 6 with a checkpoint and a
second job resumes it to step 10.
"""

from __future__ import annotations

import json

import pytest

from tests import two_processes

STEPS, RESUMED = 6, 10
ARGS = [
    "--config=experiments/configs/reverse.py:grpo", "--config.train.loss=vespo", "--config.train.advantage=grpo",
    "--config.schedule.async_rollout=True", "--config.schedule.rollout_processes=1",
    "--config.schedule.sync_every=1", "--config.schedule.staleness_threshold=1.0",
    # One token a chunk: a weight sync lands inside generations (the tiny
    # learner steps about as fast as the rollout group decodes).
    "--config.schedule.rollout_chunk_tokens=1", "--config.train.recompute_old_logp=False",
    "--config.train.prompts_per_step=4", "--config.sampling.group_size=4", "--config.optimizer.warmup_steps=1",
    "--config.eval.every=100", "--config.eval.num_problems=8", f"--config.checkpoint.every={STEPS}",
]


def _intervals(records, name):
    return [(r[f"perf/{name}_start_s"], r[f"perf/{name}_end_s"]) for r in records if f"perf/{name}_start_s" in r]


@pytest.mark.slow
def test_vespo_trains_asynchronously_on_a_rollout_and_a_learner_process_and_resumes(tmp_path):
    workdir = tmp_path / "run"
    out = two_processes.run_experiment(ARGS + [f"--config.train.steps={STEPS}"], workdir, tmp_path / "logs1")
    assert f"step {STEPS}/{STEPS}" in out[0] and "step" not in out[1]  # The rollout group logs no steps.
    assert (workdir / "checkpoints" / str(STEPS)).is_dir()
    out = two_processes.run_experiment(ARGS + [f"--config.train.steps={RESUMED}"], workdir, tmp_path / "logs2")
    assert f"resuming from checkpoint step {STEPS}" in out[0] and f"step {RESUMED}/{RESUMED}" in out[0]

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["step"] > 0]
    assert [r["step"] for r in steps] == list(range(1, RESUMED + 1))
    # Every step trained one mini-batch of new prompts: none lost or trained
    # twice across the resume (rollouts in flight were generated again).
    assert [r["samples/prompts_seen"] for r in steps] == [4 * s for s in range(1, RESUMED + 1)]
    # Weights arrived every step: the behaviour policy kept moving, and no
    # row was older than the throttle allows ((1 + 1.0) x 1 mini-batches ahead).
    assert len({r["schedule/behaviour_version"] for r in steps}) >= RESUMED // 2
    assert all(0 <= r["schedule/lag_min"] <= r["schedule/lag_max"] <= 1 for r in steps)
    # Partial rollouts: some rows hold tokens of two policy versions.
    assert max(r["schedule/multi_version_frac"] for r in steps) > 0
    # The rollout group generated while the learner trained (wall-clock
    # intervals of the two processes).
    train, produce = _intervals(steps, "train"), _intervals(steps, "rollout")
    overlap = sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in train for b0, b1 in produce)
    assert overlap > 0
