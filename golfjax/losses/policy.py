"""On-policy policy-gradient losses: PPO clip, GSPO, CISPO, SAPO, REINFORCE.

Shapes: N rows (sequences), T padded response tokens.

Every loss has the signature of `golfjax.losses.LOSSES`:

    fn(logp_NxT, old_logp_NxT, adv_N, mask_NxT, cfg, sampler_logp_NxT=None)
        -> (Weighted(sum, count), aux)

and is a pure function of arrays (never of the model). `cfg.agg` left at
"loss-default" is resolved per loss (`LossConfig.for_loss`). Token ratios are
`rho_t = exp(clip(logp_t - old_logp_t, -20, 20))`. With `cfg.tis` the token loss
is multiplied by the detached train/inference weight; with `cfg.mis` rejected
tokens are masked out (see `importance.correct_mismatch`). `aux` holds
diagnostics as `Weighted` means (`reduce.weighted_mean`, so that micro-batches
and batch parts add up exactly): `approx_kl` (the k3 estimator of
KL(old || new)) for all, plus the clip fractions of the clipped objectives.
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
Aux = dict[str, reduce.Weighted]
# (sanitised inputs, mask after MIS, cfg) -> (per-token loss, aux)
TokenLoss = Callable[
    [inputs.PolicyInputs, jax.Array, LossConfig], tuple[jax.Array, Aux]
]


def _run(
    name: str,
    token_loss: TokenLoss,
    logp_NxT: jax.Array,
    old_logp_NxT: jax.Array,
    adv_N: jax.Array,
    mask_NxT: jax.Array,
    cfg: LossConfig,
    sampler_logp_NxT: jax.Array | None,
) -> tuple[reduce.Weighted, Aux]:
    """The steps shared by every token-level policy loss `name`."""
    cfg = cfg.for_loss(name)
    x = inputs.prepare(logp_NxT, old_logp_NxT, adv_N, mask_NxT, sampler_logp_NxT)
    mask_NxT, tis_log_w_NxT, aux = importance.correct_mismatch(x, cfg)
    loss_NxT, loss_aux = token_loss(x, mask_NxT, cfg)
    if tis_log_w_NxT is not None:
        loss_NxT = loss_NxT * jnp.exp(tis_log_w_NxT)
    log_r_NxT = inputs.clipped_log_ratio(
        x.logp_NxT, x.old_logp_NxT, cfg.log_ratio_clip
    )
    # k3 = (r - 1) - log r with r = pi/old: unbiased for KL(old || pi) under
    # old's samples, and never negative.
    k3_NxT = jnp.expm1(log_r_NxT) - log_r_NxT
    aux |= loss_aux
    aux["approx_kl"] = reduce.weighted_mean(jax.lax.stop_gradient(k3_NxT), mask_NxT)
    return reduce.aggregate(loss_NxT, mask_NxT, cfg.agg), aux


def _clipped_surrogate(
    ratio_NxT: jax.Array,
    adv_N: jax.Array,
    mask_NxT: jax.Array,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None,
) -> tuple[jax.Array, Aux]:
    """`max(-A r, -A clip(r, 1-eps_low, 1+eps_high))`, dual-clipped for A < 0."""
    adv_Nx1 = adv_N[:, None]
    unclipped_NxT = -adv_Nx1 * ratio_NxT
    clipped_NxT = -adv_Nx1 * jnp.clip(ratio_NxT, 1.0 - eps_low, 1.0 + eps_high)
    loss_NxT = jnp.maximum(unclipped_NxT, clipped_NxT)
    aux = {"clip_frac": reduce.weighted_mean(clipped_NxT > unclipped_NxT, mask_NxT)}
    if dual_clip is not None:
        # Ye et al. 2020 ("Mastering Complex Control in MOBA Games"): with A < 0
        # an enormous ratio would otherwise give an unbounded loss.
        bound_NxT = -adv_Nx1 * dual_clip
        dual_NxT = (adv_Nx1 < 0) & (loss_NxT > bound_NxT)
        loss_NxT = jnp.where(dual_NxT, bound_NxT, loss_NxT)
        aux["dual_clip_frac"] = reduce.weighted_mean(dual_NxT, mask_NxT)
    return loss_NxT, aux


def _ppo_clip_tokens(
    x: inputs.PolicyInputs, mask_NxT: jax.Array, cfg: LossConfig
) -> tuple[jax.Array, Aux]:
    rho_NxT = jnp.exp(
        inputs.clipped_log_ratio(x.logp_NxT, x.old_logp_NxT, cfg.log_ratio_clip)
    )
    return _clipped_surrogate(
        rho_NxT, x.adv_N, mask_NxT, cfg.eps_low, cfg.eps_high, cfg.dual_clip
    )


def ppo_clip(
    logp_NxT: jax.Array,
    old_logp_NxT: jax.Array,
    adv_N: jax.Array,
    mask_NxT: jax.Array,
    cfg: LossConfig = _DEFAULT_CFG,
    sampler_logp_NxT: jax.Array | None = None,
) -> tuple[reduce.Weighted, Aux]:
    """PPO's clipped surrogate, as GRPO and DAPO use it.

    Schulman et al. 2017 (PPO); Shao et al. 2024 (GRPO); Yu et al. 2025 (DAPO's
    clip-higher, `eps_high = 0.28`):

      l_t = max(-A rho_t, -A clip(rho_t, 1 - eps_low, 1 + eps_high))
      l_t = min(l_t, -A c)          for A < 0 (dual clip, c = cfg.dual_clip)

    aux: `clip_frac`, `dual_clip_frac`, `approx_kl`.
    """
    return _run(
        "ppo_clip", _ppo_clip_tokens, logp_NxT, old_logp_NxT, adv_N, mask_NxT, cfg,
        sampler_logp_NxT,
    )


def _gspo_tokens(
    x: inputs.PolicyInputs, mask_NxT: jax.Array, cfg: LossConfig
) -> tuple[jax.Array, Aux]:
    lengths_N = jnp.maximum(mask_NxT.sum(axis=-1), 1)
    log_r_NxT = jnp.where(mask_NxT, x.logp_NxT - x.old_logp_NxT, 0.0)
    log_s_N = jnp.clip(
        log_r_NxT.sum(axis=-1) / lengths_N, -cfg.log_ratio_clip, cfg.log_ratio_clip
    )
    # Token form: the value of every token's ratio is the sequence's s_i, while
    # the gradient of token t flows only through its own logp_t.
    log_s_NxT = (
        jax.lax.stop_gradient(log_s_N)[:, None]
        + x.logp_NxT
        - jax.lax.stop_gradient(x.logp_NxT)
    )
    # No dual clip: verl's compute_policy_loss_gspo and TRL's sequence-level
    # importance sampling apply none (docs/algorithms.md#gspo).
    return _clipped_surrogate(
        jnp.exp(log_s_NxT), x.adv_N, mask_NxT, cfg.gspo_eps_low,
        cfg.gspo_eps_high, dual_clip=None,
    )


def gspo(
    logp_NxT: jax.Array,
    old_logp_NxT: jax.Array,
    adv_N: jax.Array,
    mask_NxT: jax.Array,
    cfg: LossConfig = _DEFAULT_CFG,
    sampler_logp_NxT: jax.Array | None = None,
) -> tuple[reduce.Weighted, Aux]:
    """GSPO: the clipped surrogate on the length-normalised sequence ratio.

    Zheng et al. 2025, "Group Sequence Policy Optimization":

      s_i      = exp(sum_t m_t (logp_t - old_logp_t) / |y_i|)
      log s_it = sg[log s_i] + logp_t - sg[logp_t]
      l_t      = the PPO clip of `ppo_clip` on s_it, with
                 (cfg.gspo_eps_low, cfg.gspo_eps_high) = (3e-4, 4e-4) by default,
                 and no dual clip.

    Aggregated `seq-mean-token-mean` by default, as in verl and TRL; under
    that mode the token form's gradient is exactly the sequence-level GSPO
    gradient `-A s_i grad (1/|y_i|) sum_t logp_t`. See docs/algorithms.md#gspo.
    aux: `clip_frac`, `approx_kl`.
    """
    return _run(
        "gspo", _gspo_tokens, logp_NxT, old_logp_NxT, adv_N, mask_NxT, cfg,
        sampler_logp_NxT,
    )


def _cispo_tokens(
    x: inputs.PolicyInputs, mask_NxT: jax.Array, cfg: LossConfig
) -> tuple[jax.Array, Aux]:
    rho_NxT = jnp.exp(
        inputs.clipped_log_ratio(x.logp_NxT, x.old_logp_NxT, cfg.log_ratio_clip)
    )
    # Clipped from above only: no token's weight is raised, and none dropped.
    weight_NxT = jax.lax.stop_gradient(jnp.minimum(rho_NxT, cfg.cispo_max_weight))
    loss_NxT = -weight_NxT * x.adv_N[:, None] * x.logp_NxT
    clipped_NxT = rho_NxT > cfg.cispo_max_weight
    return loss_NxT, {"clip_frac": reduce.weighted_mean(clipped_NxT, mask_NxT)}


def cispo(
    logp_NxT: jax.Array,
    old_logp_NxT: jax.Array,
    adv_N: jax.Array,
    mask_NxT: jax.Array,
    cfg: LossConfig = _DEFAULT_CFG,
    sampler_logp_NxT: jax.Array | None = None,
) -> tuple[reduce.Weighted, Aux]:
    """CISPO: REINFORCE weighted by a detached importance ratio, capped above.

    MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with
    Lightning Attention" (arXiv:2506.13585):

      l_t = -sg[min(rho_t, cfg.cispo_max_weight)] A logp_t

    The paper's lower bound is left open, as in TRL (`loss_type="cispo"`,
    `epsilon_high` the cap, 5.0 recommended) and verl's example script; see
    docs/algorithms.md#cispo. Unlike PPO, no token's gradient is ever
    dropped; only its weight is bounded.
    aux: `clip_frac` (ratios above the cap), `approx_kl`.
    """
    return _run(
        "cispo", _cispo_tokens, logp_NxT, old_logp_NxT, adv_N, mask_NxT, cfg,
        sampler_logp_NxT,
    )


def _sapo_tokens(
    x: inputs.PolicyInputs, mask_NxT: jax.Array, cfg: LossConfig
) -> tuple[jax.Array, Aux]:
    rho_NxT = jnp.exp(
        inputs.clipped_log_ratio(x.logp_NxT, x.old_logp_NxT, cfg.log_ratio_clip)
    )
    tau_Nx1 = jnp.where(x.adv_N > 0, cfg.sapo_tau_pos, cfg.sapo_tau_neg)[:, None]
    gate_NxT = jax.nn.sigmoid(tau_Nx1 * (rho_NxT - 1.0)) * (4.0 / tau_Nx1)
    loss_NxT = -gate_NxT * x.adv_N[:, None]
    return loss_NxT, {}


def sapo(
    logp_NxT: jax.Array,
    old_logp_NxT: jax.Array,
    adv_N: jax.Array,
    mask_NxT: jax.Array,
    cfg: LossConfig = _DEFAULT_CFG,
    sampler_logp_NxT: jax.Array | None = None,
) -> tuple[reduce.Weighted, Aux]:
    """SAPO: a smooth sigmoid gate in place of the hard clip.

    Qwen team 2025, "Soft Adaptive Policy Optimization" (arXiv:2511.20347):

      g_t = sigmoid(tau (rho_t - 1)) 4 / tau,  tau = tau_pos if A > 0 else tau_neg
      l_t = -g_t A

    Aggregated `seq-mean-token-mean` by default, as in verl and TRL (see
    docs/algorithms.md#sapo).
    The gradient is `-A 4 s(1-s) rho grad logp` with `s` the sigmoid: exactly
    REINFORCE at `rho = 1`, decaying smoothly as the ratio leaves 1.
    aux: `approx_kl`.
    """
    return _run(
        "sapo", _sapo_tokens, logp_NxT, old_logp_NxT, adv_N, mask_NxT, cfg,
        sampler_logp_NxT,
    )


def _reinforce_tokens(
    x: inputs.PolicyInputs, mask_NxT: jax.Array, cfg: LossConfig
) -> tuple[jax.Array, Aux]:
    del mask_NxT, cfg  # Same loss whatever the ratio.
    return -x.adv_N[:, None] * x.logp_NxT, {}


def reinforce(
    logp_NxT: jax.Array,
    old_logp_NxT: jax.Array,
    adv_N: jax.Array,
    mask_NxT: jax.Array,
    cfg: LossConfig = _DEFAULT_CFG,
    sampler_logp_NxT: jax.Array | None = None,
) -> tuple[reduce.Weighted, Aux]:
    """REINFORCE (Williams 1992): `l_t = -A logp_t`; `old_logp` only feeds aux.

    aux: `approx_kl`.
    """
    return _run(
        "reinforce", _reinforce_tokens, logp_NxT, old_logp_NxT, adv_N, mask_NxT, cfg,
        sampler_logp_NxT,
    )
