"""golfjax/parallel: the process groups' split, and the channel in a real two-process job."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from golfjax import process_groups as groups_lib
from tests import two_processes
from tests.parallel import channel_worker as worker

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_last_processes_roll_out_and_both_groups_must_exist():
    groups = groups_lib.ProcessGroups.split(4, rollout_processes=1)
    assert (groups.learner, groups.rollout) == ((0, 1, 2), (3,))
    assert [groups.role(p) for p in range(4)] == ["learner"] * 3 + ["rollout"]
    for bad in (0, 4):
        with pytest.raises(ValueError, match=rf"schedule.rollout_processes={bad}: expected 1 to 3"):
            groups_lib.ProcessGroups.split(4, rollout_processes=bad)


def test_one_process_is_its_own_group():
    assert groups_lib.members() == (0,) and groups_lib.process_index() == 0
    assert not groups_lib.is_multiprocess() and groups_lib.is_primary()
    assert groups_lib.allgather([1, 2]).tolist() == [[1, 2]]
    groups_lib.barrier("alone")  # Returns at once.


@pytest.mark.slow
def test_weights_and_rollouts_cross_between_two_process_groups(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env |= {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    port = two_processes.free_port()
    processes = [subprocess.Popen(
        [sys.executable, "-m", "tests.parallel.channel_worker", str(port), str(i), str(tmp_path / f"{i}.json")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=240) for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, (_, stderr) in zip(processes, outputs):
        assert p.returncode == 0, stderr[-3000:]
    learner, rollout = (json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2))
    assert (learner["role"], rollout["role"]) == ("learner", "rollout")

    # Every rollout was made with weights that arrived whole: the checksum of
    # version v's weights is 24 v (w) + 3 v + 3 (b).
    steps = learner["events"]
    assert len(steps) == worker.STEPS
    for event in steps:
        assert event["checksum"] == 27 * event["version"] + 3
    # Weights were published every SYNC_EVERY learner steps, and the rollout
    # group used each of them.
    published = set(range(0, worker.STEPS, worker.SYNC_EVERY))
    seen = {event["version"] for event in rollout["events"]}
    assert all(event["note"] == event["version"] for event in rollout["events"])  # Sent with them.
    assert seen <= published and len(seen) >= 3
    assert {event["version"] for event in steps} <= published
    # The groups overlapped: rollouts were generated while the learner trained.
    train = [event["train"] for event in steps]
    produce = [event["produce"] for event in rollout["events"]]
    overlap = sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in train for b0, b1 in produce)
    assert overlap > 0.5 * worker.STEP_S
