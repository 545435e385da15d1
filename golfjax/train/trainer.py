"""`Trainer`: the one place where the train step and log-prob programs are jitted.

It owns the shardings: parameters and optimizer moments follow the model's
logical-axis rules on the mesh (FSDP over "fsdp", tensor parallel over
"tensor"), batches are split by rows by the same rules' `batch` entry
(`sharding.row_sharding`), and scalars (step, RNG, metrics) are replicated.
It takes the run's config sections as they are: `train` (`TrainSection`),
`loss` (`LossConfig`) and `optimizer` (`OptimizerConfig`). Every program is compiled once per batch shape
(and per whether the batch carries an MoE rollout's routes);
`chex.assert_max_traces` in the tests holds it to that.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from golfjax import sharding as sharding_lib
from golfjax.models import attention as attention_lib
from golfjax.models import platform as platform_lib
from golfjax.models import transformer
from golfjax.config import TrainSection
from golfjax.losses import LossConfig
from golfjax.losses import kl as kl_lib
from golfjax.models.config import ModelConfig
from golfjax.train import step as step_lib
from golfjax.train.state import OptimizerConfig
from golfjax.train.state import TrainState
from golfjax.train.state import init_train_state
from golfjax.train.state import make_optimizer
from golfjax.train.state import make_schedule
from golfjax.types import Batch


class Trainer:
    """Jitted, sharded train step and log-prob recomputation for one model.

    Args:
      model_config: the policy's architecture.
      cfg: the `train` section (loss, coefficients, micro-batches, ...).
      loss_cfg: the `loss` section.
      opt_cfg: the optimizer (`RunConfig.rl_optimizer`, or the cold start's),
        its `total_steps` resolved for a cosine schedule.
      mesh: the learner's mesh.
      temperature: log-probs are scored at the sampling temperature (a greedy
        rollout, temperature 0, is scored at 1).
      rules: logical-axis rules of the parameters and batches.
      part_names: names of a batch's parts in the gradient diagnostics
        (`train_step`'s `part_names`).
    """

    def __init__(
        self,
        model_config: ModelConfig,
        cfg: TrainSection,
        loss_cfg: LossConfig,
        opt_cfg: OptimizerConfig,
        mesh: Mesh,
        *,
        temperature: float = 1.0,
        rules: sharding_lib.Rules = sharding_lib.LOGICAL_RULES,
        part_names: tuple[str, ...] = (),
    ) -> None:
        self.model_config = model_config
        self.cfg = cfg
        # One aggregation for every term: the on-policy loss's default when
        # `loss.agg` is "loss-default" (docs/algorithms.md#aggregation).
        self.loss_cfg = loss_cfg = loss_cfg.for_loss(cfg.loss)
        self.mesh = mesh
        self._rules = rules
        temperature = temperature or 1.0
        self.optimizer = make_optimizer(opt_cfg)
        replicated = NamedSharding(mesh, P())
        self.param_shardings = transformer.param_shardings(model_config, mesh, rules)
        abstract_state = jax.eval_shape(
            functools.partial(init_train_state, optimizer=self.optimizer, seed=0),
            transformer.abstract_params(model_config),
        )
        # Adam's moments mirror the parameters, so they take the parameters'
        # shardings; counters are replicated.
        opt_shardings = optax.tree_map_params(
            self.optimizer,
            lambda _, sharding: sharding,
            abstract_state.opt_state,
            self.param_shardings,
            transform_non_params=lambda _: replicated,
            is_leaf=lambda x: isinstance(x, NamedSharding),
        )
        self.state_shardings = TrainState(
            step=replicated, params=self.param_shardings, opt_state=opt_shardings, rng=replicated
        )
        self.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract_state,
            self.state_shardings,
        )
        # Rows over every data-parallel device; the rest of each field whole.
        row = sharding_lib.row_sharding(mesh, rules)
        self.batch_shardings = step_lib.batch_shardings(mesh, rules)
        # A batch with an MoE rollout's recorded routes (split by rows too).
        self.routed_batch_shardings = step_lib.batch_shardings(mesh, rules, routes=True)

        self._init = jax.jit(
            lambda params, seed: init_train_state(params, self.optimizer, seed),
            static_argnums=1,
            in_shardings=(self.param_shardings,),
            out_shardings=self.state_shardings,
        )
        self._step_fn = self._partitioned(functools.partial(
            step_lib.train_step,
            model_config=model_config,
            optimizer=self.optimizer,
            cfg=cfg,
            loss_cfg=loss_cfg,
            temperature=temperature,
            row_sharding=row,
            lr_schedule=make_schedule(opt_cfg),
            part_names=part_names,
        ))
        self._replicated = replicated
        # One jitted step per batch layout: a Batch, or a tuple of k parts,
        # with or without routes.
        self._steps: dict[tuple[int | None, bool], Any] = {}
        self._logprobs = jax.jit(
            self._partitioned(functools.partial(
                step_lib.compute_logprobs,
                model_config=model_config,
                temperature=temperature,
                chunk=cfg.logp_chunk,
            )),
            # Read-only parameters in their training layout; every field of
            # the batch (with an MoE rollout's routes or without) split by
            # rows; per-row outputs.
            in_shardings=(self.param_shardings, row),
            out_shardings=(row, None),
        )
        # Simulated CPU devices can deadlock when several sharded programs are
        # queued; block on each result there (TPU/GPU keep their async queue).
        self._block = platform_lib.of(mesh) == "cpu"

    def _partitioned(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` traced for this mesh's platform (`platform.compiling_for`: the
        attention kernel follows the devices, not the host) with attention
        kernels split over the mesh (`attention.partitioned`: a Pallas kernel
        has no partitioning rule, so without it every device would attend
        over every row)."""
        def traced(*args: Any, **kwargs: Any) -> Any:
            with platform_lib.compiling_for(self.mesh), attention_lib.partitioned(self.mesh, self._rules):
                return fn(*args, **kwargs)
        return traced

    def init_state(self, params: Any, seed: int) -> TrainState:
        """Step 0 from `params` (host or device arrays), laid out by the rules."""
        return self._maybe_block(self._init(params, seed))

    def put_batch(self, batch: Batch | step_lib.Parts) -> Batch | step_lib.Parts:
        """Host arrays to row-sharded device arrays (each part of a tuple).

        Multi-process, every process passes the same full batch and feeds the
        rows of its own devices (`sharding.host_to_global`).
        """
        return _each_part(batch, lambda part: sharding_lib.host_to_global(
            part, self._batch_shardings(_routed(part))))

    def step(
        self, state: TrainState, batch: Batch | step_lib.Parts
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One update from a batch or a tuple of parts (`train_step`); `state`
        is donated and must not be used afterwards."""
        key = jax.random.fold_in(state.rng, state.step)
        return self._maybe_block(self.jitted_step(batch)(state, batch, key))

    def jitted_step(self, batch: Batch | step_lib.Parts) -> Any:
        """The jitted `train_step` for `batch`'s layout, `(state, batch, key)
        -> (state, metrics)`; e.g. to lower and compile it ahead of time."""
        parts = batch if isinstance(batch, tuple) else (batch,)
        layout = (len(batch) if isinstance(batch, tuple) else None,
                  bool(parts) and _routed(parts[0]))
        if layout not in self._steps:
            shardings = self._batch_shardings(layout[1])
            batch_shardings = shardings if layout[0] is None else (shardings,) * layout[0]
            self._steps[layout] = jax.jit(
                self._step_fn,
                # state: parameters and moments by the rules, step/rng
                # replicated; batch: split by rows; key: replicated.
                in_shardings=(self.state_shardings, batch_shardings, self._replicated),
                # The new state keeps the old one's layout, so donating the old
                # state lets XLA update parameters and moments in place;
                # metrics are replicated scalars.
                out_shardings=(self.state_shardings, self._replicated),
                donate_argnums=0,
            )
        return self._steps[layout]

    @property
    def jitted_logprobs(self) -> Any:
        """The jitted `compute_logprobs`, `(params, batch) -> (logp_NxT, None)`;
        e.g. to lower and compile it ahead of time."""
        return self._logprobs

    def logprobs(self, params: Any, batch: Batch) -> jax.Array:
        """Log-probs of `batch`'s response tokens under `params`, `N x T`."""
        logp_NxT, _ = self._logprobs(params, batch)
        return self._maybe_block(logp_NxT)

    def _batch_shardings(self, routes: bool) -> Batch:
        return self.routed_batch_shardings if routes else self.batch_shardings

    def with_old_logprobs(self, state: TrainState, batch: Batch | step_lib.Parts) -> Batch | step_lib.Parts:
        """`batch` (each part) with `old_logp` recomputed by the trainer (the behaviour policy)."""
        return _each_part(batch, lambda part: part.replace(old_logp_NxT=self.logprobs(state.params, part)))

    def with_ref_logprobs(self, ref_params: Any, batch: Batch | step_lib.Parts) -> Batch | step_lib.Parts:
        """`batch` (each part) with `ref_logp` from the reference policy (for the KL term)."""
        return _each_part(batch, lambda part: part.replace(ref_logp_NxT=self.logprobs(ref_params, part)))

    def sequence_kl(self, batch: Batch) -> jax.Array:
        """Each row's KL estimate (`train.kl_estimator`, between `old_logp` and
        `ref_logp`) summed over its response tokens, `N` (`train.kl_in = "reward"`)."""
        return self._maybe_block(_sequence_kl(batch.old_logp_NxT, batch.ref_logp_NxT, batch.response_mask_NxT,
                                              self.cfg.kl_estimator))

    def _maybe_block(self, tree: Any) -> Any:
        return jax.block_until_ready(tree) if self._block else tree


@functools.partial(jax.jit, static_argnames=("estimator",))
def _sequence_kl(old_logp_NxT: jax.Array, ref_logp_NxT: jax.Array, mask_NxT: jax.Array,
                 estimator: str) -> jax.Array:
    kl_NxT = kl_lib.kl_penalty(old_logp_NxT, ref_logp_NxT, estimator)
    return jnp.where(mask_NxT, kl_NxT, 0.0).sum(axis=-1)


def _routed(batch: Batch) -> bool:
    """Whether `batch` carries an MoE rollout's recorded routes."""
    return batch.routes_NxTxLxA is not None


def _each_part(batch: Batch | step_lib.Parts, fn: Callable[[Batch], Batch]) -> Batch | step_lib.Parts:
    """`fn` of a batch, or of each part of a tuple of parts (the same layout back)."""
    return tuple(fn(part) for part in batch) if isinstance(batch, tuple) else fn(batch)
