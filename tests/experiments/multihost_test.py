"""experiments/multihost.py: when to call jax.distributed.initialize, and a real two-process run."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from experiments import multihost

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_share_one_mesh_checkpoint_and_metrics(tmp_path):
    # Two CPU processes of two devices each: one 4-device mesh, one Orbax
    # checkpoint written together, one metrics file written by process 0.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env |= {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    port = _free_port()
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
