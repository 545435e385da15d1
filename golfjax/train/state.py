"""`TrainState` and the optimizer builder.

`TrainState` is a plain pytree (step, params, opt_state, rng), so one jitted
function can take it, donate it and return its successor, and Orbax can save it
as is. `make_optimizer` builds the AdamW chain every golfjax run uses: global-norm
clipping, then AdamW whose weight decay skips norm scales and biases, under a
warmup + constant or cosine learning-rate schedule.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from golfjax.optimizer_config import SCHEDULES  # noqa: F401  (re-exported)
from golfjax.optimizer_config import OptimizerConfig

Params = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything that changes from one optimizer step to the next.

    Attributes:
      step: int32 scalar, the number of optimizer updates applied so far.
      params: the model's parameter pytree.
      opt_state: the optax state of `make_optimizer`'s chain.
      rng: a raw uint32[2] PRNG key (`jax.random.PRNGKey`), which Orbax saves
        as an ordinary array; per-step keys are `fold_in(rng, step)`.
    """

    step: jax.Array
    params: Params
    opt_state: optax.OptState
    rng: jax.Array

    def replace(self, **changes: Any) -> TrainState:
        return dataclasses.replace(self, **changes)



def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Linear warmup to `cfg.lr`, then constant or cosine decay.

    The schedule maps the count of applied updates to the rate of the next
    one; with "cosine", update `total_steps - 1` (the last) takes
    `lr * min_lr_ratio`.
    """
    if cfg.schedule == "constant":
        after_warmup = optax.constant_schedule(cfg.lr)
    else:
        if cfg.total_steps < 1:
            raise ValueError(
                f"OptimizerConfig.total_steps={cfg.total_steps}; the cosine schedule needs its horizon"
                " (a run sets it to its steps: RunConfig.rl_optimizer)")
        after_warmup = optax.cosine_decay_schedule(
            cfg.lr,
            decay_steps=max(cfg.total_steps - 1 - cfg.warmup_steps, 1),
            alpha=cfg.min_lr_ratio,
        )
    if cfg.warmup_steps == 0:
        return after_warmup
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, after_warmup], [cfg.warmup_steps])


def schedule_count(opt_state: optax.OptState) -> jax.Array:
    """The updates applied so far by `make_optimizer`'s chain: the count its
    learning-rate schedule is evaluated at (a skipped step does not count)."""
    counts = [x.count for x in jax.tree.leaves(
        opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
        if isinstance(x, optax.ScaleByScheduleState)]
    if len(counts) != 1:
        raise ValueError(f"the optimizer state holds {len(counts)} learning-rate schedules; expected 1")
    return counts[0]


def _path_names(path: tuple[Any, ...]) -> list[str]:
    names = []
    for entry in path:
        name = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))
        names.append(str(name))
    return names


def decay_mask(params: Params) -> Params:
    """True for leaves that take weight decay: not norm scales, not biases.

    Decided by name, not rank: stacked layer parameters make a norm scale 2-D
    (`layers x embed`), so "1-D means norm" would decay it.
    """

    def decays(path: tuple[Any, ...], _: Any) -> bool:
        names = _path_names(path)
        exempt = any("norm" in n for n in names) or names[-1].endswith(("bias", "scale"))
        return not exempt

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with `decay_mask`, under `make_schedule`."""
    adamw = optax.adamw(
        make_schedule(cfg),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=decay_mask,
    )
    if cfg.grad_clip is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)


def init_train_state(
    params: Params, optimizer: optax.GradientTransformation, seed: int
) -> TrainState:
    """Step 0 with fresh optimizer moments; `jit` it with `out_shardings`."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.PRNGKey(seed),
    )
