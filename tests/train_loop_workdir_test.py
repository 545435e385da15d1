"""End-to-end tests of a run's work directory through `train_loop.train`: the lock,
exactly-once metrics, checkpoint fallback, interrupts, resumes of finished
runs and the non-finite policy (issue #21's table, one test per row)."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

import jax

from experiments.configs import grpo as grpo_config
from golfjax import export as export_lib
from golfjax import metrics as metrics_lib
from golfjax import train_loop
from golfjax.loops import schedule as schedule_lib
from golfjax.train import checkpoint as checkpoint_lib
from golfjax.train import step as step_lib
from golfjax.train import workdir as workdir_lib


def _config(steps=2):
    config = grpo_config.get_config("smoke")
    config.cold_start.steps = 0
    config.train.steps = steps
    config.eval.every = 100  # Evaluations at step 0 and at the end only.
    config.checkpoint.every = 1
    return config


def _steps(workdir):
    return [r["step"] for r in metrics_lib.read_metrics(workdir)]


def _saved(workdir):
    return sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())


def _flip_bytes(path, count=64):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        for i in range(len(data) - count, len(data)):
            data[i] ^= 0xFF
        f.seek(0)
        f.write(data)


def _largest_file(directory):
    files = [os.path.join(root, n) for root, _, names in os.walk(directory) for n in names]
    return max(files, key=os.path.getsize)


def test_a_second_run_on_a_held_directory_fails_at_once_naming_the_holder(tmp_path):
    workdir = tmp_path / "run"
    with workdir_lib.lock(workdir):
        with pytest.raises(workdir_lib.WorkdirLockedError, match=rf"in use by another run: pid {os.getpid()} on host"):
            train_loop.train(_config(), str(workdir))
        assert os.listdir(workdir) == ["lock"]  # Nothing else was written.
    assert not (workdir / "lock").exists()


@pytest.mark.slow  # The file's first RL run: it compiles the smoke programs.
def test_a_rerun_after_a_crash_before_the_first_checkpoint_logs_each_step_once(tmp_path, capfd):
    # A run killed (or out of disk) during step 3, before its first checkpoint,
    # leaves steps 0-2 and a torn line.
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in range(3)) + '{"step": 3, "lo')
    train_loop.train(_config(steps=3), str(tmp_path))
    assert _steps(tmp_path) == [0, 1, 2, 3]
    assert all(r.get("loss") != 9.0 for r in metrics_lib.read_metrics(tmp_path))
    assert "dropped 1 unreadable line(s)" in capfd.readouterr().out


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd):
    first = train_loop.train(_config(steps=2), str(tmp_path))
    assert _saved(tmp_path) == [1, 2]
    records = metrics_lib.read_metrics(tmp_path)
    # 64 bytes of the state flipped: without the digest this could restore into NaNs.
    damaged = _largest_file(tmp_path / "checkpoints" / "2" / "state")
    _flip_bytes(damaged)
    capfd.readouterr()
    last = train_loop.train(_config(steps=3), str(tmp_path))
    out = capfd.readouterr().out
    assert (f"{tmp_path}: damaged checkpoint: {damaged} differs from its digest (sha256 mismatch:"
            " altered bytes); trying step 1\n") in out
    assert f"{tmp_path}: resuming from checkpoint step 1\n" in out
    assert f"{tmp_path}: settings changed since the checkpoint: train.steps: 2 -> 3\n" in out
    assert _steps(tmp_path) == [0, 1, 2, 3]
    # Step 2 trained again from step 1 is the step 2 of the first run, bit for bit.
    again = metrics_lib.read_metrics(tmp_path)[2]
    for key in ("loss", "grad_norm", "reward/mean"):
        assert again[key] == records[2][key], key
    assert last["train/skipped_nonfinite"] == 0.0 and first["train/skipped_nonfinite"] == 0.0


def _finite_checkpoints(workdir):
    """Whether each saved step's state holds finite values only (read without a target)."""
    import numpy as np
    import orbax.checkpoint as ocp

    return {step: all(np.all(np.isfinite(x)) for x in jax.tree.leaves(
        ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state")))
        if np.issubdtype(np.asarray(x).dtype, np.floating)) for step in _saved(workdir)}


@pytest.mark.slow
def test_a_poisoned_checkpoint_is_passed_over_by_the_export_and_the_resume(tmp_path, capfd, monkeypatch):
    # issue 26, Found 3. At lr = 1e30 weight decay alone makes the parameters
    # infinite at step 2. Without the step's check of the update (as at
    # fdbc87a) the run seals checkpoints of them, digests and all.
    config = _config(steps=3)
    config.optimizer.lr = 1e30
    monkeypatch.setattr(step_lib, "_all_finite", lambda tree: jax.numpy.array(True), raising=False)
    train_loop.train(config, str(tmp_path))
    monkeypatch.undo()
    assert _finite_checkpoints(tmp_path) == {1: True, 2: False, 3: False}
    capfd.readouterr()
    # The export restores each step in turn and takes the newest finite one, moving nothing.
    assert export_lib.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "policy")]) == 0
    out, err = capfd.readouterr()
    assert "exported step 1" in out
    lines = err.splitlines()
    assert len(lines) == 2, err
    for line, step in zip(lines, (3, 2)):
        assert re.fullmatch(rf"damaged checkpoint: {tmp_path}/checkpoints/{step}/state holds non-finite values"
                            rf" in \d+ array\(s\), e\.g\. state\.params\S+; trying step {step - 1}", line), line
    assert _saved(tmp_path) == [1, 2, 3]
    # The resume does the same, sets the two aside, and with the check in
    # place the updates that would poison the state are skipped.
    config.train.steps = 4
    train_loop.train(config, str(tmp_path))
    out = capfd.readouterr().out
    assert f"{tmp_path}: resuming from checkpoint step 1\n" in out
    assert f"{tmp_path}: moved damaged step 3 to {tmp_path}/damaged_checkpoints/3" in out
    assert _finite_checkpoints(tmp_path) == {2: True, 3: True, 4: True}
    assert metrics_lib.read_metrics(tmp_path)[2]["train/skipped_nonfinite"] == 1.0


