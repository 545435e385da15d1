"""Per-token estimators of the KL divergence from the policy to a frozen reference.

Shapes: N rows (sequences), T padded response tokens.

At tokens sampled from the policy pi, with `log r_t = ref_logp_t - logp_t`,
Schulman's note "Approximating KL Divergence" (2020) gives three estimators of
KL(pi || ref):

  k1 = -log r             unbiased, high variance, negative at some tokens
  k2 = (log r)^2 / 2      biased, low variance, >= 0
  k3 = (r - 1) - log r    unbiased, low variance, >= 0

verl's `kl_penalty` calls them "kl"/"k1", "mse"/"k2" and "low_var_kl"/"k3";
TRL's GRPOTrainer adds k3 to the loss with the weight `beta` (golfjax's
`train.kl_coef`). As verl does for low_var_kl, k3 clips `log r` to [-20, 20]
and the estimate to [-10, 10], so one token far from the reference cannot
overflow the loss (its gradient is then 0). docs/algorithms.md#kl-penalty says
how each one behaves as a loss term and as a reward penalty.
"""

from __future__ import annotations

from typing import Final

import jax
import jax.numpy as jnp

ESTIMATORS: Final[tuple[str, ...]] = ("k1", "k2", "k3")

_LOG_RATIO_CLIP = 20.0  # verl's low_var_kl: exp stays finite.
_K3_CLIP = 10.0  # verl's low_var_kl: the estimate's bound.


def kl_penalty(logp_NxT: jax.Array, ref_logp_NxT: jax.Array, estimator: str) -> jax.Array:
    """The per-token estimate of KL(pi || ref) named `estimator` (see the module docstring).

    The reference is frozen: no gradient reaches `ref_logp_NxT`. Values at
    padded positions are whatever the inputs give there; the caller masks them.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"kl_estimator={estimator!r}; expected one of {', '.join(ESTIMATORS)}")
    dtype = jnp.promote_types(jnp.result_type(logp_NxT), jnp.float32)
    log_r_NxT = jax.lax.stop_gradient(jnp.asarray(ref_logp_NxT, dtype)) - jnp.asarray(logp_NxT, dtype)
    if estimator == "k1":
        return -log_r_NxT
    if estimator == "k2":
        return 0.5 * jnp.square(log_r_NxT)
    log_r_NxT = jnp.clip(log_r_NxT, -_LOG_RATIO_CLIP, _LOG_RATIO_CLIP)
    return jnp.clip(jnp.expm1(log_r_NxT) - log_r_NxT, -_K3_CLIP, _K3_CLIP)
