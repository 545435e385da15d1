"""The loss library: pure functions of arrays, never of the model.

Every entry of `LOSSES` (and of `OFF_POLICY_LOSSES`) has the signature

    fn(logp_NxT, old_logp_NxT, adv_N, mask_NxT, cfg, sampler_logp_NxT=None)
        -> (Weighted(sum, count), aux)

with `cfg` a `LossConfig`. The loss and every diagnostic in `aux` are
`(sum, count)` pairs (`Weighted`; a diagnostic is usually
`reduce.weighted_mean(x, mask)`) so that micro-batch accumulation, batch parts
and cross-device sums give the exact global mean.
"""

from __future__ import annotations

from typing import Callable

import jax

from golfjax.losses import importance
from golfjax.losses import policy
from golfjax.losses import refinement
from golfjax.losses.config import LossConfig
from golfjax.losses.reduce import AGGREGATIONS
from golfjax.losses.reduce import Weighted
from golfjax.losses.reduce import aggregate

LossFn = Callable[..., tuple[Weighted, dict[str, jax.Array]]]

LOSSES: dict[str, LossFn] = {
    "ppo_clip": policy.ppo_clip,
    "gspo": policy.gspo,
    "cispo": policy.cispo,
    "sapo": policy.sapo,
    "reinforce": policy.reinforce,
    "vespo": importance.vespo,
}
OFF_POLICY_LOSSES: dict[str, LossFn] = refinement.OFF_POLICY_LOSSES


def _lookup(table: dict[str, LossFn], kind: str, name: str) -> LossFn:
    if name not in table:
        raise ValueError(
            f"unknown {kind} {name!r}; expected one of {', '.join(sorted(table))}"
        )
    return table[name]


def get_loss(name: str) -> LossFn:
    """`LOSSES[name]`, or a ValueError listing the known names."""
    return _lookup(LOSSES, "loss", name)


def get_off_policy_loss(name: str) -> LossFn:
    """`OFF_POLICY_LOSSES[name]`, or a ValueError listing the known names."""
    return _lookup(OFF_POLICY_LOSSES, "off-policy loss", name)


__all__ = [
    "AGGREGATIONS",
    "LOSSES",
    "LossConfig",
    "OFF_POLICY_LOSSES",
    "Weighted",
    "aggregate",
    "get_loss",
    "get_off_policy_loss",
]
