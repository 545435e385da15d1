"""VESPO's training regimes: N optimizer steps per rollout batch, and fully-async rollout.

Letters: N staleness (mini-batches per rollout batch), B prompts per
mini-batch, G samples per prompt, R = B * G rows of a mini-batch (2R with
GOLF), T response slots.

ALGORITHMS.md (section VESPO) is the specification; the loss is any entry of
`golfjax.losses.LOSSES`, so VESPO and its baselines train on equal terms.

Synchronous staleness N. One rollout batch is sampled by the current policy:
N mini-batches of B prompts (each a complete set of groups, with its own
advantages), then trained in order, one optimizer step each, one epoch.
Behaviour log-probs (`old_logp`) are the trainer's rescoring of every
mini-batch under the sampling parameters, all done before the first update,
or, with `train.recompute_old_logp=False`, the sampler's own. Mini-batch j
(1-based) is therefore trained by a policy j - 1 steps ahead of the behaviour
policy. The rollout's keys come from the global step at which it starts, so
the mode is deterministic for a seed and checkpoints taken between rollouts
resume exactly.

Fully asynchronous (`vespo.async_rollout`). A `RolloutWorker` thread keeps
sampling rollout batches with the latest `ParameterStore` snapshot while the
learner trains; the learner publishes a copy of its parameters every K
(`vespo.sync_every`) steps, versioned by its step count. Each rollout carries
the version that sampled it; one whose first mini-batch would be trained more
than `vespo.max_staleness` steps after that version is dropped (counted in
`vespo/dropped_rollouts`, its samples still counted as generated). A worker
exception is re-raised in the learner (`RolloutWorkerError`), and `close()`
stops the thread within a timeout. While the worker runs it owns the data
iterator; each rollout records the iterator's position after its draws, and a
checkpoint first stops the worker and rewinds the iterator to the last consumed
rollout, so the rollouts it held are drawn again after the save or a resume:
none is lost or trained twice. Asynchronous runs are not deterministic.

Devices. The worker and the learner share the mesh, or with
`vespo.rollout_devices = n` the worker samples on the last n devices and the
learner trains on the others. Where their programs could deadlock in each
other's collectives (a shared multi-device mesh, or any multi-device CPU
mesh, whose simulated devices share one thread pool) every device call holds
one lock; elsewhere sampling and training overlap. A multi-process run
(`jax.distributed`) supports the synchronous mode only: the asynchronous worker
is refused at construction (`check_processes`).

Metrics per optimizer step, besides the train step's (loss diagnostics incl.
the baselines' clip fractions, entropy, grad norm): `vespo/staleness` (learner
steps between the behaviour policy and the policy trained),
`vespo/behaviour_version`, `vespo/minibatch` (j), `vespo/dropped_rollouts`,
and statistics of the sequence weight `W = pi(y) / mu(y)` of the mini-batch
under the policy about to be updated, whatever the loss: `vespo/log_w_*` and
`vespo/phi_*` (the VESPO kernel of W) split by advantage sign, `vespo/ess`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import queue
import threading
import time
import zlib
from typing import Any, Callable, Generic, Sequence, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from golfjax import metrics as metrics_lib
from golfjax import sharding
from golfjax.config import RunConfig
from golfjax.config import VespoSection
from golfjax.losses import importance
from golfjax.losses import reduce
from golfjax.losses.config import LossConfig
from golfjax.models import transformer
from golfjax.rewards.base import Problem
from golfjax.sampling import Sampler
from golfjax.train import step as step_lib
from golfjax.train.state import TrainState
from golfjax.train.trainer import Trainer
from golfjax.types import Batch

# (params, problems, key, sampler) -> (host Batch, host metrics incl.
# "samples/generated"): one mini-batch, as the on-policy RL or GOLF step builds it.
BuildBatch = Callable[[Any, list[Problem], jax.Array, Sampler], tuple[Batch, dict[str, float]]]

STOP_TIMEOUT_S = 300.0  # Longest wait for the worker to finish what it is sampling.
_POLL_S = 0.05  # How often blocked queue calls look at the stop flag and errors.
_ASYNC_STREAM = 0x5E5B0  # Folded into the run's key for the worker's rollouts.

T = TypeVar("T")


class RolloutWorkerError(RuntimeError):
    """The rollout worker failed; the worker's exception is the `__cause__`."""


@dataclasses.dataclass
class RolloutBatch:
    """N mini-batches sampled by one policy version (host arrays).

    Attributes:
      minibatches: the N train batches, in training order.
      infos: each mini-batch's host metrics (rewards, "samples/generated").
      version: the learner step count of the parameters that sampled them.
      data_state: the data iterator's position after this rollout's draws
        (asynchronous mode; None otherwise).
    """

    minibatches: list[Batch]
    infos: list[dict[str, float]]
    version: int
    data_state: Any = None

    @property
    def samples(self) -> int:
        return int(sum(info["samples/generated"] for info in self.infos))


