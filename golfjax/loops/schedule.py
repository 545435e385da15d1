"""The rollout schedule: when a batch source samples, and how its batches become optimizer steps.

Letters (golfjax/types.py): B prompts of a mini-batch, G samples per prompt,
N rows, T response tokens; `minibatches` (k) and staleness are written out.

The schedule is separate from the loss: any `train.loss` trains under any
schedule (docs/algorithms.md, section VESPO, for the staleness experiments),
and any batch source (golfjax/loops/rl.py's groups, golfjax/loops/golf.py's
GOLF batches) feeds it through `sample(params, problems, key) -> (batch or
parts, metrics)`.

Synchronous (`schedule.minibatches = k`). One rollout is sampled by the
current policy: k mini-batches of B prompts (each a complete set of groups
with its own advantages), then trained in order, one optimizer step each, one
epoch. Behaviour log-probs (`old_logp`) are the trainer's rescoring of every
mini-batch under the sampling parameters, all done once per rollout before
its first update (so PPO's clip is active from the second mini-batch on), or,
with `train.recompute_old_logp=False`, the sampler's own. Mini-batch j
(1-based) is therefore trained by a policy j - 1 steps ahead of the
behaviour policy: VESPO's staleness setting is k. On-policy training is k = 1.
Mini-batch j samples with `fold_in(key, j)`, `key` being the key of the
rollout's first step, so the schedule is deterministic for a seed, and
checkpoints (taken only between rollouts) resume exactly.

Asynchronous (`schedule.async_rollout`). A rollout worker thread
(golfjax/loops/rollout_worker.py) keeps sampling rollouts with the latest
published snapshot of the parameters while the learner trains; the learner
publishes a copy every `sync_every` steps, versioned by its step count. A
rollout whose first mini-batch would be trained more than `max_staleness`
steps after its version is dropped (counted in `schedule/dropped_rollouts`,
its samples still counted as generated). While the worker runs it owns the
data iterator; each rollout records the iterator's position after its draws,
and a checkpoint first stops the worker and rewinds the iterator to the last
consumed rollout, so the rollouts it held are drawn again after the save or a
resume: none is lost or trained twice. Asynchronous runs are not
deterministic. With `schedule.rollout_devices` the worker samples on devices
of its own; where the two threads' programs could deadlock every device call
holds `device_lock`, which evaluation takes too.

KL to a reference (`train.kl_coef > 0`). Once the train loop hands the
schedule the frozen reference parameters (`use_reference`), every rollout's
mini-batches get their `ref_logp` from the trainer's log-prob program, right
after (and exactly as) `old_logp`: once per rollout, with the same shardings.
With `train.kl_in = "reward"` each row's reward then loses `kl_coef` times its
summed KL estimate (between `old_logp`, the sampling policy, and `ref_logp`)
and the advantages are recomputed by the source (`advantages`), as verl's
`use_kl_in_reward` does for outcome rewards (docs/algorithms.md#kl-penalty);
`reward/kl_penalty` is the mean penalty.

Metrics per optimizer step, besides the train step's and the source's:
`schedule/minibatches` (k), `schedule/minibatch` (j), `schedule/staleness`
(learner steps between the behaviour policy and the policy trained),
`schedule/behaviour_version`, `schedule/dropped_rollouts`; off-policy (k > 1
or asynchronous) statistics of the sequence weight `W = pi(y) / mu(y)` under
the policy about to be updated, `schedule/log_w_*` and `schedule/ess`; and,
for the VESPO loss only, its kernel of W, `vespo/phi_*`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import threading
import zlib
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from golfjax import metrics as metrics_lib
from golfjax import sharding
from golfjax.config import ScheduleSection
from golfjax.loops import rollout_worker as worker_lib
from golfjax.losses import importance
from golfjax.losses import kl as kl_lib
from golfjax.losses import reduce
from golfjax.losses.config import LossConfig
from golfjax.models import transformer
from golfjax.rewards.base import Problem
from golfjax.train.state import TrainState
from golfjax.train.trainer import Trainer
from golfjax.types import Batch

_ASYNC_STREAM = 0x5E5B0  # Folded into the run's key for the worker's rollouts.

TrainBatch = Batch | tuple[Batch, ...]


class BatchSource(Protocol):
    """What the schedule samples from (golfjax/loops/rl.py, golfjax/loops/golf.py)."""

    def sample(self, params: Any, problems: Sequence[Problem], key: jax.Array) -> tuple[TrainBatch, dict[str, float]]:
        """One host mini-batch of `problems` sampled by `params`, and its metrics
        (incl. "samples/generated")."""

    def advantages(self, reward_N: np.ndarray, group_id_N: np.ndarray, injected_N: np.ndarray) -> np.ndarray:
        """The advantages the source gives rows of these rewards (all parts of
        a mini-batch at once); only `train.kl_in = "reward"` calls it."""


@dataclasses.dataclass
class RolloutBatches:
    """k mini-batches sampled by one policy version (host arrays).

    Attributes:
      minibatches: the k train batches (or tuples of parts), in training order.
      infos: each mini-batch's host metrics (rewards, "samples/generated").
      version: the learner step count of the parameters that sampled them.
      data_state: the data iterator's position after this rollout's draws
        (asynchronous mode; None otherwise).
    """

    minibatches: list[TrainBatch]
    infos: list[dict[str, float]]
    version: int
    data_state: Any = None

    @property
    def samples(self) -> int:
        return int(sum(info["samples/generated"] for info in self.infos))


def collect_rollout(
    source: BatchSource,
    params: Any,
    problem_lists: Sequence[list[Problem]],
    key: jax.Array,
    version: int,
    *,
    device_lock: contextlib.AbstractContextManager = contextlib.nullcontext(),
    stop: threading.Event | None = None,
) -> RolloutBatches | None:
    """Samples one mini-batch per problem list, all with `params`.

    Mini-batch j uses `fold_in(key, j)`. Returns None if `stop` is set before
    the last mini-batch is done.
    """
    minibatches, infos = [], []
    for j, problems in enumerate(problem_lists):
        if stop is not None and stop.is_set():
            return None
        with device_lock:
            batch, info = source.sample(params, list(problems), jax.random.fold_in(key, j))
        minibatches.append(batch)
        infos.append(info)
    return RolloutBatches(minibatches, infos, version)


@functools.partial(jax.jit, static_argnames=("estimator",))
def sequence_kl(old_logp_NxT: jax.Array, ref_logp_NxT: jax.Array, mask_NxT: jax.Array,
                estimator: str) -> jax.Array:
    """Each row's KL estimate summed over its response tokens (`kl_lib.kl_penalty`)."""
    kl_NxT = kl_lib.kl_penalty(old_logp_NxT, ref_logp_NxT, estimator)
    return jnp.where(mask_NxT, kl_NxT, 0.0).sum(axis=-1)


