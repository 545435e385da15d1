"""Importance weights: train/inference mismatch correction and the VESPO kernel.

Shapes: B rows (sequences), T padded response tokens.

Three log-probabilities meet here: `logp` (the policy being trained), `old_logp`
(the behaviour policy, recomputed by the trainer) and `sampler_logp` (what the
sampler reported while generating; it differs from `old_logp` through numerics,
kernels or staleness).

- Token TIS (truncated importance sampling): `w_t = min(exp(old_logp_t -
  sampler_logp_t), C)`, detached, multiplies the token loss.
- MIS (masked importance sampling): tokens (or whole sequences) whose ratio
  lies outside `[1/C, C]` are rejected, i.e. masked out.
- VESPO (Variational sEquence-level Soft Policy Optimization): a closed-form
  kernel `phi(W) = W^k exp(lam (1 - W))` on the *sequence* importance weight
  `W = pi(y) / mu(y)`, with no length normalisation; see `vespo`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from golfjax.losses import inputs
from golfjax.losses import reduce
from golfjax.losses.config import LossConfig

# ALGORITHMS.md: weights are floored at 1e-8 before their log is taken.
_LOG_WEIGHT_FLOOR = math.log(1e-8)
_DEFAULT_CFG = LossConfig()


def tis_log_weights(
    old_logp_BxT: jax.Array, sampler_logp_BxT: jax.Array, cap: float, clip: float
) -> jax.Array:
    """`clip(log(max(min(exp(old - sampler), cap), 1e-8)), -clip, clip)`.

    Evaluated in log space, so it neither overflows nor underflows.
    """
    log_w_BxT = jnp.minimum(old_logp_BxT - sampler_logp_BxT, math.log(cap))
    return jnp.clip(jnp.maximum(log_w_BxT, _LOG_WEIGHT_FLOOR), -clip, clip)


def tis_weights(
    old_logp_BxT: jax.Array, sampler_logp_BxT: jax.Array, cap: float = 2.0
) -> jax.Array:
    """Token TIS weights `min(exp(old_logp - sampler_logp), cap)`, detached."""
    log_w_BxT = tis_log_weights(old_logp_BxT, sampler_logp_BxT, cap, clip=20.0)
    return jax.lax.stop_gradient(jnp.exp(log_w_BxT))


def mis_mask(
    old_logp_BxT: jax.Array,
    sampler_logp_BxT: jax.Array,
    mask_BxT: jax.Array,
    cap: float = 2.0,
    level: str = "token",
) -> jax.Array:
    """The mask with rejected tokens (or sequences) removed.

    A token is kept when `1/cap <= exp(old_logp_t - sampler_logp_t) <= cap`; at
    `level="sequence"` a whole row is kept when its product ratio
    `exp(sum_t m_t (old_logp_t - sampler_logp_t))` is inside the same bounds.
    """
    valid_BxT = mask_BxT.astype(bool)
    log_ratio_BxT = jnp.where(valid_BxT, old_logp_BxT - sampler_logp_BxT, 0.0)
    bound = math.log(cap)
    if level == "token":
        return valid_BxT & (jnp.abs(log_ratio_BxT) <= bound)
    if level == "sequence":
        keep_B = jnp.abs(log_ratio_BxT.sum(axis=-1)) <= bound
        return valid_BxT & keep_B[:, None]
    raise ValueError(f"level={level!r}; expected 'token' or 'sequence'")


def correct_mismatch(
    x: inputs.PolicyInputs, cfg: LossConfig
) -> tuple[jax.Array, jax.Array | None, dict[str, jax.Array]]:
    """Applies the configured MIS and computes TIS log-weights.

    Returns:
      The (possibly reduced) bool mask, the TIS log-weights (None when TIS is
      off) and diagnostics.
    """
    if (cfg.tis or cfg.mis != "none") and x.sampler_logp_BxT is None:
        raise ValueError(
            f"LossConfig(tis={cfg.tis}, mis={cfg.mis!r}) corrects the"
            " train/inference mismatch and needs sampler_logp_BxT; got None"
        )
    mask_BxT, tis_log_w_BxT, aux = x.mask_BxT, None, {}
    if cfg.mis != "none":
        mask_BxT = mis_mask(
            x.old_logp_BxT, x.sampler_logp_BxT, x.mask_BxT, cfg.mis_cap, cfg.mis
        )
        rejected = x.mask_BxT.sum() - mask_BxT.sum()
        aux["mis_reject_frac"] = reduce.Weighted(
            rejected.astype(jnp.float32), x.mask_BxT.sum().astype(jnp.float32)
        ).value
    if cfg.tis:
        tis_log_w_BxT = tis_log_weights(
            x.old_logp_BxT, x.sampler_logp_BxT, cfg.tis_cap, cfg.log_ratio_clip
        )
        aux["tis_weight_mean"] = reduce.masked_mean(
            jnp.exp(tis_log_w_BxT), mask_BxT
        )
    return mask_BxT, tis_log_w_BxT, aux


def sequence_log_weight(
    logp_BxT: jax.Array,
    old_logp_BxT: jax.Array,
    mask_BxT: jax.Array,
    clip: float = 20.0,
    tis_log_w_BxT: jax.Array | None = None,
) -> jax.Array:
    """`s_i = clip(sum_t m_t clip(logp_t - old_logp_t) [+ sum_t m_t log w_t])`.

    The log of the true product ratio `pi(y_i) / mu(y_i)`: NOT divided by the
    length (that is GSPO's geometric mean). With TIS log-weights the sum also
    carries `old/sampler`, so `exp(s_i)` is `pi / pi_sampler`.
    """
    valid_BxT = mask_BxT.astype(bool)
    log_r_BxT = inputs.clipped_log_ratio(logp_BxT, old_logp_BxT, clip)
    if tis_log_w_BxT is not None:
        log_r_BxT = log_r_BxT + tis_log_w_BxT
    s_B = jnp.where(valid_BxT, log_r_BxT, 0.0).sum(axis=-1)
    return jnp.clip(s_B, -clip, clip)


def vespo_log_kernel(
    log_w: jax.Array, k: jax.Array | float, lam: jax.Array | float
) -> jax.Array:
    """`log phi(W) = lam + k log(max(W, 1e-8)) - lam W`, from `log W`.

    `phi(W) = W^k exp(lam (1 - W))`: a Gamma-shaped kernel with `phi(1) = 1`,
    peak at `W = k / lam`, and a tail that decays like `exp(-lam W)`.
    """
    return lam + k * jnp.maximum(log_w, _LOG_WEIGHT_FLOOR) - lam * jnp.exp(log_w)


def vespo_kernel(
    w: jax.Array, k: jax.Array | float, lam: jax.Array | float
) -> jax.Array:
    """`phi(W) = W^k exp(lam (1 - W))`, evaluated in log space; NaN/inf -> 0."""
    w = jnp.asarray(w, jnp.promote_types(jnp.result_type(w), jnp.float32))
    phi = jnp.exp(vespo_log_kernel(jnp.log(jnp.maximum(w, 1e-30)), k, lam))
    return jnp.where(jnp.isfinite(phi), phi, 0.0)


def effective_sample_size(log_w_B: jax.Array, valid_B: jax.Array) -> jax.Array:
    """Normalised ESS `(sum W)^2 / (n sum W^2)` over valid rows, in (0, 1].

    1 means uniform weights; 1/n means one row carries all the weight. Computed
    from log-weights shifted by their maximum, so large weights do not overflow.
    """
    valid_B = valid_B.astype(bool)
    shift = jnp.max(jnp.where(valid_B, log_w_B, -jnp.inf))
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    w_B = jnp.where(valid_B, jnp.exp(log_w_B - shift), 0.0)
    n = valid_B.sum()
    denominator = n * jnp.sum(w_B**2)
    return jnp.where(
        n > 0, jnp.sum(w_B) ** 2 / jnp.where(n > 0, denominator, 1.0), 0.0
    )


def vespo(
    logp_BxT: jax.Array,
    old_logp_BxT: jax.Array,
    adv_B: jax.Array,
    mask_BxT: jax.Array,
    cfg: LossConfig = _DEFAULT_CFG,
    sampler_logp_BxT: jax.Array | None = None,
) -> tuple[reduce.Weighted, dict[str, jax.Array]]:
    """VESPO: REINFORCE reweighted by a closed-form kernel of the sequence weight.

    Shen et al., "VESPO: Variational Sequence-Level Soft Policy Optimization
    for Stable Off-Policy LLM Training" (2026). Per sequence i:

      s_i   = clip(sum_t m_t clip(logp_t - old_logp_t, -20, 20), -20, 20)
              (+ sum_t m_t log w_t with token TIS, so W = pi / pi_sampler)
      W_i   = exp(sg[s_i])
      (k, lam) = (k_pos, lam_pos) if A_i >= 0 else (k_neg, lam_neg)
      phi_i = sg[W^k exp(lam (1 - W))]   (log space; NaN/inf -> 0)
      l_t   = -phi_i A_i logp_t

    Gradient flows only through `logp`; at `W = 1` this is REINFORCE. The
    kernel keeps stale data (many optimizer steps per rollout batch, or fully
    asynchronous rollout) from blowing up the update without length
    normalisation. Only token-level TIS composes with it: a sequence weight
    broadcast over tokens would be raised to the power |y|.

    Returns:
      `(Weighted, aux)`; aux holds log-W and phi means split by advantage sign,
      the fraction of rows with `A >= 0`, and the normalised ESS of W.
    """
    x = inputs.prepare(logp_BxT, old_logp_BxT, adv_B, mask_BxT, sampler_logp_BxT)
    mask_BxT, tis_log_w_BxT, aux = correct_mismatch(x, cfg)
    s_B = jax.lax.stop_gradient(
        sequence_log_weight(
            x.logp_BxT, x.old_logp_BxT, mask_BxT, cfg.log_ratio_clip, tis_log_w_BxT
        )
    )
    positive_B = x.adv_B >= 0
    k_B = jnp.where(positive_B, cfg.vespo_k_pos, cfg.vespo_k_neg)
    lam_B = jnp.where(positive_B, cfg.vespo_lam_pos, cfg.vespo_lam_neg)
    phi_B = jnp.exp(vespo_log_kernel(s_B, k_B, lam_B))
    phi_B = jax.lax.stop_gradient(jnp.where(jnp.isfinite(phi_B), phi_B, 0.0))

    loss_BxT = -(phi_B * x.adv_B)[:, None] * x.logp_BxT
    has_tokens_B = mask_BxT.any(axis=-1)
    pos_rows_B = has_tokens_B & positive_B
    neg_rows_B = has_tokens_B & ~positive_B
    aux |= {
        "log_w_mean": reduce.masked_mean(s_B, has_tokens_B),
        "log_w_pos_mean": reduce.masked_mean(s_B, pos_rows_B),
        "log_w_neg_mean": reduce.masked_mean(s_B, neg_rows_B),
        "phi_pos_mean": reduce.masked_mean(phi_B, pos_rows_B),
        "phi_neg_mean": reduce.masked_mean(phi_B, neg_rows_B),
        "pos_frac": reduce.masked_mean(positive_B, has_tokens_B),
        "ess": effective_sample_size(s_B, has_tokens_B),
    }
    return reduce.aggregate(loss_BxT, mask_BxT, cfg.agg), aux
