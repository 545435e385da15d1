"""End-to-end runs of experiments/configs/vespo.py through experiments/main.py.

Each run is the user's command in a subprocess on 8 simulated CPU devices (the
default mesh: rows over all 8). The runs share a persistent compilation cache,
so only the first one pays for compiling the common programs (sampler, eval,
log-probs); each variant then compiles what is its own (its loss's step, the
GOLF refinement shapes).
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from experiments.configs import vespo as vespo_config
from golfjax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEADLINE_S = 900  # A bound for a hung run, never a timing assertion.


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env |= {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8"
        " --xla_cpu_collective_call_terminate_timeout_seconds=60",
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    return env


def _command(variant, workdir, *overrides):
    return [
        sys.executable, "-m", "experiments.main",
        f"--config=experiments/configs/vespo.py:{variant}", f"--workdir={workdir}", *overrides,
    ]


def _run(env, variant, workdir, *overrides):
    result = subprocess.run(
        _command(variant, workdir, *overrides), cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=DEADLINE_S,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _last_step(workdir):
    """The step of the last complete record, -1 before the first (read while written)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return -1
    with open(path) as f:
        lines = [line for line in f.read().split("\n")[:-1] if line]  # Complete lines only.
    return json.loads(lines[-1])["step"] if lines else -1


def _deterministic(record):
    return {k: v for k, v in record.items() if not k.startswith("perf/")}


# `smoke` is `vespo,smoke=1`; every other variant runs with `smoke=1` (`moe`
# in its own test below). Of the losses only VESPO and its PPO-clip baseline
# run end to end: GSPO, SAPO and CISPO take the same path through the
# schedule and differ only in the loss, which tests/train/step_test.py runs in
# the jitted step; their configs are checked below. The `golf` option is built
# and checked below, not run: GOLF's batches take the same schedule and step
# whatever the loss (tests/train/step_test.py trains their two parts;
# tests/experiments/main_test.py and tests/train_loop_test.py run GOLF end to end).
# `smoke` runs in the interrupted-and-resumed test below (4 RL steps, no
# cold start: tests/experiments/main_test.py runs the cold start).
END_TO_END = ("smoke", "ppo_clip", "async")
SMOKE_RUNS = [(f"{v},smoke=1",) for v in END_TO_END[1:]]


@pytest.mark.parametrize("variant", [v for v in vespo_config.VARIANTS if v not in END_TO_END + ("vespo", "qwen3_30b_a3b_math")])
def test_every_other_variant_builds_a_valid_run(variant):
    config = config_lib.build(config_lib.RunConfig, vespo_config.get_config(f"{variant},smoke=1"))
    config_lib.validate(config, device_count=8)
    assert config.train.loss == (variant if variant in vespo_config.LOSS_VARIANTS else "vespo")


@pytest.mark.slow
@pytest.mark.parametrize("variant_and_overrides", SMOKE_RUNS, ids=lambda v: " ".join(v))
def test_smoke_run_of_each_variant(env, variant_and_overrides, tmp_path):
    variant, *overrides = variant_and_overrides
    _run(env, variant, tmp_path, *overrides)
    _check_smoke_run(_records(tmp_path), vespo_config.get_config(variant))


def _check_smoke_run(records, config):
    rl = [r for r in records if "schedule/staleness" in r]
    total = config.cold_start.steps + config.train.steps
    assert records[-1]["step"] == total and len(rl) == config.train.steps
    # Every smoke run is off-policy (2 mini-batches per rollout, or asynchronous).
    for key in ("schedule/behaviour_version", "schedule/log_w_pos_mean", "schedule/log_w_neg_mean",
                "schedule/ess", "grad_norm", "entropy", "reward/mean", "eval/accuracy"):
        assert key in records[-1], key
    assert all(r["train/skipped_nonfinite"] == 0.0 for r in rl)
    if config.train.loss in ("ppo_clip", "gspo", "cispo"):
        assert "loss/clip_frac" in records[-1]
    samples_per_step = config.train.prompts_per_step * config.sampling.group_size
    if config.schedule.async_rollout:
        max_ahead = config_lib.build(config_lib.RunConfig, config).schedule.max_ahead
        assert all(r["schedule/lag_max"] <= max_ahead - 1 for r in rl)
        # Nothing is dropped; rollouts in flight at a checkpoint are generated again.
        assert rl[-1]["samples/generated_total"] == len(rl) * samples_per_step
    else:
        n = config.schedule.minibatches
        assert [r["schedule/staleness"] for r in rl] == [float(j % n) for j in range(len(rl))]
        assert all(r["schedule/minibatches"] == n for r in rl)
        factor = 2 if config.golf.enabled else 1  # GOLF also samples refinements.
        assert rl[-1]["samples/generated_total"] == factor * len(rl) * samples_per_step
    if config.golf.enabled:
        assert "golf/injection_rate" in records[-1]
    # VESPO's kernel statistics are the VESPO loss's own diagnostics.
    assert ("loss/phi_pos_mean" in rl[-1]) == (config.train.loss == "vespo")


