"""The asynchronous rollout in one process: a channel, a worker thread, device placement.

`LocalChannel` is the single-process implementation of the channel between
the learner and the rollout producer (golfjax/loops/async_rollout.py):

    learner side:  publish(params, version), get(timeout=None) -> item, depth()
    rollout side:  latest() -> (params, version), put(item) -> bool

It is thread-safe; items are handed over exactly once, in order. `close`
(the learner stopping the producer) wakes a blocked `put` (which then returns
False, the item not handed over), and `fail` (the producer's thread dying)
makes the learner's `get` raise `RolloutWorkerError` with the producer's
exception as its cause. `RolloutWorker` runs a producer's loop on a thread and
reports its failure to the channel. `split_devices` gives the producer devices
of its own (`schedule.rollout_devices`), and `make_device_lock` serialises the
two threads' device programs where they could deadlock.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Any, Callable, Sequence

import jax
from jax.sharding import Mesh

from golfjax.config import ScheduleSection

STOP_TIMEOUT_S = 300.0  # Longest wait for the worker to finish what it is sampling.
_POLL_S = 0.05  # How often blocked calls look at the stop flag and errors.


class RolloutWorkerError(RuntimeError):
    """The rollout producer failed; its exception is the `__cause__`."""


class LocalChannel:
    """Weights learner -> producer and rollouts producer -> learner, in one process.

    Args:
      capacity: finished items the channel holds before `put` blocks (None:
        no bound; the producer's throttle bounds them).
    """

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity={capacity}; expected >= 1 or None")
        self._capacity = capacity
        self._cond = threading.Condition()
        self._items: collections.deque[Any] = collections.deque()
        self._params: Any = None
        self._version: int | None = None
        self._closed = False
        self._error: BaseException | None = None
        self._reported = False

    # ------------------------------------------------------------ learner side

    def publish(self, params: Any, version: int) -> None:
        """Makes `params` (already a copy the learner no longer updates) the newest weights."""
        with self._cond:
            self._params, self._version = params, version
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Any:
        """The next finished item (blocking).

        Raises:
          RolloutWorkerError: the producer failed, or the channel is closed
            and empty.
          TimeoutError: nothing arrived within `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                self._raise_error()
                if self._closed:
                    raise RolloutWorkerError("the rollout worker is not running")
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"no rollout arrived within {timeout} s")
                self._cond.wait(_POLL_S)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def depth(self) -> int:
        """Finished items waiting for the learner."""
        with self._cond:
            return len(self._items)

    def close(self) -> list[Any]:
        """Refuses further items, wakes a blocked `put`; returns the items never handed over."""
        with self._cond:
            self._closed = True
            left, self._items = list(self._items), collections.deque()
            self._cond.notify_all()
            return left

    def raise_unreported_error(self) -> None:
        """Raises the producer's failure if no `get` has raised it yet."""
        with self._cond:
            if not self._reported:
                self._raise_error()

    # ------------------------------------------------------------ rollout side

    def latest(self) -> tuple[Any, int]:
        """The newest published weights and their version."""
        with self._cond:
            if self._version is None:
                raise RuntimeError("no parameters have been published yet")
            return self._params, self._version

    def put(self, item: Any) -> bool:
        """Hands `item` over (blocking while the channel is full); False if the
        channel was closed first (the item is dropped: its data is drawn again)."""
        with self._cond:
            while not self._closed and self._capacity is not None and len(self._items) >= self._capacity:
                self._cond.wait(_POLL_S)
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def fail(self, error: BaseException) -> None:
        """Records the producer's failure for the learner."""
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            self._reported = True
            raise RolloutWorkerError(f"the rollout worker failed: {self._error!r}") from self._error


class RolloutWorker:
    """A thread that calls `produce_one(stopping)` until stopped; a failure goes
    to `channel.fail`, and the thread ends.

    Args:
      produce_one: produces (and puts) one item; returns when done, or early
        when it sees `stopping` set.
      channel: the channel it reports a failure to.
    """

    def __init__(self, produce_one: Callable[[threading.Event], None], channel: LocalChannel,
                 *, name: str = "rollout-worker") -> None:
        self._produce_one = produce_one
        self._channel = channel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> RolloutWorker:
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._produce_one(self._stop)
        except BaseException as e:  # noqa: BLE001  (re-raised in the learner)
            self._channel.fail(e)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stops the thread (closing the channel) and joins it.

        Raises:
          TimeoutError: the thread was still running after `timeout` seconds.
        """
        self._stop.set()
        self._channel.close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the rollout worker did not stop within {timeout} s")


def split_devices(
    cfg: ScheduleSection, devices: Sequence[jax.Device] | None = None
) -> tuple[list[jax.Device], list[jax.Device] | None]:
    """(learner devices, rollout devices or None when they share all of them)."""
    devices = list(jax.devices() if devices is None else devices)
    if not (cfg.async_rollout and cfg.rollout_devices):
        return devices, None
    if cfg.rollout_devices >= len(devices):
        raise ValueError(
            f"schedule.rollout_devices={cfg.rollout_devices} leaves no device to train on"
            f" ({len(devices)} devices)"
        )
    return devices[: -cfg.rollout_devices], devices[-cfg.rollout_devices :]


def make_device_lock(learner_mesh: Mesh, rollout_mesh: Mesh) -> contextlib.AbstractContextManager:
    """A lock serialising the two threads' device programs where they could deadlock.

    Two threads dispatching multi-device programs onto the same devices can
    enqueue them in different orders on different devices and wait in each
    other's collectives; XLA's simulated CPU devices share one thread pool, so
    there even disjoint meshes are serialised. A single device, or disjoint
    accelerator meshes, need no lock.
    """
    learner, rollout = set(learner_mesh.devices.flat), set(rollout_mesh.devices.flat)
    multi_device = len(learner) > 1 or len(rollout) > 1
    cpu = next(iter(learner)).platform == "cpu"
    if multi_device and (learner & rollout or cpu):
        return threading.Lock()
    return contextlib.nullcontext()
