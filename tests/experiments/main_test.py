"""End-to-end tests of experiments/main.py in subprocesses (the user's command)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _command(config: str, workdir, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "experiments.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def _env() -> dict[str, str]:
    # One CPU device per run, as a user's laptop has; tests/conftest.py's
    # 8-device flag must not leak into the child.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run(config: str, workdir, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(config, workdir, *overrides), cwd=ROOT, env=_env(), capture_output=True,
        text=True, timeout=timeout,
    )


def _records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _final_params(workdir) -> dict:
    checkpoints = pathlib.Path(workdir) / "checkpoints"
    step = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    state = ocp.StandardCheckpointer().restore(checkpoints / str(step) / "state")
    return state["params"], step


@pytest.mark.slow
@pytest.mark.parametrize("config", ["experiments/configs/golf.py:smoke", "experiments/configs/grpo.py:smoke"])
def test_smoke_config_runs_end_to_end(config, tmp_path):
    result = _run(config, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(tmp_path)
    assert records[-1]["step"] == 4  # 2 cold-start + 2 RL steps
    assert "eval/accuracy" in records[-1] and "reward/mean" in records[-1]
    assert "step 4/4" in result.stdout


def test_bad_override_names_the_key(tmp_path):
    result = _run("experiments/configs/grpo.py:smoke", tmp_path, "--config.optimizer.lrr=1e-3")
    assert result.returncode != 0
    assert "lrr" in result.stderr and 'Did you mean "lr"' in result.stderr
    result = _run("experiments/configs/grpo.py:smoke", tmp_path, "--config.train.loss=ppo")
    assert result.returncode != 0
    assert "config.train.loss: unknown loss 'ppo'" in result.stderr


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(tmp_path):
    # 6 steps in one run (2 cold start + 4 RL) versus a run killed with SIGKILL
    # once step 3 is checkpointed, then resumed to step 6.
    config = "experiments/configs/grpo.py:smoke"
    steps = ("--config.train.steps=4", "--config.eval.every=100")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _run(config, whole, *steps).returncode == 0

    process = subprocess.Popen(
        _command(config, killed, *steps), cwd=ROOT, env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while not (killed / "checkpoints" / "3").is_dir():
        assert process.poll() is None, "the run ended before step 3 was checkpointed"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = _run(config, killed, *steps)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    (params_whole, step_whole), (params_killed, step_killed) = _final_params(whole), _final_params(killed)
    assert step_whole == step_killed == 6
    flat_whole = _flatten(params_whole)
    flat_killed = _flatten(params_killed)
    assert flat_whole.keys() == flat_killed.keys()
    for key in flat_whole:
        np.testing.assert_array_equal(flat_killed[key], flat_whole[key], err_msg=key)
    # Same data order and sampling: identical per-step metrics after the resume
    # (wall-clock throughput, `perf/*`, aside).
    def deterministic(record):
        return {k: v for k, v in record.items() if not k.startswith("perf/")}

    by_step = {r["step"]: deterministic(r) for r in _records(whole)}
    for record in _records(killed):
        assert deterministic(record) == by_step[record["step"]], record["step"]


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out |= _flatten(value, f"{prefix}/{key}")
        return out
    return {prefix: np.asarray(tree)}


@pytest.mark.slow
def test_sigterm_saves_a_restorable_checkpoint(tmp_path):
    process = subprocess.Popen(
        _command("experiments/configs/grpo.py:smoke", tmp_path, "--config.train.steps=50",
                 "--config.checkpoint.every=1000"),
        cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 600
    while not (tmp_path / "metrics.jsonl").exists() or len(_records(tmp_path)) < 4:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    params, step = _final_params(tmp_path)
    # The first save is always taken; SIGTERM forced one at the step it stopped.
    assert 3 <= step < 52 and step == _records(tmp_path)[-1]["step"]
    assert all(np.all(np.isfinite(v)) for v in _flatten(params).values())
