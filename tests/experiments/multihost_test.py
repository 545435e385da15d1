"""experiments/multihost.py: when to call jax.distributed.initialize, and a real two-process run."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments import multihost
from tests import two_processes

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _kwargs(mode, environ=None, **flags):
    return multihost.initialize_kwargs(mode, environ=environ or {}, **flags)


def test_auto_stays_single_process_without_signs_of_a_cluster():
    assert _kwargs("auto") is None
    assert _kwargs("auto", {"TPU_WORKER_HOSTNAMES": "localhost"}) is None  # One TPU host.
    assert _kwargs("off", {"JAX_COORDINATOR_ADDRESS": "h:1"}) is None


@pytest.mark.parametrize("environ", [
    {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"},
    {"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1,t1k-w-2,t1k-w-3"},
    {"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"},
])
def test_auto_initializes_on_a_cluster_and_lets_jax_detect_the_rest(environ):
    assert _kwargs("auto", environ) == {}


def test_flags_are_passed_on():
    assert _kwargs("on") == {}
    assert _kwargs("auto", coordinator_address="h:1", num_processes=2, process_id=1) == {
        "coordinator_address": "h:1", "num_processes": 2, "process_id": 1}


@pytest.mark.parametrize("mode, flags, message", [
    ("sometimes", {}, "--multihost='sometimes'"),
    ("off", {"coordinator_address": "h:1"}, "--coordinator_address needs --multihost=auto or on"),
    ("on", {"process_id": 0}, "--process_id needs --num_processes"),
    ("on", {"num_processes": 2, "process_id": 2}, "--process_id=2: expected 0 <= id < --num_processes=2"),
    ("on", {"num_processes": 0}, "--num_processes=0"),
])
def test_bad_flags_are_named(mode, flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _kwargs(mode, **flags)


def test_main_reports_a_bad_multihost_flag(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.main", "--config=experiments/configs/grpo.py:smoke",
         f"--workdir={tmp_path}", "--multihost=off", "--process_id=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0 and "--process_id needs --multihost=auto or on" in result.stderr


def test_async_rollout_over_several_processes_needs_a_rollout_group():
    import dataclasses

    from golfjax import config as config_lib

    schedule = config_lib.ScheduleSection(async_rollout=True, partial_rollout=False)
    cfg = config_lib.RunConfig(schedule=schedule)
    config_lib.validate(cfg, 8)  # One process: a thread rolls out.
    with pytest.raises(ValueError, match=r"schedule.async_rollout=True in a multi-process job .* needs"
                                         r" config.schedule.rollout_processes >= 1"):
        config_lib.validate(cfg, 8, process_count=2)
    config_lib.validate(config_lib.RunConfig(), 8, process_count=2)  # Synchronous: fine.
    groups = dataclasses.replace(cfg, schedule=dataclasses.replace(schedule, rollout_processes=1))
    config_lib.validate(groups, 8, process_count=2)  # The learner's mesh: its 4 of the 8 devices.
    with pytest.raises(ValueError, match=r"^config.schedule.rollout_processes=2 leaves no process to train on"):
        config_lib.validate(dataclasses.replace(groups, schedule=dataclasses.replace(
            schedule, rollout_processes=2)), 8, process_count=2)
    kl = dataclasses.replace(groups, train=dataclasses.replace(groups.train, kl_coef=0.1))
    with pytest.raises(ValueError, match=r"^config.schedule.rollout_processes=1 needs config.train.kl_coef=0"):
        config_lib.validate(kl, 8, process_count=2)
    with pytest.raises(ValueError, match=r"rollout_processes=1; expected >= 0, and 0 unless async_rollout"):
        config_lib.ScheduleSection(rollout_processes=1)


def test_two_processes_share_one_mesh_checkpoint_and_metrics(tmp_path):
    # Two CPU processes of two devices each: one 4-device mesh, one Orbax
    # checkpoint written together, one metrics file written by process 0.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env |= {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    port = two_processes.free_port()
    processes = [
        subprocess.Popen([sys.executable, "-m", "tests.experiments.multihost_worker", str(port), str(i),
                          str(tmp_path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    for p, (stdout, stderr) in zip(processes, outputs):
        assert p.returncode == 0, stderr[-3000:]
    assert [stdout.split()[-3:] for stdout, _ in outputs] == [["ok", "0", "True"], ["ok", "1", "False"]]
    assert (tmp_path / "checkpoints" / "1" / "state").is_dir()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == [{"step": 1, "loss": 276.0}]


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _params(state_dir):
    """A checkpoint's parameters, restored onto this process's first device."""
    import jax
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    # Saved over two processes' devices: restore onto a target of this process.
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                          checkpointer.metadata(state_dir).item_metadata)
    params = checkpointer.restore(state_dir, target)["params"]
    return {name: np.asarray(leaf) for name, leaf in _flatten(params)}


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}/{key}")
    else:
        yield prefix, tree


@pytest.mark.slow
def test_two_process_golf_smoke_run_trains_evaluates_checkpoints_and_resumes(tmp_path):
    # The whole train loop on one 4-device mesh over two processes: cold start,
    # GOLF rollouts (sampling, gathering, rewards, refinements, injection),
    # updates, evaluation, checkpoints and metrics.
    # 6 held-out problems in chunks of 4: the last chunk fills its batch bucket
    # with dummy rows, which the sampler drops from the global rollout.
    args = ["--config=experiments/configs/golf.py:smoke", "--config.eval.num_problems=6"]
    workdir = tmp_path / "run"
    outputs = two_processes.run_experiment(args, workdir, tmp_path / "logs_first")
    records = _records(workdir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # 2 cold-start + 2 GOLF steps.
    for r in records[2:]:
        assert 0.0 <= r["reward/mean"] <= 1.0 and "golf/injection_rate" in r
    for step in (2, 4):  # Where RL starts, and the end.
        assert 0.0 <= records[step - 1]["eval/accuracy"] <= 1.0
    checkpoints = workdir / "checkpoints"
    assert (checkpoints / "4" / "state").is_dir()
    # Process 0 alone prints the progress line.
    assert "step 4/4" in outputs[0] and "step 4/4" not in outputs[1]

    # Exact resume: drop the last checkpoint and rerun the same command; both
    # processes restore step 3 and redo step 4 (a GOLF step and the final
    # evaluation) bit for bit.
    shutil.move(checkpoints / "4", tmp_path / "first_4")
    two_processes.run_experiment(args, workdir, tmp_path / "logs_resumed")

    def deterministic(record):
        return {k: v for k, v in record.items() if not k.startswith("perf/")}

    assert [deterministic(r) for r in _records(workdir)] == [deterministic(r) for r in records]
    first, resumed = _params(tmp_path / "first_4" / "state"), _params(checkpoints / "4" / "state")
    assert first.keys() == resumed.keys()
    for name in first:
        np.testing.assert_array_equal(resumed[name], first[name], err_msg=name)
