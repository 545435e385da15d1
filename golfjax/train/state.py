"""`TrainState` and the optimizer builder.

`TrainState` is a plain pytree (step, params, opt_state, rng), so one jitted
function can take it, donate it and return its successor, and Orbax can save it
as is. `make_optimizer` builds the AdamW chain every golfjax run uses: global-norm
clipping, then AdamW whose weight decay skips norm scales and biases, under a
warmup + constant or cosine learning-rate schedule.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

Params = Any

SCHEDULES = ("constant", "cosine")


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


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with warmup and global-norm clipping (GOLF's released defaults).

    Attributes:
      lr: peak learning rate.
      warmup_steps: linear warmup from 0 to `lr` over the first updates.
      schedule: "constant" after warmup, or "cosine" decay to
        `lr * min_lr_ratio` at the last of `total_steps` updates.
      total_steps: the updates the schedule spans; 0 (the default) in a run's
        config, where the run sets it to its own steps (`RunConfig.rl_optimizer`,
        `cold_start_optimizer`), and a run refuses any other value that differs
        from them. The cosine schedule needs it resolved (>= 1).
      min_lr_ratio: the cosine schedule's final fraction of `lr`.
      b1, b2, eps: Adam's moment decays and epsilon.
      weight_decay: decoupled weight decay; norm scales and biases never decay.
      grad_clip: global-norm clipping threshold; None disables it.
    """

    lr: float = 1e-6
    warmup_steps: int = 0
    schedule: str = "constant"
    total_steps: int = 0
    min_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"OptimizerConfig.schedule={self.schedule!r}; expected one of"
                f" {', '.join(SCHEDULES)}"
            )
        checks = {
            "lr": (0 < self.lr < math.inf, "a finite number > 0"),
            "warmup_steps": (self.warmup_steps >= 0, ">= 0"),
            "total_steps": (self.total_steps >= 0, ">= 0 (0: the run's steps)"),
            "min_lr_ratio": (0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            "b1": (0 <= self.b1 < 1, "in [0, 1)"),
            "b2": (0 <= self.b2 < 1, "in [0, 1)"),
            "eps": (self.eps > 0, "> 0"),
            "weight_decay": (0 <= self.weight_decay < math.inf, "a finite number >= 0"),
            "grad_clip": (self.grad_clip is None or 0 < self.grad_clip < math.inf, "a finite number > 0 or None"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(
                    f"OptimizerConfig.{name}={getattr(self, name)!r}; expected {expected}"
                )


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
