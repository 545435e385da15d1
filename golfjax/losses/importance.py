"""Importance weights: train/inference mismatch correction and the VESPO kernel.

Shapes: N rows (sequences), T padded response tokens.

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

# docs/algorithms.md#vespo: weights are floored at 1e-8 before their log is taken.
_LOG_WEIGHT_FLOOR = math.log(1e-8)
_DEFAULT_CFG = LossConfig()


def tis_log_weights(
    old_logp_NxT: jax.Array, sampler_logp_NxT: jax.Array, cap: float, clip: float
) -> jax.Array:
    """`clip(log(max(min(exp(old - sampler), cap), 1e-8)), -clip, clip)`.

    Evaluated in log space, so it neither overflows nor underflows.
    """
    log_w_NxT = jnp.minimum(old_logp_NxT - sampler_logp_NxT, math.log(cap))
    return jnp.clip(jnp.maximum(log_w_NxT, _LOG_WEIGHT_FLOOR), -clip, clip)


def tis_weights(
    old_logp_NxT: jax.Array, sampler_logp_NxT: jax.Array, cap: float = 2.0
) -> jax.Array:
    """Token TIS weights `min(exp(old_logp - sampler_logp), cap)`, detached."""
    log_w_NxT = tis_log_weights(old_logp_NxT, sampler_logp_NxT, cap, clip=20.0)
    return jax.lax.stop_gradient(jnp.exp(log_w_NxT))


def mis_mask(
    old_logp_NxT: jax.Array,
    sampler_logp_NxT: jax.Array,
    mask_NxT: jax.Array,
    cap: float = 2.0,
    level: str = "token",
) -> jax.Array:
    """The mask with rejected tokens (or sequences) removed.

    A token is kept when `1/cap <= exp(old_logp_t - sampler_logp_t) <= cap`; at
    `level="sequence"` a whole row is kept when its product ratio
    `exp(sum_t m_t (old_logp_t - sampler_logp_t))` is inside the same bounds.
    """
    valid_NxT = mask_NxT.astype(bool)
    log_ratio_NxT = jnp.where(valid_NxT, old_logp_NxT - sampler_logp_NxT, 0.0)
    bound = math.log(cap)
    if level == "token":
        return valid_NxT & (jnp.abs(log_ratio_NxT) <= bound)
    if level == "sequence":
        keep_N = jnp.abs(log_ratio_NxT.sum(axis=-1)) <= bound
        return valid_NxT & keep_N[:, None]
    raise ValueError(f"level={level!r}; expected 'token' or 'sequence'")


def correct_mismatch(
    x: inputs.PolicyInputs, cfg: LossConfig
) -> tuple[jax.Array, jax.Array | None, dict[str, reduce.Weighted]]:
    """Applies the configured MIS and computes TIS log-weights.

    Returns:
      The (possibly reduced) bool mask, the TIS log-weights (None when TIS is
      off) and diagnostics (`Weighted` means).
    """
    if (cfg.tis or cfg.mis != "none") and x.sampler_logp_NxT is None:
        raise ValueError(
            f"LossConfig(tis={cfg.tis}, mis={cfg.mis!r}) corrects the"
            " train/inference mismatch and needs sampler_logp_NxT; got None"
        )
    mask_NxT, tis_log_w_NxT, aux = x.mask_NxT, None, {}
    if cfg.mis != "none":
        mask_NxT = mis_mask(
            x.old_logp_NxT, x.sampler_logp_NxT, x.mask_NxT, cfg.mis_cap, cfg.mis
        )
        rejected = x.mask_NxT.sum() - mask_NxT.sum()
        aux["mis_reject_frac"] = reduce.Weighted(
            rejected.astype(jnp.float32), x.mask_NxT.sum().astype(jnp.float32)
        )
    if cfg.tis:
        tis_log_w_NxT = tis_log_weights(
            x.old_logp_NxT, x.sampler_logp_NxT, cfg.tis_cap, cfg.log_ratio_clip
        )
        aux["tis_weight_mean"] = reduce.weighted_mean(
            jnp.exp(tis_log_w_NxT), mask_NxT
        )
    return mask_NxT, tis_log_w_NxT, aux


def sequence_log_weight(
    logp_NxT: jax.Array,
    old_logp_NxT: jax.Array,
    mask_NxT: jax.Array,
    clip: float = 20.0,
    tis_log_w_NxT: jax.Array | None = None,
) -> jax.Array:
    """`s_i = clip(sum_t m_t clip(logp_t - old_logp_t) [+ sum_t m_t log w_t])`.

    The log of the true product ratio `pi(y_i) / mu(y_i)`: NOT divided by the
    length (that is GSPO's geometric mean). With TIS log-weights the sum also
    carries `old/sampler`, so `exp(s_i)` is `pi / pi_sampler`.
    """
    valid_NxT = mask_NxT.astype(bool)
    log_r_NxT = inputs.clipped_log_ratio(logp_NxT, old_logp_NxT, clip)
    if tis_log_w_NxT is not None:
        log_r_NxT = log_r_NxT + tis_log_w_NxT
    s_N = jnp.where(valid_NxT, log_r_NxT, 0.0).sum(axis=-1)
    return jnp.clip(s_N, -clip, clip)


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


def effective_sample_size(log_w_N: jax.Array, valid_N: jax.Array) -> jax.Array:
    """Normalised ESS `(sum W)^2 / (n sum W^2)` over valid rows, in (0, 1].

    1 means uniform weights; 1/n means one row carries all the weight. Computed
    from log-weights shifted by their maximum, so large weights do not overflow.
    """
    valid_N = valid_N.astype(bool)
    shift = jnp.max(jnp.where(valid_N, log_w_N, -jnp.inf))
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    w_N = jnp.where(valid_N, jnp.exp(log_w_N - shift), 0.0)
    n = valid_N.sum()
    denominator = n * jnp.sum(w_N**2)
    return jnp.where(
        n > 0, jnp.sum(w_N) ** 2 / jnp.where(n > 0, denominator, 1.0), 0.0
    )


def vespo(
    logp_NxT: jax.Array,
    old_logp_NxT: jax.Array,
    adv_N: jax.Array,
    mask_NxT: jax.Array,
    cfg: LossConfig = _DEFAULT_CFG,
    sampler_logp_NxT: jax.Array | None = None,
) -> tuple[reduce.Weighted, dict[str, reduce.Weighted]]:
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
      the fraction of rows with `A >= 0`, and the normalised ESS of W, each a
      `Weighted` mean over rows. The ESS is not a mean: it is that of the rows
      given here, weighted by their number, so the train step reports the
      row-weighted mean of its micro-batches' ESS (`schedule/ess` is the whole
      batch's).
    """
    cfg = cfg.for_loss("vespo")
    x = inputs.prepare(logp_NxT, old_logp_NxT, adv_N, mask_NxT, sampler_logp_NxT)
    mask_NxT, tis_log_w_NxT, aux = correct_mismatch(x, cfg)
    s_N = jax.lax.stop_gradient(
        sequence_log_weight(
            x.logp_NxT, x.old_logp_NxT, mask_NxT, cfg.log_ratio_clip, tis_log_w_NxT
        )
    )
    positive_N = x.adv_N >= 0
    k_N = jnp.where(positive_N, cfg.vespo_k_pos, cfg.vespo_k_neg)
    lam_N = jnp.where(positive_N, cfg.vespo_lam_pos, cfg.vespo_lam_neg)
    phi_N = jnp.exp(vespo_log_kernel(s_N, k_N, lam_N))
    phi_N = jax.lax.stop_gradient(jnp.where(jnp.isfinite(phi_N), phi_N, 0.0))

    loss_NxT = -(phi_N * x.adv_N)[:, None] * x.logp_NxT
    has_tokens_N = mask_NxT.any(axis=-1)
    pos_rows_N = has_tokens_N & positive_N
    neg_rows_N = has_tokens_N & ~positive_N
    rows = has_tokens_N.sum().astype(jnp.float32)
    aux |= {
        "log_w_mean": reduce.weighted_mean(s_N, has_tokens_N),
        "log_w_pos_mean": reduce.weighted_mean(s_N, pos_rows_N),
        "log_w_neg_mean": reduce.weighted_mean(s_N, neg_rows_N),
        "phi_pos_mean": reduce.weighted_mean(phi_N, pos_rows_N),
        "phi_neg_mean": reduce.weighted_mean(phi_N, neg_rows_N),
        "pos_frac": reduce.weighted_mean(positive_N, has_tokens_N),
        "ess": reduce.Weighted(effective_sample_size(s_N, has_tokens_N) * rows, rows),
    }
    return reduce.aggregate(loss_NxT, mask_NxT, cfg.agg), aux
