"""Tests for golfjax/loops/rollout_worker.py: the single-process channel and the producer's thread."""

import threading
import time

import pytest

from golfjax.loops import rollout_worker as worker_lib

# Generous: a bound for a hung thread, never a timing assertion.
DEADLINE_S = 120.0


def _counting_worker(channel, fail_at=None, delay_s=0.0):
    """A producer that puts {index, version, params} items with the latest weights."""
    count = [0]

    def produce_one(stopping):
        del stopping
        if delay_s:
            time.sleep(delay_s)
        params, version = channel.latest()
        index = count[0]
        count[0] += 1
        if index == fail_at:
            raise ValueError(f"rollout {index} failed")
        channel.put({"index": index, "version": version, "params": params})

    return worker_lib.RolloutWorker(produce_one, channel), count


def _wait_for(condition, what):
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_items_carry_their_version_in_order_and_none_is_lost_or_duplicated():
    channel = worker_lib.LocalChannel(capacity=2)
    channel.publish("params-0", 0)
    worker, count = _counting_worker(channel)
    worker.start()
    # Channel full (2) plus one produced item waiting for room.
    _wait_for(lambda: count[0] >= 3 and channel.depth() == 2, "the worker to fill the channel")
    channel.publish("params-5", 5)
    taken = [channel.get(timeout=DEADLINE_S) for _ in range(6)]
    worker.stop(timeout=DEADLINE_S)
    assert [item["index"] for item in taken] == list(range(6))
    # The three produced before the publish carry version 0, later ones 5.
    assert [item["version"] for item in taken[:3]] == [0, 0, 0]
    assert all(item["version"] == 5 and item["params"] == "params-5" for item in taken[3:])
    assert channel.put({"index": -1}) is False  # Closed: refused, not queued.
    assert channel.close() == []


def test_worker_stops_cleanly_and_a_closed_channel_says_so():
    channel = worker_lib.LocalChannel(capacity=1)
    channel.publish(None, 0)
    worker, _ = _counting_worker(channel, delay_s=0.01)
    worker.start()
    channel.get(timeout=DEADLINE_S)
    # The worker is blocked on a full channel or producing; either way it stops.
    worker.stop(timeout=DEADLINE_S)
    assert not worker.is_alive()
    with pytest.raises(worker_lib.RolloutWorkerError, match="not running"):
        channel.get(timeout=DEADLINE_S)


def test_worker_stop_times_out_on_a_hung_producer():
    release = threading.Event()
    channel = worker_lib.LocalChannel()
    worker = worker_lib.RolloutWorker(lambda stopping: release.wait(), channel).start()
    with pytest.raises(TimeoutError, match="did not stop within 0.2 s"):
        worker.stop(timeout=0.2)
    release.set()
    worker.stop(timeout=DEADLINE_S)


def test_producer_exception_reaches_the_learner():
    channel = worker_lib.LocalChannel()
    channel.publish(None, 0)
    worker, _ = _counting_worker(channel, fail_at=1)
    worker.start()
    with pytest.raises(worker_lib.RolloutWorkerError, match="rollout 1 failed") as raised:
        for _ in range(3):
            channel.get(timeout=DEADLINE_S)
    assert isinstance(raised.value.__cause__, ValueError)
    worker.stop(timeout=DEADLINE_S)
    channel.raise_unreported_error()  # Already reported: silent.


def test_get_times_out_and_latest_needs_a_publish():
    channel = worker_lib.LocalChannel()
    with pytest.raises(RuntimeError, match="no parameters have been published"):
        channel.latest()
    with pytest.raises(TimeoutError, match="no rollout arrived within 0.05 s"):
        channel.get(timeout=0.05)
