"""The synchronous rollout schedule: k mini-batches per rollout, trained in order.

Letters (golfjax/types.py): B prompts of a mini-batch, G samples per prompt,
N rows, T response tokens; `minibatches` (k) and staleness are written out.

The schedule is separate from the loss: any `train.loss` trains under any
schedule (docs/algorithms.md, section VESPO), and any batch source
(golfjax/loops/rl.py's groups, golfjax/loops/golf.py's GOLF batches) feeds it
through `sample(params, problems, key) -> (batch or parts, metrics)`. The
off-policy statistics of the sequence weights come from the train step
(golfjax/train/step.py, `schedule/log_w_*`, `schedule/ess`).

One rollout is sampled by the current policy: k mini-batches of B prompts
(each a complete set of groups with its own advantages), then trained in
order, one optimizer step each, one epoch. Behaviour log-probs (`old_logp`)
are the trainer's rescoring of every mini-batch under the sampling parameters,
all done once per rollout before its first update (so PPO's clip is active
from the second mini-batch on), or, with `train.recompute_old_logp=False`, the
sampler's own. Mini-batch j (1-based) is therefore trained by a policy j - 1
steps ahead of the behaviour policy: VESPO's staleness setting is k. On-policy
training is k = 1. Mini-batch j samples with `fold_in(key, j)`, `key` being
the key of the rollout's first step, so the schedule is deterministic for a
seed, and checkpoints (taken only between rollouts) resume exactly.

KL to a reference (`train.kl_coef > 0`). Once the train loop hands the
schedule the frozen reference parameters (`use_reference`), every rollout's
mini-batches get their `ref_logp` from the trainer's log-prob program, right
after (and exactly as) `old_logp`. With `train.kl_in = "reward"` each row's
reward then loses `kl_coef` times its summed KL estimate (between `old_logp`,
the sampling policy, and `ref_logp`) and the advantages are recomputed by the
source (`advantages`), as verl's `use_kl_in_reward` does for outcome rewards
(docs/algorithms.md#kl-penalty); `reward/kl_penalty` is the mean penalty.

The train loop's protocol is `next_batch` (the next device batch and its host
metrics; the loop runs the train step), `checkpoint_now`, and
`device_programs` around its own device work; golfjax/loops/async_rollout.py
keeps it for the asynchronous schedule. Metrics per optimizer step, besides
the source's: `schedule/minibatches` (k), `schedule/minibatch` (j),
`schedule/staleness` (learner steps between the behaviour policy and the
policy trained), `schedule/behaviour_version`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import Any, Protocol, Sequence

import jax
import numpy as np

from golfjax import sharding
from golfjax.config import ScheduleSection
from golfjax.rewards.base import Problem
from golfjax.train.state import TrainState
from golfjax.train.trainer import Trainer
from golfjax.types import Batch

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
      version: the learner step count of the parameters that started sampling them.
      data_state: the data iterator's position after this rollout's draws
        (asynchronous mode; None otherwise).
      versions: per mini-batch, the oldest and newest policy versions that
        produced tokens of each row, `(version_min_N, version_max_N)` int32
        (asynchronous mode; both `version` for whole rollouts).
      rollout_wait_s: seconds the producer waited (the throttle) before
        sampling this rollout.
    """

    minibatches: list[TrainBatch]
    infos: list[dict[str, float]]
    version: int
    data_state: Any = None
    versions: list[tuple[np.ndarray, np.ndarray]] | None = None
    rollout_wait_s: float = 0.0


def parts(batch: TrainBatch) -> tuple[Batch, ...]:
    return batch if isinstance(batch, tuple) else (batch,)


def score(trainer: Trainer, batch: TrainBatch, info: dict[str, float], *, source: BatchSource,
          old_params: Any = None, reference: Any = None) -> TrainBatch:
    """Device `batch` with `old_logp` under `old_params` (unless None), `ref_logp`
    under `reference` (unless None) and, with `train.kl_in = "reward"`,
    advantages of its rewards less `kl_coef` times each row's summed KL (the
    mean penalty goes to `info["reward/kl_penalty"]`)."""
    if old_params is not None:
        ps = tuple(p.replace(old_logp_NxT=trainer.logprobs(old_params, p)) for p in parts(batch))
        batch = ps if isinstance(batch, tuple) else ps[0]
    if reference is None:
        return batch
    batch = trainer.with_ref_logprobs(reference, batch)
    if trainer.cfg.kl_in != "reward":
        return batch
    cfg, ps = trainer.cfg, parts(batch)
    host = sharding.global_to_host([
        (trainer.sequence_kl(p), p.reward_N, p.group_id_N, p.off_policy_mask_NxT.any(axis=-1)) for p in ps])
    penalty_N, reward_N, group_id_N, injected_N = (np.concatenate([np.asarray(h[i]) for h in host]) for i in range(4))
    penalty_N = cfg.kl_coef * penalty_N.astype(np.float64)
    advantage_N = np.asarray(source.advantages(
        (reward_N - penalty_N).astype(np.float32), group_id_N, injected_N), np.float32)
    info["reward/kl_penalty"] = float(penalty_N.mean())
    bounds = np.cumsum([0] + [p.num_rows for p in ps])
    ps = tuple(trainer.put_batch(p.replace(advantage_N=advantage_N[lo:hi]))
               for p, lo, hi in zip(ps, bounds[:-1], bounds[1:]))
    return ps if isinstance(batch, tuple) else ps[0]


