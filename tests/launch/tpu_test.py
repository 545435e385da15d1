"""launch/tpu.py: accelerator types, and a work unit's gcloud script run against a fake gcloud."""

import os
import subprocess

import pytest

from launch import tpu
from launch.jobs import WorkUnit

ARGV = ("python3", "-m", "experiments.main", "--config=experiments/configs/golf.py:arith",
        "--workdir=/gcs/b/golf/1", "--multihost=on")
LOCATION = ("--zone=us-east5-a", "--project=proj")


@pytest.mark.parametrize("tpu_type, chips, hosts", [
    ("v5litepod-16", 16, 4),  # v5e counts chips; 4 chips per host
    ("v5litepod-8", 8, 1),  # ... except the 8-chip single-host slice
    ("v5p-32", 16, 4),  # v5p counts TensorCores, 2 per chip
    ("v5p-8", 4, 1),
    ("v4-32", 16, 4),
    ("v6e-256", 256, 64),
])
def test_slice_chips_and_hosts(tpu_type, chips, hosts):
    s = tpu.make_tpu_slice(tpu_type)
    assert (s.chips, s.hosts, s.processes) == (chips, hosts, hosts)


def test_runtime_version_defaults_per_generation_and_can_be_set():
    assert tpu.make_tpu_slice("v5litepod-16").runtime_version == "v2-alpha-tpuv5-lite"
    assert tpu.make_tpu_slice("v5p-32").runtime_version == "v2-alpha-tpuv5"
    assert tpu.make_tpu_slice("v5p-32", runtime_version="custom").runtime_version == "custom"


@pytest.mark.parametrize("kwargs, message", [
    (dict(tpu_type=None), "needs --tpu_type"),
    (dict(tpu_type="v5e-16"), "--tpu_type='v5e-16': expected GENERATION-SIZE"),
    (dict(tpu_type="v5p-5"), "--tpu_type='v5p-5': v5p sizes count TensorCores"),
    (dict(tpu_type="v5p-32", topology="4x4"), "--topology='4x4': v5p topologies have 3 dimensions"),
    (dict(tpu_type="v5p-32", topology="2x2x2"),
     "--topology='2x2x2' has 8 chips but --tpu_type=v5p-32 has 16"),
    (dict(tpu_type="v5litepod-16", topology="4by4"), "--topology='4by4': expected"),
    (dict(tpu_type="v5litepod-16", num_slices=0), "--num_slices=0"),
    (dict(tpu_type="v5litepod-8", num_slices=2), "--num_slices=2: Multislice needs multi-host"),
])
def test_bad_flags_are_named(kwargs, message):
    tpu_type = kwargs.pop("tpu_type")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tpu.make_tpu_slice(tpu_type, **kwargs)


def _steps(tpu_type="v5litepod-16", keep=False, **kwargs):
    s = tpu.make_tpu_slice(tpu_type, **kwargs)
    return tpu.tpu_steps("golf-1", s, LOCATION, "/tmp/src.tar.gz", ARGV, keep=keep)


def test_single_slice_commands():
    steps, cleanup = _steps()
    commands = {step.name: step.command for step in steps}
    assert commands["create"] == (
        "gcloud compute tpus queued-resources create golf-1 --zone=us-east5-a --project=proj "
        "--runtime-version=v2-alpha-tpuv5-lite --accelerator-type=v5litepod-16 --node-id=golf-1")
    assert commands["copy the repository"] == (
        "gcloud compute tpus tpu-vm scp /tmp/src.tar.gz golf-1:golfjax.tar.gz "
        "--zone=us-east5-a --project=proj --worker=all")
    assert commands["run on every host"] == (
        "gcloud compute tpus tpu-vm ssh golf-1 --zone=us-east5-a --project=proj --worker=all "
        "'--command=cd golfjax && python3 -m experiments.main "
        "--config=experiments/configs/golf.py:arith --workdir=/gcs/b/golf/1 --multihost=on'")
    assert cleanup.command == (
        "gcloud compute tpus queued-resources delete golf-1 --zone=us-east5-a --project=proj --force --quiet")
    assert _steps(keep=True)[1] is None


def test_custom_topology_and_multislice_commands():
    steps, _ = _steps("v5p-32", topology="2x2x4", num_slices=2)
    create = steps[0].command
    assert "--type=v5p --topology=2x2x4 --node-count=2 --node-prefix=golf-1" in create
    assert "--accelerator-type" not in create
    run = steps[-1].command
    assert "ssh golf-1-0 " in run and "ssh golf-1-1 " in run and run.endswith("wait $pid0\nwait $pid1")
    # v5e's topology is fixed by its type: checked, then the type is what gcloud gets.
    assert "--accelerator-type=v5litepod-16" in _steps("v5litepod-16", topology="4x4")[0][0].command


FAKE_GCLOUD = """#!/bin/bash
echo "$*" >> "$GCLOUD_LOG"
case "$*" in
  *" describe "*)
    n=$(grep -c " describe " "$GCLOUD_LOG")
    if [ "$n" -ge 2 ]; then echo "$FINAL_STATE"; else echo PROVISIONING; fi ;;
  *" ssh golf-1-1 "*"experiments.main"*) exit "$SLICE1_RC" ;;
esac
"""


def _run_script(tmp_path, unit_steps, final_state="ACTIVE", slice1_rc=0):
    steps, cleanup = unit_steps
    script = WorkUnit(1, {}, "/gcs/b/golf/1", ARGV, "golfjax", steps, cleanup).script()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    (bin_dir / "sleep").write_text("#!/bin/sh\n")  # The poll interval, instantly.
    (bin_dir / "sleep").chmod(0o755)
    log = tmp_path / "gcloud.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GCLOUD_LOG": str(log),
           "FINAL_STATE": final_state, "SLICE1_RC": str(slice1_rc)}
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    return result, [line.split()[:4] for line in log.read_text().splitlines()]


def test_script_runs_the_steps_in_order_and_deletes_the_slice(tmp_path):
    result, calls = _run_script(tmp_path, _steps())
    assert result.returncode == 0, result.stderr
    assert [c[2:4] for c in calls] == [
        ["queued-resources", "create"], ["queued-resources", "describe"], ["queued-resources", "describe"],
        ["tpu-vm", "scp"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"], ["queued-resources", "delete"]]


def test_script_stops_on_a_failed_request_and_still_deletes(tmp_path):
    result, calls = _run_script(tmp_path, _steps(), final_state="FAILED")
    assert result.returncode == 1 and "queued resource golf-1: FAILED" in result.stderr
    assert [c[2:4] for c in calls][-1] == ["queued-resources", "delete"]
    assert ["tpu-vm", "ssh"] not in [c[2:4] for c in calls]


def test_multislice_script_fails_when_one_slice_fails(tmp_path):
    result, calls = _run_script(tmp_path, _steps("v5p-32", num_slices=2), slice1_rc=3)
    assert result.returncode == 3
    runs = (tmp_path / "gcloud.log").read_text().count("experiments.main")
    assert runs == 2  # both slices started
    assert [c[2:4] for c in calls][-1] == ["queued-resources", "delete"]
