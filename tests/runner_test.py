"""Tests for golfjax/runner.py, in-process."""

import contextlib
import json

import chex
import jax
import pytest

from experiments.configs import golf as golf_config
from experiments.configs import grpo as grpo_config
from golfjax import config as config_lib
from golfjax import runner
from golfjax.types import concat_parts


@pytest.mark.slow
def test_golf_two_steps_on_the_8_device_mesh(tmp_path):
    # (2, 2, 2): rows over data x fsdp = 4 devices, tensor parallel over 2.
    config = golf_config.get_config("smoke")
    config.cold_start.steps = 0
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    # Reveal-critic refinements of an untrained model rarely succeed, so make
    # every group take an injection whenever a refinement happens to succeed.
    config.golf.strategy = "always"
    last = runner.run(config, str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    for key in ("reward_pre_injection/mean", "golf/injection_rate", "golf/refinement_success",
                "refinement/mean", "reward/all_fail_frac", "eval/accuracy"):
        assert key in last, key
    assert last["samples/generated"] == 2 * 2 * 4 * 4  # 2 steps x (original + refinement) x B x G
    assert last["train/skipped_nonfinite"] == 0.0


def test_golf_batch_parts_keep_their_prompt_lengths(tmp_path):
    # The RL step trains GOLF's batch as two parts; concatenated, they are
    # exactly the one batch (the train step's equality: tests/train/step_test.py).
    config = golf_config.get_config("smoke")
    config.cold_start.steps = 0
    cfg = config_lib.build(config_lib.RunConfig, config)
    r = runner.Run(cfg, str(tmp_path))
    problems = r.train_problems[: cfg.train.prompts_per_step]
    key = jax.random.PRNGKey(7)
    whole, info = r.build_batch(r.initial_params, problems, key)
    parts, parts_info = r.build_batch(r.initial_params, problems, key, parts=True)
    assert parts_info == info
    original, refinement = parts
    n = cfg.train.prompts_per_step * cfg.sampling.group_size
    assert original.num_rows == refinement.num_rows == n
    assert original.prompt_tokens_NxP.shape[1] < refinement.prompt_tokens_NxP.shape[1]
    assert whole.prompt_tokens_NxP.shape[1] == refinement.prompt_tokens_NxP.shape[1]
    chex.assert_trees_all_equal(concat_parts(parts, r.tokenizer.pad_id), whole)


def test_conflicting_config_names_the_differing_keys(tmp_path):
    config = golf_config.get_config("smoke")
    config.cold_start.steps = 0
    config.train.steps = 1
    config.eval.every = 100
    runner.run(config, str(tmp_path))
    config.optimizer.lr = 0.5
    config.golf.n_inject = 2
    with pytest.raises(ValueError, match=r"differing keys: golf.n_inject: 1 -> 2; optimizer.lr: 0.001 -> 0.5"):
        runner.run(config, str(tmp_path))


def _cold_start_kinds(r, cfg, steps):
    """Runs `steps` cold-start steps of `r`; each one's kind (1.0: refinement batch)."""
    state = r.sft_trainer.init_state(r.initial_params, cfg.seed)
    data = runner.EpochIterator(len(r.cold_problems), cfg.cold_start.batch_size, cfg.seed)
    kinds = []
    for step in range(steps):
        state, metrics = r.cold_start_step(state, data, step)
        kinds.append(metrics["cold_start/refine_batch"])
    return kinds


def test_cold_start_batches_are_all_plain_or_all_refinement(tmp_path, monkeypatch):
    config = golf_config.get_config("smoke")
    config.cold_start.refine_fraction = 0.5
    cfg = config_lib.build(config_lib.RunConfig, config)
    r = runner.Run(cfg, str(tmp_path))
    lengths = []
    sft_batch = runner.cold_start_lib.sft_batch
    monkeypatch.setattr(runner.cold_start_lib, "sft_batch",
                        lambda examples, **kw: lengths.append(kw["prompt_len"]) or sft_batch(examples, **kw))
    kinds = _cold_start_kinds(r, cfg, 8)
    assert set(kinds) == {0.0, 1.0}  # Both kinds, drawn per step from (seed, step).
    # Plain prompts ("What is 3+45?") fit the smallest bucket; refinement prompts need a larger one.
    smallest = cfg.sampling.prompt_buckets[0]
    assert [n == smallest for n in lengths] == [k == 0.0 for k in kinds]


def test_refinement_batches_draw_from_refine_task_kwargs(tmp_path, monkeypatch):
    config = golf_config.get_config("smoke")
    config.cold_start.refine_fraction = 0.5
    config.cold_start.refine_task_kwargs = {"min_digits": 3, "max_digits": 3}
    cfg = config_lib.build(config_lib.RunConfig, config)
    r = runner.Run(cfg, str(tmp_path))
    seen = []
    make = runner.data_cold_start.make_cold_start_examples
    monkeypatch.setattr(runner.data_cold_start, "make_cold_start_examples",
                        lambda task, problems, *a, **kw: seen.append((kw["refine_fraction"], problems))
                        or make(task, problems, *a, **kw))
    _cold_start_kinds(r, cfg, 6)
    assert {fraction for fraction, _ in seen} == {0.0, 1.0}
    for fraction, problems in seen:
        operands = [max(p.meta["a"], p.meta["b"]) for p in problems]
        if fraction:  # 3-digit operands, the refine_task_kwargs.
            assert min(operands) >= 100
        else:  # The cold start's 1-digit sums.
            assert max(operands) < 100


def test_refine_first_steps_come_before_plain_batches(tmp_path):
    config = golf_config.get_config("smoke")
    config.cold_start.steps = 5
    config.cold_start.refine_first_steps = 3
    config.cold_start.refine_fraction = 0.0  # Then plain batches only.
    config.cold_start.refine_task_kwargs = {"min_digits": 3, "max_digits": 3}
    cfg = config_lib.build(config_lib.RunConfig, config)
    r = runner.Run(cfg, str(tmp_path))
    assert min(max(p.meta["a"], p.meta["b"]) for p in r.refine_problems) >= 100
    assert _cold_start_kinds(r, cfg, 5) == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_the_cold_start_never_trains_on_a_held_out_problem(tmp_path):
    # With num_test = 0 and otherwise the RL task's kwargs (1-digit sums that
    # carry), the cold-start split's first problems are exactly the RL test split.
    config = golf_config.get_config("smoke")
    config.cold_start.task_kwargs = {"num_test": 0, "num_train": 45}
    cfg = config_lib.build(config_lib.RunConfig, config)
    r = runner.Run(cfg, str(tmp_path))
    held_out = {p.question for p in r.task.load("test")}
    assert len(held_out) == 10
    assert len(r.cold_problems) == 45 - 10  # Every carrying 1-digit sum, less the held-out ones.
    assert not held_out & {p.question for p in r.cold_problems}


def test_too_few_cold_start_problems_name_the_config_key(tmp_path):
    config = golf_config.get_config("smoke")
    config.cold_start.refine_fraction = 0.5
    config.cold_start.refine_task_kwargs = {"num_train": 5}
    cfg = config_lib.build(config_lib.RunConfig, config)
    with pytest.raises(ValueError, match=r"cold_start.refine_task_kwargs: .* gives [0-5] train problems"):
        runner.Run(cfg, str(tmp_path))


class _FlagSetFromCall:
    """A stand-in for the SIGTERM event that reads as set from its n-th read on."""

    def __init__(self, n):
        self.reads, self.n = 0, n

    def is_set(self):
        self.reads += 1
        return self.reads >= self.n


def test_a_preemption_always_saves_the_step_it_stops_at(tmp_path, monkeypatch):
    # The flag turns on during step 4 (reads 1-3 are steps 1-3 if it is read once a
    # step). Whatever step the run stops at must be the newest checkpoint: a SIGTERM
    # landing between the save decision and the stop decision must not lose a step.
    flag = _FlagSetFromCall(4)
    monkeypatch.setattr(runner, "_preemption_flag", lambda: contextlib.nullcontext(flag))
    config = grpo_config.get_config("smoke")
    config.cold_start.steps = 0
    config.train.steps = 8
    config.eval.every = 100
    config.checkpoint.every = 1000
    runner.run(config, str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    saved = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert records[-1]["step"] == saved == 4
