"""The asynchronous rollout's threads: a worker that samples while the learner trains.

`RolloutWorker` runs a `produce(params, version, stopping)` callable on its own
thread with the latest parameters of a `ParameterStore`, into a bounded queue;
golfjax/loops/schedule.py drives it (`schedule.async_rollout`). Every produced
item is handed over exactly once (by `get`, or returned by `stop`), a worker
exception reaches the learner as `RolloutWorkerError`, and `stop` joins the
thread within a timeout. `split_devices` gives the worker devices of its own
(`schedule.rollout_devices`), and `make_device_lock` serialises the two
threads' device programs where they could deadlock.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Any, Callable, Generic, Sequence, TypeVar

import jax
from jax.sharding import Mesh

from golfjax.config import ScheduleSection

STOP_TIMEOUT_S = 300.0  # Longest wait for the worker to finish what it is sampling.
_POLL_S = 0.05  # How often blocked queue calls look at the stop flag and errors.

T = TypeVar("T")


class RolloutWorkerError(RuntimeError):
    """The rollout worker failed; the worker's exception is the `__cause__`."""


class ParameterStore:
    """The learner's latest published parameters and their version; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._params: Any = None
        self._version: int | None = None

    def publish(self, params: Any, version: int) -> None:
        with self._lock:
            self._params, self._version = params, version

    def latest(self) -> tuple[Any, int]:
        with self._lock:
            if self._version is None:
                raise RuntimeError("no parameters have been published yet")
            return self._params, self._version


class RolloutWorker(Generic[T]):
    """A thread that keeps producing items into a bounded queue.

    `produce(params, version, stopping)` runs on the thread with the store's
    latest parameters and returns an item, or None to produce nothing (e.g.
    when it saw the `stopping` event set). Every produced item is either
    handed over by `get` or returned by `stop`, exactly once.
    """

    def __init__(
        self,
        produce: Callable[[Any, int, threading.Event], T | None],
        store: ParameterStore,
        *,
        queue_size: int,
        name: str = "rollout-worker",
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size={queue_size}; expected >= 1")
        self._produce = produce
        self._store = store
        self._queue: queue.Queue[T] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._reported = False
        self._unsent: list[T] = []
        self.produced = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> RolloutWorker[T]:
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                params, version = self._store.latest()
                item = self._produce(params, version, self._stop)
                if item is None:
                    continue
                self.produced += 1
                while True:
                    if self._stop.is_set():
                        self._unsent.append(item)
                        return
                    try:
                        self._queue.put(item, timeout=_POLL_S)
                        break
                    except queue.Full:
                        pass
        except BaseException as e:  # noqa: BLE001  (re-raised in the learner)
            self._error = e

    def _raise_error(self) -> None:
        if self._error is not None:
            self._reported = True
            raise RolloutWorkerError(f"the rollout worker failed: {self._error!r}") from self._error

    def get(self, timeout: float | None = None) -> T:
        """The next item; re-raises a worker failure as `RolloutWorkerError`.

        Raises:
          RolloutWorkerError: the worker raised, or ended without an error
            while the queue is empty.
          TimeoutError: nothing arrived within `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._raise_error()
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                pass
            if not self._thread.is_alive() and self._queue.empty():
                self._raise_error()
                raise RolloutWorkerError("the rollout worker is not running")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no rollout arrived within {timeout} s")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> list[T]:
        """Stops and joins the thread; returns the items never handed over.

        Raises:
          TimeoutError: the thread was still running after `timeout` seconds.
        """
        self._stop.set()
        deadline = time.monotonic() + timeout
        left: list[T] = []
        while self._thread.is_alive():
            left += self._drain()  # Unblocks a put waiting for room.
            self._thread.join(_POLL_S)
            if self._thread.is_alive() and time.monotonic() > deadline:
                raise TimeoutError(f"the rollout worker did not stop within {timeout} s")
        left += self._drain() + self._unsent
        self._unsent = []
        return left

    def raise_unreported_error(self) -> None:
        """Raises the worker's failure if no `get` has raised it yet."""
        if not self._reported:
            self._raise_error()

    def _drain(self) -> list[T]:
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items


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
