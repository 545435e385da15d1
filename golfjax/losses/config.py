"""`LossConfig`: every loss hyperparameter, with the defaults of docs/algorithms.md.

One frozen (hashable, so jit-static) dataclass serves every entry of `LOSSES`;
each loss reads the fields it needs. Defaults live here and nowhere else,
including the one default that differs by loss, the aggregation
(`AGG_BY_LOSS`, applied by `LossConfig.for_loss`). Validation runs at
construction, so a bad value fails before any computation with a message
naming the field and what it accepts.
"""

from __future__ import annotations

import dataclasses

from golfjax.losses import reduce

MISMATCH_LEVELS = ("none", "token", "sequence")

# `agg`'s default: each loss aggregates as its reference implementation does
# (docs/algorithms.md#aggregation). A name absent from `AGG_BY_LOSS`
# aggregates with `token-mean`.
LOSS_DEFAULT_AGG = reduce.LOSS_DEFAULT_AGG
AGG_BY_LOSS: dict[str, str] = {
    # verl's compute_policy_loss_gspo and _sapo aggregate seq-mean-token-mean
    # whatever loss_agg_mode says; TRL's GRPOTrainer does the same for
    # loss_type="sapo", and for GSPO (importance_sampling_level="sequence")
    # with loss_type="grpo", the setting TRL names as the GSPO paper's.
    "gspo": reduce.SEQ_MEAN_TOKEN_MEAN,
    "sapo": reduce.SEQ_MEAN_TOKEN_MEAN,
}


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Hyperparameters of the policy, importance-kernel and refinement losses.

    Attributes:
      agg: aggregation mode, one of `reduce.AGGREGATIONS`, or
        `LOSS_DEFAULT_AGG` ("loss-default"): the loss's own default from
        `AGG_BY_LOSS` (`gspo`, `sapo`: seq-mean-token-mean; every other loss:
        token-mean). A loss resolves it with `for_loss`; the train step must
        resolve it once with its on-policy loss, so that the off-policy, KL and
        entropy terms aggregate the same way.
      log_ratio_clip: |logp - old_logp| is clipped to this before `exp`
        (docs/algorithms.md#shared: 20), so ratios stay finite for any input.
      eps_low, eps_high: PPO trust region `[1 - eps_low, 1 + eps_high]`, used by
        `ppo_clip` (DAPO's clip-higher: `eps_high = 0.28`).
      dual_clip: the dual-clip constant `c` bounding the loss of negative-
        advantage tokens of `ppo_clip` at `-A c` (GOLF uses 10); `None`
        disables it. GSPO has none (verl, TRL).
      gspo_eps_low, gspo_eps_high: GSPO's trust region on the sequence ratio.
        The GSPO paper uses 3e-4 / 4e-4: a sequence ratio lives far closer to 1
        than a token ratio, so the token-level 0.2 would never clip.
      cispo_max_weight: CISPO's importance weight is clipped from above at
        this value and never from below: TRL's `epsilon_high` for
        `loss_type="cispo"` (ScaleRL's epsilon_max), 5.0 as TRL recommends.
        verl's example script bounds it at 1 + 0.2 = 1.2.
      sapo_tau_pos, sapo_tau_neg: SAPO's gate temperatures for A > 0 and A <= 0.
      vespo_k_pos, vespo_lam_pos, vespo_k_neg, vespo_lam_neg: VESPO kernel
        `phi(W) = W^k exp(lam (1 - W))` shape for A >= 0 and A < 0.
      tis: multiply each token's loss by the truncated train/inference weight
        `min(exp(old_logp - sampler_logp), tis_cap)` (VESPO instead folds it into
        its sequence weight `W`).
      tis_cap: the truncation `C` of `tis`.
      mis: masked importance sampling: reject (mask out) tokens (`"token"`) or
        whole sequences (`"sequence"`) whose train/inference ratio is outside
        `[1 / mis_cap, mis_cap]`; `"none"` disables it.
      mis_cap: the bound `C` of `mis`.
      shaping_gamma: GOLF policy-shaping `f(p) = p / (p + gamma)` for injected
        (off-policy) tokens.
      off_policy_is_cap: truncation of the importance-corrected off-policy term
        (policy under the original prompt over the policy under the refinement
        prompt), an option beyond the GOLF paper.
    """

    agg: str = LOSS_DEFAULT_AGG
    log_ratio_clip: float = 20.0
    # PPO clip.
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = 3.0
    # GSPO.
    gspo_eps_low: float = 3e-4
    gspo_eps_high: float = 4e-4
    # CISPO.
    cispo_max_weight: float = 5.0
    # SAPO.
    sapo_tau_pos: float = 1.0
    sapo_tau_neg: float = 1.05
    # VESPO (released defaults).
    vespo_k_pos: float = 2.0
    vespo_lam_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lam_neg: float = 2.0
    # Train/inference mismatch correction; both off by default.
    tis: bool = False
    tis_cap: float = 2.0
    mis: str = "none"
    mis_cap: float = 2.0
    # GOLF off-policy term.
    shaping_gamma: float = 0.1
    off_policy_is_cap: float = 2.0

    def __post_init__(self) -> None:
        reduce.check_aggregation(self.agg, also=LOSS_DEFAULT_AGG)
        _check(self, "log_ratio_clip", self.log_ratio_clip > 0, "> 0")
        for name in ("eps_low", "eps_high", "gspo_eps_low", "gspo_eps_high"):
            _check(self, name, getattr(self, name) >= 0, ">= 0")
        # A lower bound of 1 - eps <= 0 would let the clip admit ratio 0.
        for name in ("eps_low", "gspo_eps_low"):
            _check(self, name, getattr(self, name) < 1, "< 1")
        if self.dual_clip is not None:
            _check(self, "dual_clip", self.dual_clip > 1, "> 1 or None")
        # Below 1 the cap would scale down on-policy tokens too (ratio 1): a
        # smaller learning rate, not a bound on stale tokens.
        _check(self, "cispo_max_weight", self.cispo_max_weight >= 1, ">= 1")
        for name in ("sapo_tau_pos", "sapo_tau_neg"):
            _check(self, name, getattr(self, name) > 0, "> 0")
        for name in ("vespo_k_pos", "vespo_k_neg"):
            _check(self, name, getattr(self, name) >= 0, ">= 0")
        # docs/algorithms.md#vespo: lam >= 1e-4; lam <= 0 has no maximum (the kernel grows
        # without bound in W), so it is rejected rather than clamped.
        for name in ("vespo_lam_pos", "vespo_lam_neg"):
            _check(self, name, getattr(self, name) >= 1e-4, ">= 1e-4")
        _check(self, "tis_cap", self.tis_cap > 0, "> 0")
        if self.mis not in MISMATCH_LEVELS:
            raise ValueError(
                f"LossConfig.mis={self.mis!r}; expected one of"
                f" {', '.join(MISMATCH_LEVELS)}"
            )
        _check(self, "mis_cap", self.mis_cap > 1, "> 1")
        _check(self, "shaping_gamma", self.shaping_gamma > 0, "> 0")
        _check(self, "off_policy_is_cap", self.off_policy_is_cap > 0, "> 0")

    def for_loss(self, name: str) -> LossConfig:
        """This config with `agg` resolved for the loss `name`.

        An explicit `agg` is kept; `LOSS_DEFAULT_AGG` becomes
        `AGG_BY_LOSS.get(name, "token-mean")`.
        """
        if self.agg != LOSS_DEFAULT_AGG:
            return self
        return dataclasses.replace(self, agg=AGG_BY_LOSS.get(name, reduce.TOKEN_MEAN))


def _check(cfg: LossConfig, name: str, ok: bool, expected: str) -> None:
    # NaN fails every comparison, so it lands here too.
    if not ok:
        raise ValueError(
            f"LossConfig.{name}={getattr(cfg, name)!r}; expected {expected}"
        )