@pytest.mark.slow
def test_a_resumed_kl_run_without_a_cold_start_rebuilds_the_same_reference(tmp_path):
    # issue 26, Found 1: the reference is the model's initial parameters, rebuilt
    # by the resume (the cold start's case is tests/experiments/main_test.py's).
    def config(steps):
        c = _config(steps=steps)
        c.train.kl_coef = 0.1
        return c

    train_loop.train(config(2), str(tmp_path / "whole"))
    train_loop.train(config(1), str(tmp_path / "resumed"))
    train_loop.train(config(2), str(tmp_path / "resumed"))
    whole, resumed = (metrics_lib.read_metrics(tmp_path / name) for name in ("whole", "resumed"))
    assert 0 <= whole[1]["loss/kl"] < 1e-9 and whole[2]["loss/kl"] > whole[1]["loss/kl"]
    assert resumed[2]["loss/kl"] == whole[2]["loss/kl"]
    assert not (tmp_path / "whole" / "reference").exists()  # Rebuilt, never written.


def test_no_intact_checkpoint_stops_in_one_line_naming_the_path(tmp_path):
    train_loop.train(_config(steps=1), str(tmp_path))
    metadata = tmp_path / "checkpoints" / "1" / "state" / "_METADATA"
    metadata.write_text("garbage")
    with pytest.raises(checkpoint_lib.CheckpointError) as raised:
        train_loop.train(_config(steps=1), str(tmp_path))
    message = str(raised.value)
    assert message.startswith(f"no intact checkpoint in {tmp_path}/checkpoints: {metadata} has 7 bytes")
    assert "\n" not in message
    assert not (tmp_path / "lock").exists()  # Released on the way out.