def collect_rollout(
    build_batch: BuildBatch,
    sampler: Sampler,
    params: Any,
    problem_lists: Sequence[list[Problem]],
    key: jax.Array,
    version: int,
    *,
    device_lock: contextlib.AbstractContextManager = contextlib.nullcontext(),
    stop: threading.Event | None = None,
) -> RolloutBatch | None:
    """Samples one mini-batch per problem list, all with `params`.

    Mini-batch j uses `fold_in(key, j)`. Returns None if `stop` is set before
    the last mini-batch is done.
    """
    minibatches, infos = [], []
    for j, problems in enumerate(problem_lists):
        if stop is not None and stop.is_set():
            return None
        with device_lock:
            batch, info = build_batch(params, list(problems), jax.random.fold_in(key, j), sampler)
        minibatches.append(batch)
        infos.append(info)
    return RolloutBatch(minibatches, infos, version)


@functools.partial(jax.jit, static_argnames=("cfg",))
def weight_stats(logp_NxT: jax.Array, batch: Batch, cfg: LossConfig) -> dict[str, jax.Array]:
    """Statistics of the sequence weights `W_i = pi(y_i) / mu(y_i)` of on-policy rows.

    `log W_i = clip(sum_t m_t clip(logp_t - old_logp_t))` exactly as VESPO
    computes it (without TIS), and `phi` is VESPO's kernel of `W` with the
    configured shape, whatever loss trains the batch; so `log_w_abs_max` is
    exactly 0 when `logp` and `old_logp` agree bit for bit.
    """
    mask_NxT = batch.response_mask_NxT & ~batch.off_policy_mask_NxT
    s_N = importance.sequence_log_weight(logp_NxT, batch.old_logp_NxT, mask_NxT, cfg.log_ratio_clip)
    positive_N = batch.advantage_N >= 0
    k_N = jnp.where(positive_N, cfg.vespo_k_pos, cfg.vespo_k_neg)
    lam_N = jnp.where(positive_N, cfg.vespo_lam_pos, cfg.vespo_lam_neg)
    phi_N = jnp.exp(importance.vespo_log_kernel(s_N, k_N, lam_N))
    phi_N = jnp.where(jnp.isfinite(phi_N), phi_N, 0.0)
    rows_N = mask_NxT.any(axis=-1)
    pos_N, neg_N = rows_N & positive_N, rows_N & ~positive_N
    return {
        "vespo/log_w_mean": reduce.masked_mean(s_N, rows_N),
        "vespo/log_w_pos_mean": reduce.masked_mean(s_N, pos_N),
        "vespo/log_w_neg_mean": reduce.masked_mean(s_N, neg_N),
        "vespo/log_w_abs_max": jnp.max(jnp.where(rows_N, jnp.abs(s_N), 0.0)),
        "vespo/phi_pos_mean": reduce.masked_mean(phi_N, pos_N),
        "vespo/phi_neg_mean": reduce.masked_mean(phi_N, neg_N),
        "vespo/ess": importance.effective_sample_size(s_N, rows_N),
    }


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
        name: str = "vespo-rollout",
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
    cfg: VespoSection, devices: Sequence[jax.Device] | None = None
) -> tuple[list[jax.Device], list[jax.Device] | None]:
    """(learner devices, rollout devices or None when they share all of them)."""
    check_processes(cfg)
    devices = list(jax.devices() if devices is None else devices)
    if not (cfg.enabled and cfg.async_rollout and cfg.rollout_devices):
        return devices, None
    if cfg.rollout_devices >= len(devices):
        raise ValueError(
            f"vespo.rollout_devices={cfg.rollout_devices} leaves no device to train on"
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


def check_processes(cfg: VespoSection) -> None:
    """Refuses the asynchronous worker in a multi-process run.

    Every process must launch the same device programs in the same order
    (their collectives span processes), and train the same rollouts; a worker
    thread per process samples and is dropped on timing, which differs between
    processes. Synchronous staleness N is deterministic and works.
    """
    if cfg.enabled and cfg.async_rollout and sharding.is_multiprocess():
        raise ValueError(
            f"vespo.async_rollout=True does not support multi-process runs ({jax.process_count()}"
            " processes): each process's rollout worker would sample and drop rollouts on its own"
            " timing; use vespo.async_rollout=False (synchronous staleness vespo.staleness)"
        )


def check_run_config(cfg: RunConfig) -> None:
    """Cross-section constraints of the VESPO loop; errors name the keys."""
    v = cfg.vespo
    check_processes(v)
    if cfg.train.steps % v.staleness:
        raise ValueError(
            f"train.steps={cfg.train.steps} is not a multiple of vespo.staleness={v.staleness};"
            " every rollout batch is trained to the end"
        )
    if v.rollout_devices and cfg.train.recompute_old_logp:
        raise ValueError(
            f"vespo.rollout_devices={v.rollout_devices} needs train.recompute_old_logp=False:"
            " the behaviour log-probs of a rollout on its own devices are the sampler's"
        )


def _data_key(base: jax.Array, data_state: Any) -> jax.Array:
    """A key that depends only on the data position (stable across processes)."""
    digest = zlib.crc32(json.dumps(data_state, sort_keys=True, default=str).encode())
    return jax.random.fold_in(base, digest & 0x7FFFFFFF)


class VespoLoop:
    """Trains one optimizer step per call, sampling a rollout batch when needed.

    The runner calls `step` once per optimizer step, checkpoints only where
    `save_point` says so, and uses the loop as a context manager so that the
    worker stops with the run (`close`).

    Args:
      cfg: the run's config (`vespo`, `train`, `loss` sections are read).
      trainer: the learner's jitted step and log-prob programs.
      build_batch: builds one host mini-batch from problems (see `BuildBatch`).
      problems: the train split; the data iterator yields positions in it.
      sampler: samples rollouts on the learner's mesh (None only with a
        `build_batch` that does not sample, as in tests).
      rng: the run's key; asynchronous rollouts derive theirs from it.
      rollout_devices: the worker's own devices (`split_devices`), or None.
    """

    def __init__(
        self,
        cfg: RunConfig,
        *,
        trainer: Trainer,
        build_batch: BuildBatch,
        problems: Sequence[Problem],
        sampler: Sampler | None,
        rng: jax.Array,
        rollout_devices: Sequence[jax.Device] | None = None,
    ) -> None:
        check_run_config(cfg)
        self.cfg = cfg.vespo
        self.trainer = trainer
        self.build_batch = build_batch
        self.problems = problems
        self.recompute_old_logp = cfg.train.recompute_old_logp
        self.loss_cfg = cfg.loss
        self._async_key = jax.random.fold_in(rng, _ASYNC_STREAM)
        self.sampler = sampler
        self._rollout_shardings = None
        rollout_mesh = trainer.mesh
        if rollout_devices is not None:
            rollout_mesh = sharding.make_mesh(1, -1, cfg.mesh.tensor, devices=rollout_devices)
            shards = rollout_mesh.shape["data"] * rollout_mesh.shape["fsdp"]
            self.sampler = Sampler(
                sampler.model_config,
                sampler.cfg.replace(batch_buckets=tuple(shards * 2**i for i in range(12))),
                rollout_mesh,
            )
            self._rollout_shardings = transformer.param_shardings(trainer.model_config, rollout_mesh)
        self.device_lock: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self.cfg.async_rollout:
            self.device_lock = make_device_lock(trainer.mesh, rollout_mesh)
        self._pending: collections.deque[tuple[Batch, dict[str, float]]] = collections.deque()
        self._rollout: RolloutBatch | None = None
        self._rollout_start = 0
        self._minibatch = 0
        # Asynchronous mode.
        self._store = ParameterStore()
        self._worker: RolloutWorker[RolloutBatch] | None = None
        self._data: Any = None
        self._consumed_data_state: Any = None
        self._published = 0

    # ------------------------------------------------------------ the runner's API

    @property
    def at_boundary(self) -> bool:
        """True between rollout batches: nothing is half-trained."""
        return not self._pending

    def step(self, state: TrainState, data: Any, key: jax.Array) -> tuple[TrainState, dict[str, float]]:
        """One optimizer step on the next mini-batch (sampling a rollout first if none is left).

        Args:
          state: the learner's state (donated).
          data: the run's data iterator (`next()` -> positions in `problems`).
          key: the step's key; a synchronous rollout uses the key of its first step.

        Returns:
          The next state and host metrics, incl. "samples/generated" (this
          mini-batch's samples, plus those of rollouts dropped before it).
        """
        extra: dict[str, float] = {}
        if not self._pending:
            rollout, extra = self._next_rollout(state, data, key)
            self._rollout, self._rollout_start, self._minibatch = rollout, int(state.step), 0
            self._pending.extend(zip(self._prepare(state, rollout), rollout.infos))
        batch, info = self._pending.popleft()
        self._minibatch += 1
        version = self._rollout.version
        staleness = int(state.step) - version
        with self.device_lock:
            logp_NxT = self.trainer.logprobs(state.params, batch)
            stats = weight_stats(logp_NxT, batch, self.loss_cfg)
            state, metrics = self.trainer.step(state, batch)
            metrics = metrics_lib.to_scalars({**metrics, **stats})
        step_lib.check_finite(metrics, self.trainer.step_cfg, int(state.step))
        if self._worker is not None and int(state.step) - self._published >= self.cfg.sync_every:
            self._publish(state)
        metrics |= info
        metrics["samples/generated"] = info["samples/generated"] + extra.get("samples/generated", 0.0)
        metrics |= {
            "vespo/staleness": float(staleness),
            "vespo/behaviour_version": float(version),
            "vespo/minibatch": float(self._minibatch),
            "vespo/dropped_rollouts": extra.get("vespo/dropped_rollouts", 0.0),
        }
        return state, metrics

    def save_point(self, step: int, *, force: bool, every: int) -> bool:
        """Whether to checkpoint after `step`; readies the data iterator if so.

        Only at a rollout boundary, when `force` or when a multiple of `every`
        was passed during the rollout. In asynchronous mode the worker is then
        stopped and the data iterator rewound to just after the last consumed
        rollout, so the saved position is exactly what was trained (the worker
        restarts at the next `step`).
        """
        if not self.at_boundary:
            return False
        if not (force or step // every > self._rollout_start // every):
            return False
        self._stop_worker()
        return True

    def close(self) -> None:
        """Stops the worker (if any) and re-raises a failure it has not reported."""
        self._stop_worker()

    def __enter__(self) -> VespoLoop:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # Already failing: stop, but let that error through.
            self._stop_worker(report=False)

    # ------------------------------------------------------------ rollouts

    def _draw(self, data: Any) -> list[list[Problem]]:
        return [[self.problems[i] for i in data.next()] for _ in range(self.cfg.staleness)]

    def _next_rollout(self, state: TrainState, data: Any, key: jax.Array) -> tuple[RolloutBatch, dict[str, float]]:
        if not self.cfg.async_rollout:
            rollout = collect_rollout(
                self.build_batch, self.sampler, state.params, self._draw(data), key, int(state.step)
            )
            return rollout, {}
        if self._worker is None:
            self._start_worker(state, data)
        step = int(state.step)
        dropped, dropped_samples = 0, 0
        while True:
            rollout = self._worker.get()
            self._consumed_data_state = rollout.data_state
            if step - rollout.version <= self.cfg.max_staleness:
                return rollout, {
                    "vespo/dropped_rollouts": float(dropped),
                    "samples/generated": float(dropped_samples),
                }
            dropped += 1
            dropped_samples += rollout.samples

    def _prepare(self, state: TrainState, rollout: RolloutBatch) -> list[Batch]:
        """Device batches; in sync mode `old_logp` is rescored before any update."""
        with self.device_lock:
            batches = [self.trainer.put_batch(b) for b in rollout.minibatches]
            if self.recompute_old_logp and not self.cfg.async_rollout:
                batches = [self.trainer.with_old_logprobs(state, b) for b in batches]
            return batches

    def _produce(self, params: Any, version: int, stopping: threading.Event) -> RolloutBatch | None:
        """Runs on the worker thread: one rollout batch with a parameter snapshot."""
        problem_lists = self._draw(self._data)
        data_state = self._data.state()
        rollout = collect_rollout(
            self.build_batch, self.sampler, params, problem_lists,
            _data_key(self._async_key, data_state), version,
            device_lock=self.device_lock, stop=stopping,
        )
        if rollout is None:
            return None
        if self.recompute_old_logp:  # Under the sampling parameters: the behaviour policy.
            with self.device_lock:
                rollout.minibatches = [
                    b.replace(old_logp_NxT=np.asarray(self.trainer.logprobs(params, self.trainer.put_batch(b))))
                    for b in rollout.minibatches
                ]
        rollout.data_state = data_state
        return rollout

    def _snapshot(self, params: Any) -> Any:
        """A copy of `params` that survives the donation of the learner's state."""
        with self.device_lock:
            if self._rollout_shardings is not None:
                copy = jax.device_put(params, self._rollout_shardings)
            else:
                copy = jax.tree.map(lambda x: x.copy(), params)
            return jax.block_until_ready(copy)

    def _publish(self, state: TrainState) -> None:
        self._published = int(state.step)
        self._store.publish(self._snapshot(state.params), self._published)

    def _start_worker(self, state: TrainState, data: Any) -> None:
        self._data = data
        self._consumed_data_state = data.state()
        self._publish(state)
        self._worker = RolloutWorker(self._produce, self._store, queue_size=self.cfg.queue_size)
        self._worker.start()

    def _stop_worker(self, report: bool = True) -> None:
        """Stops the worker and rewinds the data; raises a failure it has not reported."""
        if self._worker is None:
            return
        worker, self._worker = self._worker, None
        worker.stop()  # What it still held is drawn again from the rewound position.
        self._data.restore(self._consumed_data_state)
        if report:
            worker.raise_unreported_error()
