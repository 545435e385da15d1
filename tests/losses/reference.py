"""Float64 NumPy re-derivation of every loss: value and gradient w.r.t. logp.

Written from docs/algorithms.md without importing golfjax, so the tests compare two
independent derivations. Each `*_tokens` function returns the per-token loss
`l` and its analytic derivative `dl/dlogp` (with the stop-gradients of the
specification applied by hand); `aggregate` returns the aggregated value and
the weights `dL/dl_t`, so `dL/dlogp = weights * dl`.
"""

from __future__ import annotations

import numpy as np

CLIP = 20.0


def _ratio(logp, old):
    """rho = exp(clip(logp - old)), and d rho / d logp (0 where clipped)."""
    d = logp - old
    rho = np.exp(np.clip(d, -CLIP, CLIP))
    return rho, np.where(np.abs(d) < CLIP, rho, 0.0)


def _surrogate(ratio, dratio, adv, eps_low, eps_high, dual_clip):
    a = adv[:, None]
    unclipped, d_unclipped = -a * ratio, -a * dratio
    inside = (ratio > 1 - eps_low) & (ratio < 1 + eps_high)
    clipped = -a * np.clip(ratio, 1 - eps_low, 1 + eps_high)
    d_clipped = np.where(inside, -a * dratio, 0.0)
    loss = np.maximum(unclipped, clipped)
    grad = np.where(
        unclipped > clipped, d_unclipped,
        np.where(clipped > unclipped, d_clipped, 0.5 * (d_unclipped + d_clipped)),
    )
    if dual_clip is not None:
        bound = -a * dual_clip
        dual = (a < 0) & (loss > bound)
        loss = np.where(dual, bound, loss)
        grad = np.where(dual, 0.0, grad)
    return loss, grad


def ppo_clip_tokens(logp, old, adv, mask, eps_low=0.2, eps_high=0.2, dual_clip=3.0):
    del mask
    rho, drho = _ratio(logp, old)
    return _surrogate(rho, drho, adv, eps_low, eps_high, dual_clip)


def gspo_tokens(logp, old, adv, mask, eps_low=3e-4, eps_high=4e-4, dual_clip=None):
    """GSPO has no dual clip (verl, TRL); `dual_clip` only for tests that add one."""
    length = np.maximum(mask.sum(-1), 1)
    log_s = np.clip((mask * (logp - old)).sum(-1) / length, -CLIP, CLIP)
    s = np.broadcast_to(np.exp(log_s)[:, None], logp.shape)
    # Token form: d s_it / d logp_t = s_it (the sequence part is detached).
    return _surrogate(s, s, adv, eps_low, eps_high, dual_clip)


def cispo_tokens(logp, old, adv, mask, max_weight=5.0):
    """The weight is the ratio capped from above only (TRL: epsilon_high = 5)."""
    del mask
    rho, _ = _ratio(logp, old)
    weight = np.minimum(rho, max_weight)
    return -weight * adv[:, None] * logp, -weight * adv[:, None]


def sapo_tokens(logp, old, adv, mask, tau_pos=1.0, tau_neg=1.05):
    del mask
    rho, drho = _ratio(logp, old)
    tau = np.where(adv > 0, tau_pos, tau_neg)[:, None]
    gate = 1.0 / (1.0 + np.exp(-tau * (rho - 1.0)))
    a = adv[:, None]
    return -a * gate * 4.0 / tau, -a * 4.0 * gate * (1.0 - gate) * drho


def reinforce_tokens(logp, old, adv, mask):
    del old, mask
    return -adv[:, None] * logp, np.broadcast_to(-adv[:, None], logp.shape)


def phi(w, k, lam):
    """VESPO kernel phi(W) = max(W, 1e-8)^k exp(lam (1 - W)), direct form."""
    return np.maximum(w, 1e-8) ** k * np.exp(lam * (1.0 - w))