SYNC = {"train.steps": 4, "cold_start.steps": 0, "eval.every": 2}
SYNC_FLAGS = tuple(f"--config.{key}={value}" for key, value in SYNC.items())


@pytest.mark.slow
def test_sync_run_logs_its_diagnostics_is_deterministic_and_resumes_after_sigterm_mid_rollout(env, tmp_path):
    # One test, not three over a module fixture: xdist may hand tests of one
    # module to both workers, and each would then run the fixture's three runs.
    whole_dir, killed = tmp_path / "whole", tmp_path / "killed"
    _run(env, "smoke", whole_dir, *SYNC_FLAGS)
    whole = _records(whole_dir)
    config = vespo_config.get_config("smoke")
    for key, value in SYNC.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    _check_smoke_run(whole, config)

    # The same run stopped by SIGTERM mid-rollout, then resumed.
    process = subprocess.Popen(
        _command("smoke", killed, *SYNC_FLAGS), cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + DEADLINE_S
    # Step 1 is the first mini-batch of a rollout of 2: SIGTERM lands mid-rollout.
    while _last_step(killed) < 1:
        assert process.poll() is None, "the run ended before its first step"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 0, stderr[-4000:]
    before_resume = _records(killed)
    _run(env, "smoke", killed, *SYNC_FLAGS)
    resumed = _records(killed)

    # Deterministic: the stopped run's steps equal the whole run's.
    by_step = {r["step"]: _deterministic(r) for r in whole}
    assert len(before_resume) >= 2
    for record in before_resume:
        assert _deterministic(record) == by_step[record["step"]], record["step"]
    # The preempted run finished its rollout batch (N = 2) before saving, and
    # the resumed run equals the uninterrupted one.
    assert before_resume[-1]["step"] == 2
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == list(range(5))
    for mine, theirs in zip(resumed, whole):
        assert _deterministic(mine) == _deterministic(theirs), mine["step"]


@pytest.mark.slow
def test_moe_variant_trains_evaluates_and_resumes_exactly(env, tmp_path):
    # VESPO on tiny_qwen3_moe end to end: rollouts that record their routes,
    # updates at staleness 0 and 1, evaluation, checkpoints; the run resumed
    # from its checkpoint after 2 RL steps equals the whole run. The untrained
    # policy earns no reward, so an entropy bonus makes every update move
    # the weights (and the resumed optimizer state matter).
    whole, split = tmp_path / "whole", tmp_path / "split"
    # Evaluations where the resumed part starts; no cold start (it is the
    # dense runs' concern, and costs the most here).
    flags = ("--config.train.steps=4", "--config.eval.every=2", "--config.cold_start.steps=0",
             "--config.train.entropy_coef=0.01")
    _run(env, "moe,smoke=1", whole, *flags)
    # The same work directory as it was after step 2 (checkpoints are taken
    # between rollouts of 2 mini-batches: after steps 2 and 4).
    shutil.copytree(whole, split)
    shutil.rmtree(split / "checkpoints" / "4")
    assert sorted(d.name for d in (split / "checkpoints").iterdir() if d.name.isdigit()) == ["2"]
    resumed = _run(env, "moe,smoke=1", split, *flags)
    assert "resuming from checkpoint step 2" in resumed.stdout
    whole, split = _records(whole), _records(split)
    # Step 0 is the starting policy's evaluation.
    assert [r["step"] for r in split] == [r["step"] for r in whole] == list(range(5))
    for mine, theirs in zip(split, whole):
        assert _deterministic(mine) == _deterministic(theirs), mine["step"]
    rl = whole[1:]
    assert [r["schedule/staleness"] for r in rl] == [0.0, 1.0, 0.0, 1.0]
    for r in rl:
        assert r["train/skipped_nonfinite"] == 0.0 and "loss/phi_pos_mean" in r
        assert r["grad_norm"] > 0
        # The sampling policy routes its own rollout's tokens as it did; one
        # update later its routers choose other experts for some of them.
        if r["schedule/staleness"] == 0.0:
            assert r["moe/route_mismatch"] == 0.0
        else:
            assert r["moe/route_mismatch"] > 0
        assert r["moe/route_mismatch_tokens"] >= r["moe/route_mismatch"]
    assert "eval/accuracy" in whole[-1]


def test_moe_variant_is_vespos_released_moe_setting():
    from golfjax import config as config_lib

    cfg = config_lib.build(config_lib.RunConfig, vespo_config.get_config("moe"))
    assert (cfg.model.preset, cfg.train.loss, cfg.schedule.minibatches) == (
        "tiny_qwen3_moe", "vespo", 8)
    assert (cfg.model.routing_replay, cfg.train.moe_aux_loss_coef) == ("off", 0.0)
    assert (cfg.loss.vespo_k_pos, cfg.loss.vespo_lam_pos, cfg.loss.vespo_k_neg,
            cfg.loss.vespo_lam_neg) == (2.0, 3.0, 3.0, 2.0)
    real = config_lib.build(config_lib.RunConfig,
                            vespo_config.get_config("moe,task=math,init=/ckpt"))
    assert (real.model.hf_path, real.optimizer.lr, real.cold_start.steps) == ("/ckpt", 1e-6, 0)
    smoke = vespo_config.get_config("moe,smoke=1")
    assert smoke.model.preset == "tiny_qwen3_moe"


def test_math_task_option_builds_a_vespo_run_on_math_prompts():
    from golfjax import config as config_lib

    cfg = config_lib.build(config_lib.RunConfig, vespo_config.get_config("gspo,n=16,task=math"))
    assert (cfg.task.name, cfg.train.loss, cfg.schedule.minibatches) == ("math", "gspo", 16)
    assert cfg.cold_start.steps == 0 and cfg.train.steps % 16 == 0
    golf = vespo_config.get_config("golf,task=math")
    assert golf.golf.enabled and golf.task.name == "math" and golf.golf.template == "default"
    with pytest.raises(ValueError, match="option task='gsm8k'; expected one of arith, math"):
        vespo_config.get_config("vespo,task=gsm8k")


def test_golf_option_trains_golf_batches_with_any_loss():
    from golfjax import config as config_lib

    golf = vespo_config.get_config("golf,n=4")
    ppo = vespo_config.get_config("ppo_clip,golf=1,n=4")
    plain = vespo_config.get_config("ppo_clip,n=4")
    assert golf.train.loss == "vespo" and ppo.train.loss == "ppo_clip"
    assert golf.golf.enabled and ppo.golf.enabled and not plain.golf.enabled
    # The loss is the only difference: the same GOLF regime and cold start.
    assert ppo.task.to_dict() == golf.task.to_dict() != plain.task.to_dict()
    assert ppo.cold_start.to_dict() == golf.cold_start.to_dict()
    assert config_lib.build(config_lib.RunConfig, ppo).cold_start.refine_first_steps > 0
    with pytest.raises(ValueError, match="unknown option 'gold=1' of variant 'ppo_clip'"):
        vespo_config.get_config("ppo_clip,gold=1")


@pytest.mark.parametrize("variant, message", [
    ("vespo,n=0", r"option n='0'; expected an int >= 1"),
    ("vespo,n=four", r"option n='four'; expected an int >= 1"),
    ("vespo,async=yes", r"option async='yes'; expected 0 or 1"),
    ("vespo,seed=-1", r"option seed='-1'; expected an int >= 0"),
    ("vespo,n", r"unknown option 'n' of variant 'vespo'; expected NAME=VALUE"),
    ("adam", r"unknown variant 'adam'"),
])
def test_variant_options_are_typed_and_checked(variant, message):
    with pytest.raises(ValueError, match=message):
        vespo_config.get_config(variant)


def test_qwen3_30b_a3b_math_is_the_moe_setting_at_its_real_size():
    cfg = config_lib.build(config_lib.RunConfig, vespo_config.get_config("qwen3_30b_a3b_math"))
    assert (cfg.model.preset, cfg.task.name, cfg.train.loss, cfg.schedule.minibatches) == (
        "qwen3-30b-a3b", "math", "vespo", 8)
    assert (cfg.model.routing_replay, cfg.train.moe_aux_loss_coef, cfg.optimizer.lr) == (
        "off", 0.0, 1e-6)
    # Expert parallelism 8 on a v5p-64's 32 chips: one row per data shard.
    assert (cfg.mesh.fsdp, cfg.mesh.tensor, cfg.train.micro_batches) == (-1, 4, 2048 // 8)
    with pytest.raises(ValueError, match="qwen3_30b_a3b_math runs synchronously only"):
        vespo_config.get_config("qwen3_30b_a3b_math,async=1")