def test_a_damaged_checkpoint_from_the_command_line_is_one_short_error(tmp_path):
    # What the issue saw: a 435-line log ending in `ImportError: sys.meta_path is None`.
    train_loop.train(_config(steps=1), str(tmp_path))
    (tmp_path / "checkpoints" / "1" / "data" / "metadata").write_text("{")
    result = subprocess.run(
        [sys.executable, "-m", "experiments.main", "--config=experiments/configs/grpo.py:smoke",
         f"--workdir={tmp_path}", "--config.cold_start.steps=0", "--config.train.steps=1",
         "--config.eval.every=100", "--config.checkpoint.every=1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 1
    # The message alone (issue 26, Found 5): no traceback, no log line.
    assert re.fullmatch(
        rf"no intact checkpoint in {tmp_path}/checkpoints:"
        rf" {tmp_path}/checkpoints/1/data/metadata has 1 bytes, its digest says \d+ \(truncated\)\n",
        result.stderr), result.stderr


def _interrupt_during(monkeypatch, step, signals):
    """Sends `signals` to this process during the RL step that ends at `step`."""
    next_batch = schedule_lib.RolloutSchedule.next_batch

    def next_batch_and_signal(self, state, data, key):
        out = next_batch(self, state, data, key)
        if int(state.step) + 1 == step:
            for signum in signals:
                os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(schedule_lib.RolloutSchedule, "next_batch", next_batch_and_signal)


def test_ctrl_c_saves_the_step_and_returns_and_the_rerun_resumes(tmp_path, monkeypatch, capfd):
    config = _config(steps=4)
    config.checkpoint.every = 1000  # Only the interrupt (and the last step) saves.
    _interrupt_during(monkeypatch, 2, [signal.SIGINT])
    train_loop.train(config, str(tmp_path))
    assert "Ctrl-C (SIGINT): stopping after this step with a checkpoint" in capfd.readouterr().err
    assert _saved(tmp_path) == [2] and _steps(tmp_path) == [0, 1, 2]
    monkeypatch.undo()
    train_loop.train(config, str(tmp_path))
    assert "resuming from checkpoint step 2" in capfd.readouterr().out
    assert _steps(tmp_path) == [0, 1, 2, 3, 4]


def test_a_second_ctrl_c_stops_at_once_and_releases_the_lock(tmp_path, monkeypatch):
    _interrupt_during(monkeypatch, 2, [signal.SIGINT, signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        train_loop.train(_config(steps=4), str(tmp_path))
    assert _saved(tmp_path) == [1]  # Step 2 was not saved.
    assert not (tmp_path / "lock").exists()


def test_a_finished_run_says_so_and_can_be_extended(tmp_path, capfd):
    last = train_loop.train(_config(steps=2), str(tmp_path))
    capfd.readouterr()
    again = train_loop.train(_config(steps=2), str(tmp_path))
    out = capfd.readouterr().out
    assert (f"{tmp_path}: the run is complete at step 2 (cold_start.steps + train.steps = 2);"
            " nothing to do\n") in out
    assert "resuming" not in out and "step 1/2" not in out  # No work at all.
    assert again["loss"] == last["loss"]
    config = _config(steps=3)
    config.eval.every = 1
    train_loop.train(config, str(tmp_path))
    out = capfd.readouterr().out
    assert ("settings changed since the checkpoint: eval.every: 100 -> 1; train.steps: 2 -> 3"
            in out)
    assert _steps(tmp_path) == [0, 1, 2, 3]
    config.optimizer.lr = 0.5  # Not a lengthening: refused as before.
    config.train.steps = 4
    with pytest.raises(ValueError, match=r"differing keys: optimizer.lr: 0.001 -> 0.5$"):
        train_loop.train(config, str(tmp_path))


@pytest.mark.slow  # The first cold-start run compiles the supervised step.
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_the_nonfinite_policy_covers_a_diverging_cold_start(tmp_path, policy):
    config = _config(steps=1)
    config.cold_start.steps = 3
    config.cold_start.lr = 1e30  # Step 1 blows the parameters up; steps 2 on are not finite.
    config.train.nonfinite = policy
    config.train.max_consecutive_skips = 1
    match = (r"cold start step 2: non-finite loss, gradient or update .* train.nonfinite = 'raise'"
             if policy == "raise" else
             r"cold start steps 2 to 3: 2 consecutive steps .* more than train.max_consecutive_skips = 1")
    with pytest.raises(FloatingPointError, match=match):
        train_loop.train(config, str(tmp_path))
    assert _steps(tmp_path) == ([1] if policy == "raise" else [1, 2])
    assert metrics_lib.read_metrics(tmp_path)[-1]["train/skipped_nonfinite"] == (
        0.0 if policy == "raise" else 1.0)
