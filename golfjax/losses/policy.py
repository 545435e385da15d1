"""On-policy policy-gradient losses: PPO clip, GSPO, CISPO, SAPO, REINFORCE.

Shapes: B rows (sequences), T padded response tokens.

Every loss has the signature of `golfjax.losses.LOSSES`:

    fn(logp_BxT, old_logp_BxT, adv_B, mask_BxT, cfg, sampler_logp_BxT=None)
        -> (Weighted(sum, count), aux)

and is a pure function of arrays (never of the model). Token ratios are
`rho_t = exp(clip(logp_t - old_logp_t, -20, 20))`. With `cfg.tis` the token loss
is multiplied by the detached train/inference weight; with `cfg.mis` rejected
tokens are masked out (see `importance.correct_mismatch`). `aux` holds scalar
diagnostics: `approx_kl` (the k3 estimator of KL(old || new)) for all, plus the
clip fractions of the clipped objectives.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from golfjax.losses import importance
from golfjax.losses import inputs
from golfjax.losses import reduce
from golfjax.losses.config import LossConfig

_DEFAULT_CFG = LossConfig()
Aux = dict[str, jax.Array]
# (sanitised inputs, mask after MIS, cfg) -> (per-token loss, aux)
TokenLoss = Callable[
    [inputs.PolicyInputs, jax.Array, LossConfig], tuple[jax.Array, Aux]
]


def _run(
    token_loss: TokenLoss,
    logp_BxT: jax.Array,
    old_logp_BxT: jax.Array,
    adv_B: jax.Array,
    mask_BxT: jax.Array,
    cfg: LossConfig,
    sampler_logp_BxT: jax.Array | None,
) -> tuple[reduce.Weighted, Aux]:
    """The steps shared by every token-level policy loss."""
    x = inputs.prepare(logp_BxT, old_logp_BxT, adv_B, mask_BxT, sampler_logp_BxT)
    mask_BxT, tis_log_w_BxT, aux = importance.correct_mismatch(x, cfg)
    loss_BxT, loss_aux = token_loss(x, mask_BxT, cfg)
    if tis_log_w_BxT is not None:
        loss_BxT = loss_BxT * jnp.exp(tis_log_w_BxT)
    log_r_BxT = inputs.clipped_log_ratio(
        x.logp_BxT, x.old_logp_BxT, cfg.log_ratio_clip
    )
    # k3 = (r - 1) - log r with r = pi/old: unbiased for KL(old || pi) under
    # old's samples, and never negative.
    k3_BxT = jnp.expm1(log_r_BxT) - log_r_BxT
    aux |= loss_aux
    aux["approx_kl"] = reduce.masked_mean(jax.lax.stop_gradient(k3_BxT), mask_BxT)
    return reduce.aggregate(loss_BxT, mask_BxT, cfg.agg), aux


def _clipped_surrogate(
    ratio_BxT: jax.Array,
    adv_B: jax.Array,
    mask_BxT: jax.Array,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None,
) -> tuple[jax.Array, Aux]:
    """`max(-A r, -A clip(r, 1-eps_low, 1+eps_high))`, dual-clipped for A < 0."""
    adv_Bx1 = adv_B[:, None]
    unclipped_BxT = -adv_Bx1 * ratio_BxT
    clipped_BxT = -adv_Bx1 * jnp.clip(ratio_BxT, 1.0 - eps_low, 1.0 + eps_high)
    loss_BxT = jnp.maximum(unclipped_BxT, clipped_BxT)
    aux = {"clip_frac": reduce.masked_mean(clipped_BxT > unclipped_BxT, mask_BxT)}
    if dual_clip is not None:
        # Ye et al. 2020 ("Mastering Complex Control in MOBA Games"): with A < 0
        # an enormous ratio would otherwise give an unbounded loss.
        bound_BxT = -adv_Bx1 * dual_clip
        dual_BxT = (adv_Bx1 < 0) & (loss_BxT > bound_BxT)
        loss_BxT = jnp.where(dual_BxT, bound_BxT, loss_BxT)
        aux["dual_clip_frac"] = reduce.masked_mean(dual_BxT, mask_BxT)
    return loss_BxT, aux


def _ppo_clip_tokens(
    x: inputs.PolicyInputs, mask_BxT: jax.Array, cfg: LossConfig
) -> tuple[jax.Array, Aux]:
    rho_BxT = jnp.exp(
        inputs.clipped_log_ratio(x.logp_BxT, x.old_logp_BxT, cfg.log_ratio_clip)
    )
    return _clipped_surrogate(
        rho_BxT, x.adv_B, mask_BxT, cfg.eps_low, cfg.eps_high, cfg.dual_clip
    )


def ppo_clip(
    logp_BxT: jax.Array,
    old_logp_BxT: jax.Array,
    adv_B: jax.Array,
    mask_BxT: jax.Array,
    cfg: LossConfig = _DEFAULT_CFG,
    sampler_logp_BxT: jax.Array | None = None,
) -> tuple[reduce.Weighted, Aux]:
    """PPO's clipped surrogate, as GRPO and DAPO use it.

    Schulman et al. 2017 (PPO); Shao et al. 2024 (GRPO); Yu et al. 2025 (DAPO's
    clip-higher, `eps_high = 0.28`):

      l_t = max(-A rho_t, -A clip(rho_t, 1 - eps_low, 1 + eps_high))
      l_t = min(l_t, -A c)          for A < 0 (dual clip, c = cfg.dual_clip)

    aux: `clip_frac`, `dual_clip_frac`, `approx_kl`.
    """
    return _run(
        _ppo_clip_tokens, logp_BxT, old_logp_BxT, adv_B, mask_BxT, cfg,
        sampler_logp_BxT,
    )


def _gspo_tokens(
    x: inputs.PolicyInputs, mask_BxT: jax.Array, cfg: LossConfig
) -> tuple[jax.Array, Aux]:
    lengths_B = jnp.maximum(mask_BxT.sum(axis=-1), 1)
    log_r_BxT = jnp.where(mask_BxT, x.logp_BxT - x.old_logp_BxT, 0.0)
    log_s_B = jnp.clip(
        log_r_BxT.sum(axis=-1) / lengths_B, -cfg.log_ratio_clip, cfg.log_ratio_clip
    )
    # Token form: the value of every token's ratio is the sequence's s_i, while
    # the gradient of token t flows only through its own logp_t.
    log_s_BxT = (
        jax.lax.stop_gradient(log_s_B)[:, None]
        + x.logp_BxT
        - jax.lax.stop_gradient(x.logp_BxT)
    )
    return _clipped_surrogate(
        jnp.exp(log_s_BxT), x.adv_B, mask_BxT, cfg.gspo_eps_low,
        cfg.gspo_eps_high, cfg.dual_clip,
    )


def gspo(
    logp_BxT: jax.Array,
    old_logp_BxT: jax.Array,
    adv_B: jax.Array,
    mask_BxT: jax.Array,
    cfg: LossConfig = _DEFAULT_CFG,
    sampler_logp_BxT: jax.Array | None = None,
) -> tuple[reduce.Weighted, Aux]:
    """GSPO: the clipped surrogate on the length-normalised sequence ratio.

    Zheng et al. 2025, "Group Sequence Policy Optimization":

      s_i      = exp(sum_t m_t (logp_t - old_logp_t) / |y_i|)
      log s_it = sg[log s_i] + logp_t - sg[logp_t]
      l_t      = the PPO clip of `ppo_clip` on s_it, with
                 (cfg.gspo_eps_low, cfg.gspo_eps_high) = (3e-4, 4e-4) by default.

    aux: `clip_frac`, `dual_clip_frac`, `approx_kl`.
    """
    return _run(
        _gspo_tokens, logp_BxT, old_logp_BxT, adv_B, mask_BxT, cfg,
        sampler_logp_BxT,
    )


def _cispo_tokens(
    x: inputs.PolicyInputs, mask_BxT: jax.Array, cfg: LossConfig
) -> tuple[jax.Array, Aux]:
    rho_BxT = jnp.exp(
        inputs.clipped_log_ratio(x.logp_BxT, x.old_logp_BxT, cfg.log_ratio_clip)
    )
    weight_BxT = jax.lax.stop_gradient(
        jnp.clip(rho_BxT, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    )
    loss_BxT = -weight_BxT * x.adv_B[:, None] * x.logp_BxT
    clipped_BxT = (rho_BxT < 1.0 - cfg.eps_low) | (rho_BxT > 1.0 + cfg.eps_high)
    return loss_BxT, {"clip_frac": reduce.masked_mean(clipped_BxT, mask_BxT)}


def cispo(
    logp_BxT: jax.Array,
    old_logp_BxT: jax.Array,
    adv_B: jax.Array,
    mask_BxT: jax.Array,
    cfg: LossConfig = _DEFAULT_CFG,
    sampler_logp_BxT: jax.Array | None = None,
) -> tuple[reduce.Weighted, Aux]:
    """CISPO: REINFORCE weighted by a clipped, detached importance ratio.

    MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with
    Lightning Attention":

      l_t = -sg[clip(rho_t, 1 - eps_low, 1 + eps_high)] A logp_t

    Unlike PPO, no token's gradient is ever dropped; only its weight is bounded.
    aux: `clip_frac` (ratios outside the range), `approx_kl`.
    """
    return _run(
        _cispo_tokens, logp_BxT, old_logp_BxT, adv_B, mask_BxT, cfg,
        sampler_logp_BxT,
    )


def _sapo_tokens(
    x: inputs.PolicyInputs, mask_BxT: jax.Array, cfg: LossConfig
) -> tuple[jax.Array, Aux]:
    rho_BxT = jnp.exp(
        inputs.clipped_log_ratio(x.logp_BxT, x.old_logp_BxT, cfg.log_ratio_clip)
    )
    tau_Bx1 = jnp.where(x.adv_B > 0, cfg.sapo_tau_pos, cfg.sapo_tau_neg)[:, None]
    gate_BxT = jax.nn.sigmoid(tau_Bx1 * (rho_BxT - 1.0)) * (4.0 / tau_Bx1)
    loss_BxT = -gate_BxT * x.adv_B[:, None]
    return loss_BxT, {}


def sapo(
    logp_BxT: jax.Array,
    old_logp_BxT: jax.Array,
    adv_B: jax.Array,
    mask_BxT: jax.Array,
    cfg: LossConfig = _DEFAULT_CFG,
    sampler_logp_BxT: jax.Array | None = None,
) -> tuple[reduce.Weighted, Aux]:
    """SAPO: a smooth sigmoid gate in place of the hard clip.

    Qwen team 2025, "Soft Adaptive Policy Optimization":

      g_t = sigmoid(tau (rho_t - 1)) 4 / tau,  tau = tau_pos if A > 0 else tau_neg
      l_t = -g_t A

    The gradient is `-A 4 s(1-s) rho grad logp` with `s` the sigmoid: exactly
    REINFORCE at `rho = 1`, decaying smoothly as the ratio leaves 1.
    aux: `approx_kl`.
    """
    return _run(
        _sapo_tokens, logp_BxT, old_logp_BxT, adv_B, mask_BxT, cfg,
        sampler_logp_BxT,
    )


def _reinforce_tokens(
    x: inputs.PolicyInputs, mask_BxT: jax.Array, cfg: LossConfig
) -> tuple[jax.Array, Aux]:
    del mask_BxT, cfg  # Same loss whatever the ratio.
    return -x.adv_B[:, None] * x.logp_BxT, {}


def reinforce(
    logp_BxT: jax.Array,
    old_logp_BxT: jax.Array,
    adv_B: jax.Array,
    mask_BxT: jax.Array,
    cfg: LossConfig = _DEFAULT_CFG,
    sampler_logp_BxT: jax.Array | None = None,
) -> tuple[reduce.Weighted, Aux]:
    """REINFORCE (Williams 1992): `l_t = -A logp_t`; `old_logp` only feeds aux.

    aux: `approx_kl`.
    """
    return _run(
        _reinforce_tokens, logp_BxT, old_logp_BxT, adv_B, mask_BxT, cfg,
        sampler_logp_BxT,
    )