@functools.partial(jax.jit, static_argnames=("cfg", "with_phi"))
def weight_stats(
    logp_NxT: jax.Array,
    old_logp_NxT: jax.Array,
    mask_NxT: jax.Array,
    advantage_N: jax.Array,
    cfg: LossConfig,
    with_phi: bool,
) -> dict[str, jax.Array]:
    """Statistics of the sequence weights `W_i = pi(y_i) / mu(y_i)` of on-policy rows.

    `log W_i = clip(sum_t m_t clip(logp_t - old_logp_t))` exactly as VESPO
    computes it (without TIS), so `log_w_abs_max` is exactly 0 when `logp` and
    `old_logp` agree bit for bit; with `with_phi`, VESPO's kernel `phi(W)` of
    the configured shape, split by advantage sign.
    """
    s_N = importance.sequence_log_weight(logp_NxT, old_logp_NxT, mask_NxT, cfg.log_ratio_clip)
    positive_N = advantage_N >= 0
    rows_N = mask_NxT.any(axis=-1)
    pos_N, neg_N = rows_N & positive_N, rows_N & ~positive_N
    stats = {
        "schedule/log_w_mean": reduce.masked_mean(s_N, rows_N),
        "schedule/log_w_pos_mean": reduce.masked_mean(s_N, pos_N),
        "schedule/log_w_neg_mean": reduce.masked_mean(s_N, neg_N),
        "schedule/log_w_abs_max": jnp.max(jnp.where(rows_N, jnp.abs(s_N), 0.0)),
        "schedule/ess": importance.effective_sample_size(s_N, rows_N),
    }
    if with_phi:
        k_N = jnp.where(positive_N, cfg.vespo_k_pos, cfg.vespo_k_neg)
        lam_N = jnp.where(positive_N, cfg.vespo_lam_pos, cfg.vespo_lam_neg)
        phi_N = jnp.exp(importance.vespo_log_kernel(s_N, k_N, lam_N))
        phi_N = jnp.where(jnp.isfinite(phi_N), phi_N, 0.0)
        stats["vespo/phi_pos_mean"] = reduce.masked_mean(phi_N, pos_N)
        stats["vespo/phi_neg_mean"] = reduce.masked_mean(phi_N, neg_N)
    return stats


def _data_key(base: jax.Array, data_state: Any) -> jax.Array:
    """A key that depends only on the data position (stable across processes)."""
    digest = zlib.crc32(json.dumps(data_state, sort_keys=True, default=str).encode())
    return jax.random.fold_in(base, digest & 0x7FFFFFFF)