def vespo_tokens(logp, old, adv, mask, k_pos=2.0, lam_pos=3.0, k_neg=3.0,
                 lam_neg=2.0, tis_log_w=None):
    log_r = np.clip(logp - old, -CLIP, CLIP)
    if tis_log_w is not None:
        log_r = log_r + tis_log_w
    s = np.clip((mask * log_r).sum(-1), -CLIP, CLIP)
    pos = adv >= 0
    weight = phi(np.exp(s), np.where(pos, k_pos, k_neg), np.where(pos, lam_pos, lam_neg))
    a = (weight * adv)[:, None]
    return -a * logp, np.broadcast_to(-a, logp.shape)


def shaping_tokens(logp, old, adv, mask, gamma=0.1):
    del old, mask
    p = np.exp(logp)
    a = adv[:, None]
    return -a * p / (p + gamma), -a * gamma * p / (p + gamma) ** 2


def truncated_is_tokens(logp, old, adv, mask, cap=2.0):
    del mask
    rho, _ = _ratio(logp, old)
    w = np.minimum(rho, cap)
    return -w * adv[:, None] * logp, -w * adv[:, None]


def tis_weights(old, sampler, cap=2.0):
    return np.minimum(np.exp(old - sampler), cap)


def aggregate(loss, mask, mode):
    """(value, dValue/dloss) of one aggregation mode."""
    mask = mask.astype(np.float64)
    tokens = mask.sum(-1)
    rows = (tokens > 0).sum()
    masked = np.where(mask > 0, loss, 0.0)
    if mode == "token-mean":
        total = mask.sum()
        return (masked.sum() / total if total else 0.0), mask / max(total, 1)
    if rows == 0:
        return 0.0, np.zeros_like(mask)
    if mode == "seq-mean-token-mean":
        per_token = mask / np.maximum(tokens, 1)[:, None]
    elif mode == "seq-mean-token-sum":
        per_token = mask
    elif mode == "seq-mean-token-sum-norm":
        per_token = mask / loss.shape[-1]
    else:
        raise ValueError(mode)
    weights = per_token / rows
    return float((weights * masked).sum()), weights


# Each loss's aggregation when LossConfig.agg is left at its default (verl's
# compute_policy_loss_gspo/_sapo and TRL's "grpo"/"sapo" loss types for GSPO
# and SAPO; token-mean for the rest).
DEFAULT_AGG = {
    "ppo_clip": "token-mean",
    "gspo": "seq-mean-token-mean",
    "cispo": "token-mean",
    "sapo": "seq-mean-token-mean",
    "reinforce": "token-mean",
    "vespo": "token-mean",
    "shaping": "token-mean",
    "truncated_is": "token-mean",
}

TOKEN_LOSSES = {
    "ppo_clip": ppo_clip_tokens,
    "gspo": gspo_tokens,
    "cispo": cispo_tokens,
    "sapo": sapo_tokens,
    "reinforce": reinforce_tokens,
    "vespo": vespo_tokens,
}
OFF_POLICY_TOKEN_LOSSES = {
    "shaping": shaping_tokens,
    "truncated_is": truncated_is_tokens,
}


def loss_and_grad(token_fn, logp, old, adv, mask, mode, **kwargs):
    """Aggregated value and dL/dlogp, in float64."""
    args = [np.asarray(a, np.float64) for a in (logp, old, adv, mask)]
    loss, dloss = token_fn(*args, **kwargs)
    value, weights = aggregate(loss, args[3], mode)
    return value, weights * dloss


def random_batch(seed: int, batch: int = 6, length: int = 9, spread: float = 0.3):
    """float32 (logp, old_logp, adv, mask) with ragged rows and one empty row.

    `old_logp = logp + N(0, spread)` so ratios fall both inside and outside the
    PPO range; row 1 is entirely masked and its padded values are garbage.
    """
    rng = np.random.default_rng(seed)
    logp = np.log(rng.uniform(0.05, 1.0, (batch, length)))
    old = logp + rng.normal(0.0, spread, (batch, length))
    adv = rng.normal(0.0, 1.0, (batch,))
    lengths = rng.integers(1, length + 1, (batch,))
    lengths[1] = 0
    mask = np.arange(length)[None, :] < lengths[:, None]
    # Garbage at padding: must never reach a value or a gradient.
    logp = np.where(mask, logp, 7.0)
    old = np.where(mask, old, -1e4)
    return tuple(a.astype(np.float32) for a in (logp, old, adv)) + (mask,)