class RolloutSchedule:
    """Hands the train loop one device mini-batch per optimizer step, sampling
    a rollout of k when none is left; no threads.

    Args:
      cfg: the `schedule` section.
      trainer: the learner's jitted step and log-prob programs.
      source: the batch source on the learner's devices.
      problems: the train split; the data iterator yields positions in it.
      recompute_old_logp: `train.recompute_old_logp`.
    """

    def __init__(self, cfg: ScheduleSection, *, trainer: Trainer, source: BatchSource,
                 problems: Sequence[Problem], recompute_old_logp: bool) -> None:
        self.cfg = cfg
        self.trainer = trainer
        self.source = source
        self.problems = problems
        self.recompute_old_logp = recompute_old_logp
        self._reference: Any = None
        self._pending: collections.deque[tuple[TrainBatch, dict[str, float]]] = collections.deque()
        self._rollout: RolloutBatches | None = None
        self._rollout_start = 0
        self._minibatch = 0

    def use_reference(self, params: Any) -> None:
        """Fills every later rollout's `ref_logp` from `params`, the frozen
        reference (device arrays laid out as the policy's; golfjax/train/reference.py).
        The train loop calls it where RL starts, before the first rollout."""
        self._reference = params

    @property
    def reference(self) -> Any:
        """The reference parameters, or None without a KL term."""
        return self._reference

    def next_batch(self, state: TrainState, data: Any, key: jax.Array) -> tuple[TrainBatch, dict[str, float]]:
        """The next mini-batch to train `state` on (sampling a rollout first if none is left).

        Args:
          state: the learner's state, about to be updated with the batch.
          data: the run's data iterator (`next()` -> positions in `problems`).
          key: the step's key; a rollout uses the key of its first step.

        Returns:
          The device batch (scored) and its host metrics, incl. "samples/generated".
        """
        if not self._pending:
            rollout = self._next_rollout(state, data, key)
            self._rollout, self._rollout_start, self._minibatch = rollout, int(state.step), 0
            self._pending.extend(zip(self._prepare(state, rollout), rollout.infos))
        batch, info = self._pending.popleft()
        self._minibatch += 1
        return batch, {**info, **self._metrics(int(state.step))}

    def checkpoint_now(self, step: int, *, force: bool, every: int) -> bool:
        """Whether a checkpoint may be taken after `step` (readying the data
        position if so): only between rollouts, when `force` or when a
        multiple of `every` was passed during the rollout."""
        if self._pending:
            return False
        return force or step // every > self._rollout_start // every

    def device_programs(self) -> contextlib.AbstractContextManager:
        """Where the train loop runs its device programs (train step,
        evaluation); nothing else runs any here."""
        return contextlib.nullcontext()

    def close(self) -> None:
        """Nothing to stop."""

    def __enter__(self) -> RolloutSchedule:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close()

    def _metrics(self, step: int) -> dict[str, float]:
        version = self._rollout.version
        return {
            "schedule/minibatches": float(self.cfg.minibatches),
            "schedule/minibatch": float(self._minibatch),
            "schedule/staleness": float(step - version),
            "schedule/behaviour_version": float(version),
        }

    def _draw(self, data: Any) -> list[list[Problem]]:
        return [[self.problems[i] for i in data.next()] for _ in range(self.cfg.minibatches)]

    def _next_rollout(self, state: TrainState, data: Any, key: jax.Array) -> RolloutBatches:
        minibatches, infos = [], []
        for j, problems in enumerate(self._draw(data)):
            batch, info = self.source.sample(state.params, problems, jax.random.fold_in(key, j))
            minibatches.append(batch)
            infos.append(info)
        return RolloutBatches(minibatches, infos, int(state.step))

    def _prepare(self, state: TrainState, rollout: RolloutBatches) -> list[TrainBatch]:
        """Device batches, `old_logp` (and `ref_logp`) scored before any update."""
        old_params = state.params if self.recompute_old_logp else None
        return [score(self.trainer, self.trainer.put_batch(b), info, source=self.source, old_params=old_params,
                      reference=self._reference) for b, info in zip(rollout.minibatches, rollout.infos)]