def _parts(batch: TrainBatch) -> tuple[Batch, ...]:
    return batch if isinstance(batch, tuple) else (batch,)


class RolloutSchedule:
    """Trains one optimizer step per `step` call, sampling a rollout when none is left.

    The train loop calls `step` once per optimizer step, checkpoints only where
    `save_point` says so, and uses the schedule as a context manager so that
    an asynchronous worker stops with the run.

    Args:
      cfg: the `schedule` section.
      trainer: the learner's jitted step and log-prob programs.
      source: the batch source on the learner's devices.
      problems: the train split; the data iterator yields positions in it.
      key: the run's key; asynchronous rollouts derive theirs from it.
      recompute_old_logp: `train.recompute_old_logp`.
      worker_source: the asynchronous worker's source (sampling on
        `worker_mesh`), when it has devices of its own.
      worker_mesh: those devices' mesh; None shares the learner's.
    """

    def __init__(
        self,
        cfg: ScheduleSection,
        *,
        trainer: Trainer,
        source: BatchSource,
        problems: Sequence[Problem],
        key: jax.Array,
        recompute_old_logp: bool,
        worker_source: BatchSource | None = None,
        worker_mesh: Mesh | None = None,
    ) -> None:
        self.cfg = cfg
        self.trainer = trainer
        self.source = source
        self.problems = problems
        self.recompute_old_logp = recompute_old_logp
        self.off_policy = cfg.minibatches > 1 or cfg.async_rollout
        self.with_phi = trainer.cfg.loss == "vespo"
        self._reference: Any = None
        self._async_key = jax.random.fold_in(key, _ASYNC_STREAM)
        self._worker_source = worker_source or source
        self._worker_shardings = None
        if worker_mesh is not None:
            self._worker_shardings = transformer.param_shardings(trainer.model_config, worker_mesh)
        self.device_lock: contextlib.AbstractContextManager = contextlib.nullcontext()
        if cfg.async_rollout:
            self.device_lock = worker_lib.make_device_lock(trainer.mesh, worker_mesh or trainer.mesh)
        self._pending: collections.deque[tuple[TrainBatch, dict[str, float]]] = collections.deque()
        self._rollout: RolloutBatches | None = None
        self._rollout_start = 0
        self._minibatch = 0
        # Asynchronous mode.
        self._store = worker_lib.ParameterStore()
        self._worker: worker_lib.RolloutWorker[RolloutBatches] | None = None
        self._data: Any = None
        self._consumed_data_state: Any = None
        self._published = 0

    # ------------------------------------------------------------ the train loop's API

    def use_reference(self, params: Any) -> None:
        """Fills every later rollout's `ref_logp` from `params`, the frozen
        reference (device arrays laid out as the policy's; golfjax/train/reference.py).
        The train loop calls it where RL starts, before the first rollout."""
        self._reference = params

    @property
    def reference(self) -> Any:
        """The reference parameters (one more copy of the policy's on the
        learner's devices), or None without a KL term."""
        return self._reference

    @property
    def at_boundary(self) -> bool:
        """True between rollouts: nothing is half-trained."""
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
            stats = self._weight_stats(state, batch) if self.off_policy or self.with_phi else {}
            state, metrics = self.trainer.step(state, batch)
            metrics = metrics_lib.to_scalars({**metrics, **stats})
        if self._worker is not None and int(state.step) - self._published >= self.cfg.sync_every:
            self._publish(state)
        metrics |= info
        metrics["samples/generated"] = info["samples/generated"] + extra.get("samples/generated", 0.0)
        metrics |= {
            "schedule/minibatches": float(self.cfg.minibatches),
            "schedule/minibatch": float(self._minibatch),
            "schedule/staleness": float(staleness),
            "schedule/behaviour_version": float(version),
            "schedule/dropped_rollouts": extra.get("schedule/dropped_rollouts", 0.0),
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

    def __enter__(self) -> RolloutSchedule:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # Already failing: stop, but let that error through.
            self._stop_worker(report=False)

    # ------------------------------------------------------------ rollouts

    def _weight_stats(self, state: TrainState, batch: TrainBatch) -> dict[str, jax.Array]:
        parts = _parts(batch)
        logp_NxT = jnp.concatenate([self.trainer.logprobs(state.params, p) for p in parts])

        def rows(name: str) -> jax.Array:
            return jnp.concatenate([getattr(p, name) for p in parts])

        mask_NxT = rows("response_mask_NxT") & ~rows("off_policy_mask_NxT")
        return weight_stats(logp_NxT, rows("old_logp_NxT"), mask_NxT, rows("advantage_N"),
                            self.trainer.loss_cfg, self.with_phi)

    def _draw(self, data: Any) -> list[list[Problem]]:
        return [[self.problems[i] for i in data.next()] for _ in range(self.cfg.minibatches)]

    def _next_rollout(self, state: TrainState, data: Any, key: jax.Array) -> tuple[RolloutBatches, dict[str, float]]:
        if not self.cfg.async_rollout:
            rollout = collect_rollout(self.source, state.params, self._draw(data), key, int(state.step))
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
                    "schedule/dropped_rollouts": float(dropped),
                    "samples/generated": float(dropped_samples),
                }
            dropped += 1
            dropped_samples += rollout.samples

    def _prepare(self, state: TrainState, rollout: RolloutBatches) -> list[TrainBatch]:
        """Device batches; in sync mode `old_logp` (and `ref_logp`) are scored
        before any update (asynchronous rollouts come scored: `_produce`)."""
        with self.device_lock:
            batches = [self.trainer.put_batch(b) for b in rollout.minibatches]
            if self.cfg.async_rollout:
                return batches
            if self.recompute_old_logp:
                batches = [self.trainer.with_old_logprobs(state, b) for b in batches]
            if self._reference is not None:
                batches = [self.trainer.with_ref_logprobs(self._reference, b) for b in batches]
                if self.trainer.cfg.kl_in == "reward":
                    batches = [self._kl_in_reward(self.source, b, info) for b, info in zip(batches, rollout.infos)]
            return batches

    def _kl_in_reward(self, source: BatchSource, batch: TrainBatch, info: dict[str, float]) -> TrainBatch:
        """`batch` (scored) with advantages of its rewards less `kl_coef` times each
        row's summed KL; records the mean penalty in `info`."""
        cfg, parts = self.trainer.cfg, _parts(batch)
        host = sharding.global_to_host([
            (sequence_kl(p.old_logp_NxT, p.ref_logp_NxT, p.response_mask_NxT, cfg.kl_estimator),
             p.reward_N, p.group_id_N, p.off_policy_mask_NxT.any(axis=-1)) for p in parts])
        penalty_N, reward_N, group_id_N, injected_N = (
            np.concatenate([np.asarray(h[i]) for h in host]) for i in range(4))
        penalty_N = cfg.kl_coef * penalty_N.astype(np.float64)
        advantage_N = np.asarray(source.advantages(
            (reward_N - penalty_N).astype(np.float32), group_id_N, injected_N), np.float32)
        info["reward/kl_penalty"] = float(penalty_N.mean())
        bounds = np.cumsum([0] + [p.num_rows for p in parts])
        parts = tuple(self.trainer.put_batch(p.replace(advantage_N=advantage_N[lo:hi]))
                      for p, lo, hi in zip(parts, bounds[:-1], bounds[1:]))
        return parts if isinstance(batch, tuple) else parts[0]

    def _produce(self, params: Any, version: int, stopping: threading.Event) -> RolloutBatches | None:
        """Runs on the worker thread: one rollout with a parameter snapshot."""
        problem_lists = self._draw(self._data)
        data_state = self._data.state()
        rollout = collect_rollout(
            self._worker_source, params, problem_lists, _data_key(self._async_key, data_state), version,
            device_lock=self.device_lock, stop=stopping,
        )
        if rollout is None:
            return None
        if self.recompute_old_logp or self._reference is not None:
            with self.device_lock:
                rollout.minibatches = [self._host_logprobs(params, b, info)
                                       for b, info in zip(rollout.minibatches, rollout.infos)]
        rollout.data_state = data_state
        return rollout

    def _host_logprobs(self, params: Any, batch: TrainBatch, info: dict[str, float]) -> TrainBatch:
        """Host `batch` with `old_logp` under `params` (the behaviour policy)
        and `ref_logp` under the reference, as configured."""
        parts = _parts(self.trainer.put_batch(batch))
        if self.recompute_old_logp:
            parts = tuple(p.replace(old_logp_NxT=self.trainer.logprobs(params, p)) for p in parts)
        scored = parts if isinstance(batch, tuple) else parts[0]
        if self._reference is not None:
            scored = self.trainer.with_ref_logprobs(self._reference, scored)
            if self.trainer.cfg.kl_in == "reward":
                scored = self._kl_in_reward(self._worker_source, scored, info)
        return sharding.global_to_host(scored)

    def _snapshot(self, params: Any) -> Any:
        """A copy of `params` that survives the donation of the learner's state."""
        with self.device_lock:
            if self._worker_shardings is not None:
                copy = jax.device_put(params, self._worker_shardings)
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
        self._worker = worker_lib.RolloutWorker(self._produce, self._store, queue_size=self.cfg.queue_size)
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
