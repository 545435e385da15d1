"""The asynchronous schedule: rollouts produced while the learner trains (`schedule.async_rollout`).

The two sides meet only through a channel (golfjax/loops/rollout_worker.py's
`LocalChannel` in one process): `publish`/`get` for the learner, `latest`/`put`
for the producer.

- `RolloutProducer` (its own thread and, with `schedule.rollout_devices`,
  devices) owns the rollout side: it draws prompts from the data iterator,
  samples with the newest published weights (with `schedule.partial_rollout`
  and a source that has `sample_partial`, a generation continues under newer
  weights every `schedule.rollout_chunk_tokens` decode steps, each row
  recording the oldest and newest versions behind its tokens), scores
  `old_logp` (`train.recompute_old_logp`) and the KL reference's `ref_logp`
  (and the KL in the reward), and puts the rollout into the channel. The
  throttle (verl's recipe/fully_async_policy `staleness_threshold`): it
  produces only while it holds fewer than `schedule.max_ahead = ceil((1 +
  staleness_threshold) * sync_every)` mini-batches beyond those the learner
  had consumed at the last weight sync. Nothing is dropped: a mini-batch
  trains at most `max_ahead - 1` steps after the weights that started it.
- `AsyncRolloutSchedule`, the learner side, keeps `RolloutSchedule`'s
  protocol: it publishes a copy of the weights (onto the rollout devices) at
  the start and every `sync_every` steps, and trains the channel's rollouts
  in order. Each rollout records the data position after its draws; a
  checkpoint (`checkpoint_now`, between rollouts) stops the producer and
  rewinds the iterator to the last consumed rollout, so rollouts in flight
  are drawn and generated again, never lost or trained twice. Asynchronous
  runs are not deterministic.

Metrics for the mini-batch trained at step s whose row i holds tokens of
versions `[version_min_i, version_max_i]`: `schedule/lag_max = s - min_i
version_min_i`, `schedule/lag_min = s - max_i version_max_i`,
`schedule/lag_mean` (the mean over rows of `s - version_min_i`),
`schedule/multi_version_frac` (rows of several versions),
`schedule/queue_depth` (rollouts waiting when it was taken), and, on a
rollout's first mini-batch (0 on later ones), `schedule/learner_wait_s` (the
learner's wait for it) and `schedule/rollout_wait_s` (the throttle's wait
before it was sampled).
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from golfjax import sharding
from golfjax.config import ScheduleSection
from golfjax.loops import rollout_worker as worker_lib
from golfjax.loops import schedule as schedule_lib
from golfjax.loops.schedule import BatchSource, RolloutBatches, TrainBatch
from golfjax.models import transformer
from golfjax.rewards.base import Problem
from golfjax.train.state import TrainState
from golfjax.train.trainer import Trainer

ASYNC_STREAM = 0x5E5B0  # Folded into the run's key for the producer's rollouts.


def _data_key(base: jax.Array, data_state: Any) -> jax.Array:
    """A key that depends only on the data position (stable across processes)."""
    digest = zlib.crc32(json.dumps(data_state, sort_keys=True, default=str).encode())
    return jax.random.fold_in(base, digest & 0x7FFFFFFF)


class RolloutProducer:
    """The rollout side: one `produce_one` call draws, samples, scores and puts one rollout.

    Args:
      cfg: the `schedule` section.
      channel: `latest()` and `put(item)` are all it uses of it.
      source: the batch source on the rollout devices.
      problems, data: the train split and the data iterator (the producer's while it runs).
      key: the producer's key; a rollout's is derived from its data position.
      score: `(params, batch, info) -> host batch`, the learner's scoring of
        a host batch sampled by `params` (None: the sampler's log-probs only).
      device_lock: held around every device program.
    """

    def __init__(self, cfg: ScheduleSection, channel: Any, source: BatchSource, problems: Sequence[Problem],
                 data: Any, key: jax.Array, score: Callable[[Any, TrainBatch, dict], TrainBatch] | None,
                 device_lock: Any) -> None:
        self.cfg, self.channel, self.source = cfg, channel, source
        self.problems, self.data, self.key = problems, data, key
        self.score, self.device_lock = score, device_lock
        self.partial = cfg.partial_rollout and hasattr(source, "sample_partial")
        self.produced = 0  # Mini-batches handed over since the start.
        self.start_version: int | None = None

    def _throttled(self, stopping: threading.Event) -> bool:
        """Waits while production is `max_ahead` mini-batches ahead of what the
        learner had consumed at the last sync; False if stopped meanwhile."""
        while True:
            version = self.channel.latest()[1]
            self.start_version = version if self.start_version is None else self.start_version
            # Each learner step consumes one mini-batch and syncs are at steps.
            if self.produced - (version - self.start_version) < self.cfg.max_ahead:
                return True
            if stopping.wait(0.01):
                return False

    def produce_one(self, stopping: threading.Event) -> None:
        waited = time.monotonic()
        if not self._throttled(stopping):
            return
        waited, began = time.monotonic() - waited, time.time()
        problem_lists = [[self.problems[i] for i in self.data.next()] for _ in range(self.cfg.minibatches)]
        data_state = self.data.state()
        key = _data_key(self.key, data_state)
        params, version = self.channel.latest()
        minibatches, infos, versions = [], [], []
        for j, problems in enumerate(problem_lists):
            if stopping.is_set():
                return
            with self.device_lock:
                if self.partial:
                    batch, info, v_min, v_max = self.source.sample_partial(
                        self.channel.latest, problems, jax.random.fold_in(key, j), self.cfg.rollout_chunk_tokens)
                else:
                    batch, info = self.source.sample(params, problems, jax.random.fold_in(key, j))
                    rows = sum(p.num_rows for p in schedule_lib.parts(batch))
                    v_min = v_max = np.full((rows,), version, np.int32)
                if self.score is not None:
                    batch = self.score(params, batch, info)
            minibatches.append(batch)
            infos.append(info)
            versions.append((np.asarray(v_min, np.int32), np.asarray(v_max, np.int32)))
        infos[0] |= {"perf/rollout_start_s": began, "perf/rollout_end_s": time.time()}  # Wall clock.
        rollout = RolloutBatches(minibatches, infos, int(min(v.min() for v, _ in versions)), data_state, versions,
                                 rollout_wait_s=waited)
        if self.channel.put(rollout):
            self.produced += len(minibatches)


class AsyncRolloutSchedule(schedule_lib.RolloutSchedule):
    """`RolloutSchedule`'s protocol over rollouts produced on another thread.

    Args (besides `RolloutSchedule`'s):
      key: the run's key; the producer derives its rollouts' keys from it.
      worker_source: the producer's source (sampling on `worker_mesh`), when
        it has devices of its own.
      worker_mesh: those devices' mesh; None shares the learner's.
    """

    def __init__(self, cfg: ScheduleSection, *, trainer: Trainer, source: BatchSource, problems: Sequence[Problem],
                 key: jax.Array, recompute_old_logp: bool, worker_source: BatchSource | None = None,
                 worker_mesh: Mesh | None = None) -> None:
        super().__init__(cfg, trainer=trainer, source=source, problems=problems,
                         recompute_old_logp=recompute_old_logp)
        self._key = jax.random.fold_in(key, ASYNC_STREAM)
        self._worker_source = worker_source or source
        mesh = worker_mesh
        self._shardings = None if mesh is None else transformer.param_shardings(trainer.model_config, mesh)
        self._lock = worker_lib.make_device_lock(trainer.mesh, worker_mesh or trainer.mesh)
        self._channel: worker_lib.LocalChannel | None = None
        self._worker: worker_lib.RolloutWorker | None = None
        self._data = self._consumed_data_state = None  # The iterator, and its position after the last rollout taken.
        self._published = 0
        self._waits = (0.0, 0.0, 0)  # learner_wait_s, rollout_wait_s, queue depth of the rollout taken.

    def next_batch(self, state: TrainState, data: Any, key: jax.Array) -> tuple[TrainBatch, dict[str, float]]:
        if self._worker is None:
            self._start(state, data)
        elif int(state.step) - self._published >= self.cfg.sync_every:
            self._publish(state)
        return super().next_batch(state, data, key)

    def checkpoint_now(self, step: int, *, force: bool, every: int) -> bool:
        """`RolloutSchedule.checkpoint_now`; if so, stops the producer and
        rewinds the data iterator to just after the last consumed rollout."""
        if not super().checkpoint_now(step, force=force, every=every):
            return False
        self._stop()
        return True

    def device_programs(self) -> Any:
        """Holds the device lock: the producer's programs wait meanwhile."""
        return self._lock

    def close(self) -> None:  # Re-raises a failure of the producer's that no `get` reported.
        self._stop()

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self._stop(report=exc_type is None)  # Already failing: let that error through.

    def _metrics(self, step: int) -> dict[str, float]:
        v_min, v_max = self._rollout.versions[self._minibatch - 1]
        first = self._minibatch == 1
        learner_wait, rollout_wait, depth = self._waits
        return super()._metrics(step) | {
            "schedule/lag_min": float(step - v_max.max()),
            "schedule/lag_mean": float(np.mean(step - v_min.astype(np.float64))),
            "schedule/lag_max": float(step - v_min.min()),
            "schedule/multi_version_frac": float(np.mean(v_min != v_max)),
            "schedule/queue_depth": float(depth),
            "schedule/learner_wait_s": learner_wait if first else 0.0,
            "schedule/rollout_wait_s": rollout_wait if first else 0.0,
        }

    def _next_rollout(self, state: TrainState, data: Any, key: jax.Array) -> RolloutBatches:
        start = time.monotonic()
        rollout = self._channel.get()
        self._waits = (time.monotonic() - start, rollout.rollout_wait_s, self._channel.depth())
        self._consumed_data_state = rollout.data_state
        return rollout

    def _prepare(self, state: TrainState, rollout: RolloutBatches) -> list[TrainBatch]:
        with self._lock:  # Scored by the producer already.
            return [self.trainer.put_batch(b) for b in rollout.minibatches]

    def _score(self, params: Any, batch: TrainBatch, info: dict[str, float]) -> TrainBatch:
        """On the producer's thread (lock held): host `batch` with `old_logp`
        under `params` and `ref_logp` under the reference, as configured."""
        scored = schedule_lib.score(
            self.trainer, self.trainer.put_batch(batch), info, source=self._worker_source,
            old_params=params if self.recompute_old_logp else None, reference=self._reference)
        return sharding.global_to_host(scored)

    def _publish(self, state: TrainState) -> None:
        """A copy of the weights that survives the donation of the learner's state."""
        with self._lock:
            copy = (jax.tree.map(lambda x: x.copy(), state.params) if self._shardings is None
                    else jax.device_put(state.params, self._shardings))
            copy = jax.block_until_ready(copy)
        self._published = int(state.step)
        self._channel.publish(copy, self._published)

    def _start(self, state: TrainState, data: Any) -> None:
        self._data, self._consumed_data_state = data, data.state()
        self._channel = worker_lib.LocalChannel()
        self._publish(state)
        scoring = self.recompute_old_logp or self._reference is not None
        producer = RolloutProducer(self.cfg, self._channel, self._worker_source, self.problems, data, self._key,
                                   self._score if scoring else None, self._lock)
        self._worker = worker_lib.RolloutWorker(producer.produce_one, self._channel).start()

    def _stop(self, report: bool = True) -> None:
        """Stops the producer and rewinds the data; raises a failure it has not reported."""
        if self._worker is None:
            return
        worker, self._worker = self._worker, None
        worker.stop()  # What it still held is drawn again from the rewound position.
        self._data.restore(self._consumed_data_state)
        if report:
            self._channel.raise_unreported_error()
