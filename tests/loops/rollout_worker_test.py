"""Tests for golfjax/loops/rollout_worker.py: the asynchronous rollout's thread."""

import threading
import time

import pytest

from golfjax.loops import rollout_worker as worker_lib

# Generous: a bound for a hung thread, never a timing assertion.
DEADLINE_S = 120.0


def _counting_worker(store, queue_size=2, fail_at=None, delay_s=0.0):
    def produce(params, version, stopping):
        del stopping
        if delay_s:
            time.sleep(delay_s)
        index = produce.count
        produce.count += 1
        if index == fail_at:
            raise ValueError(f"rollout {index} failed")
        return {"index": index, "version": version, "params": params}

    produce.count = 0
    return worker_lib.RolloutWorker(produce, store, queue_size=queue_size)


def _wait_for(condition, what):
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_worker_items_carry_their_version_and_none_is_lost_or_duplicated():
    store = worker_lib.ParameterStore()
    store.publish("params-0", 0)
    worker = _counting_worker(store).start()
    # Queue full (2) plus one produced item waiting for room.
    _wait_for(lambda: worker.produced >= 3, "the worker to fill its queue")
    store.publish("params-5", 5)
    taken = [worker.get(timeout=DEADLINE_S) for _ in range(6)]
    left = worker.stop(timeout=DEADLINE_S)
    indices = [item["index"] for item in taken + left]
    assert sorted(indices) == list(range(worker.produced))
    assert [item["index"] for item in taken] == list(range(6))
    # The three produced before the publish carry version 0, later ones 5.
    assert [item["version"] for item in taken[:3]] == [0, 0, 0]
    assert all(item["version"] == 5 and item["params"] == "params-5" for item in taken[3:])


def test_worker_stops_cleanly_within_the_timeout():
    store = worker_lib.ParameterStore()
    store.publish(None, 0)
    worker = _counting_worker(store, queue_size=1, delay_s=0.01).start()
    worker.get(timeout=DEADLINE_S)
    # The worker is blocked on a full queue or producing; either way it stops.
    worker.stop(timeout=DEADLINE_S)
    assert not worker.is_alive()
    with pytest.raises(worker_lib.RolloutWorkerError, match="not running"):
        worker.get(timeout=DEADLINE_S)


def test_worker_stop_times_out_on_a_hung_producer():
    release = threading.Event()
    store = worker_lib.ParameterStore()
    store.publish(None, 0)

    def produce(params, version, stopping):
        release.wait()
        return None

    worker = worker_lib.RolloutWorker(produce, store, queue_size=1).start()
    with pytest.raises(TimeoutError, match="did not stop within 0.2 s"):
        worker.stop(timeout=0.2)
    release.set()
    worker.stop(timeout=DEADLINE_S)


def test_worker_exception_reaches_the_learner():
    store = worker_lib.ParameterStore()
    store.publish(None, 0)
    worker = _counting_worker(store, fail_at=1).start()
    with pytest.raises(worker_lib.RolloutWorkerError, match="rollout 1 failed") as raised:
        for _ in range(3):
            worker.get(timeout=DEADLINE_S)
    assert isinstance(raised.value.__cause__, ValueError)
    worker.stop(timeout=DEADLINE_S)
    worker.raise_unreported_error()  # Already reported: silent.
