"""Tests for golfjax/train/step.py's diagnostics: each averaged over what it measures.

issue 26, Found 6. A GOLF-shaped batch of two parts (the second has no injected
token) is trained in 2 micro-batches each; every diagnostic the loss functions
report must equal that loss function applied to all the batch's rows at once,
not a mean of the four micro-batches' means. One test per diagnostic.
"""

import functools

import jax
import numpy as np
import pytest

from golfjax import config as config_lib
from golfjax import losses
from golfjax import metrics as metrics_lib
from golfjax import sharding
from golfjax.losses import LossConfig
from golfjax.models import config as model_config_lib
from golfjax.models import transformer
from golfjax.train import state as state_lib
from golfjax.train.trainer import Trainer
from golfjax.types import make_batch

MODEL = model_config_lib.get_preset("tiny")
M = 2  # micro-batches
# Two trains: (on-policy loss, off-policy loss, loss settings) and the diagnostics they report.
SETUPS = {
    "ppo": (("ppo_clip", "shaping", LossConfig(tis=True, mis="token", mis_cap=1.5)),
            ("clip_frac", "dual_clip_frac", "approx_kl", "tis_weight_mean", "mis_reject_frac",
             "offpolicy_prob_mean")),
    "vespo": (("vespo", "truncated_is", LossConfig()),
              ("log_w_mean", "log_w_pos_mean", "log_w_neg_mean", "phi_pos_mean", "phi_neg_mean",
               "pos_frac", "ess", "offpolicy_is_weight_mean", "offpolicy_truncated_frac")),
}


def _part(seed, n, p, t=5, injected=()):
    rng = np.random.default_rng(seed)
    prompt_mask = np.arange(p)[None, :] >= (p - rng.integers(2, p + 1, n))[:, None]
    response_mask = np.arange(t)[None, :] < rng.integers(1, t + 1, n)[:, None]
    off = np.zeros((n, t), bool)
    off[list(injected)] = True
    behaviour = np.log(rng.uniform(0.001, 0.02, (n, t)))
    batch = make_batch(
        prompt_tokens_NxP=np.where(prompt_mask, rng.integers(1, MODEL.vocab_size, (n, p)), 0),
        prompt_mask_NxP=prompt_mask,
        tokens_NxT=np.where(response_mask, rng.integers(1, MODEL.vocab_size, (n, t)), 0),
        response_mask_NxT=response_mask,
        behaviour_logp_NxT=behaviour,
        advantage_N=rng.normal(size=n),
        off_policy_mask_NxT=off & response_mask,
    )
    # old_logp apart from the sampler's (for TIS and MIS) and from the policy's (for the ratios).
    return batch.replace(old_logp_NxT=(behaviour + rng.normal(0, 0.4, (n, t))).astype(np.float32))


@functools.lru_cache(maxsize=None)
def _measured(setup):
    """(the step's metrics, the loss functions on the whole batch, per-micro-batch ESS pairs)."""
    (loss, off_loss, loss_cfg), _ = SETUPS[setup]
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    trainer = Trainer(MODEL, config_lib.TrainSection(loss=loss, off_policy_loss=off_loss, micro_batches=M),
                      loss_cfg, state_lib.OptimizerConfig(lr=1e-3), mesh)
    # The original rows (8, two injected) and the refinement rows (4, longer prompts, none injected).
    parts = (_part(0, 8, 6, injected=(1, 6)), _part(1, 4, 11))
    state = trainer.init_state(transformer.init_params(MODEL, jax.random.PRNGKey(0)), 0)
    logp = [np.asarray(trainer.logprobs(state.params, trainer.put_batch(p))) for p in parts]
    _, metrics = trainer.step(state, trainer.put_batch(parts))
    metrics = metrics_lib.to_scalars(metrics)

    def rows(name):
        return np.concatenate([getattr(p, name) for p in parts])

    cfg = trainer.loss_cfg
    logp_NxT, adv_N = np.concatenate(logp), rows("advantage_N")
    on_NxT = rows("response_mask_NxT") & ~rows("off_policy_mask_NxT")
    off_NxT = rows("response_mask_NxT") & rows("off_policy_mask_NxT")
    _, aux = losses.LOSSES[loss](logp_NxT, rows("old_logp_NxT"), adv_N, on_NxT, cfg, rows("behaviour_logp_NxT"))
    _, off_aux = losses.OFF_POLICY_LOSSES[off_loss](logp_NxT, rows("behaviour_logp_NxT"), adv_N, off_NxT, cfg)
    whole = {name: _value(value) for name, value in (aux | off_aux).items()}
    # The ESS is a statistic of the rows a loss call sees: its micro-batches'
    # ESS, weighted by their rows (micro-batch j of a part takes rows j, j + M, ...).
    ess = []
    for part, part_logp in zip(parts, logp):
        for j in range(M):
            mb, mb_logp = part.rows(slice(j, None, M)), part_logp[j::M]
            on_NxT = mb.response_mask_NxT & ~mb.off_policy_mask_NxT
            if loss == "vespo":
                _, mb_aux = losses.LOSSES[loss](
                    mb_logp, mb.old_logp_NxT, mb.advantage_N, on_NxT, cfg, mb.behaviour_logp_NxT)
                ess.append((_value(mb_aux["ess"]), float(on_NxT.any(axis=1).sum())))
    return metrics, whole, ess, (logp, parts)


def _value(diagnostic):
    """A diagnostic's value (a `Weighted` pair's, or a plain mean's as losses returned them before)."""
    return float(diagnostic.value) if hasattr(diagnostic, "value") else float(diagnostic)


@pytest.mark.parametrize("setup, name", [(s, n) for s, (_, names) in SETUPS.items() for n in names])
def test_each_diagnostic_is_the_mean_over_what_it_measures(setup, name):
    metrics, whole, ess, _ = _measured(setup)
    if name == "ess":
        expected = sum(e * rows for e, rows in ess) / sum(rows for _, rows in ess)
        assert len({c for _, c in ess}) > 1  # Uneven micro-batches: a plain mean would differ.
    else:
        expected = whole[name]
    np.testing.assert_allclose(metrics[f"loss/{name}"], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("setup", list(SETUPS))
def test_weight_statistics_are_the_whole_batchs_in_float64(setup):
    # The step's `schedule/log_w_*` and `schedule/ess` (any loss) against a
    # float64 NumPy reference over all rows of both parts at once: sums over
    # the micro-batches and parts, a maximum, and the ESS's (sum W)^2 / (n sum W^2).
    metrics, _, _, (logp, parts) = _measured(setup)
    clip = LossConfig().log_ratio_clip
    logp_NxT = np.concatenate(logp).astype(np.float64)
    old_NxT = np.concatenate([p.old_logp_NxT for p in parts]).astype(np.float64)
    adv_N = np.concatenate([p.advantage_N for p in parts])
    on_NxT = np.concatenate([p.response_mask_NxT & ~p.off_policy_mask_NxT for p in parts])
    s_N = np.clip(np.where(on_NxT, np.clip(logp_NxT - old_NxT, -clip, clip), 0.0).sum(axis=1), -clip, clip)
    rows_N = on_NxT.any(axis=1)
    assert 0 < rows_N.sum() < len(rows_N)  # The fully injected rows are not counted.
    s, pos = s_N[rows_N], adv_N[rows_N] >= 0
    w = np.exp(s)
    expected = {
        "schedule/log_w_mean": s.mean(), "schedule/log_w_pos_mean": s[pos].mean(),
        "schedule/log_w_neg_mean": s[~pos].mean(), "schedule/log_w_abs_max": np.abs(s).max(),
        "schedule/ess": w.sum() ** 2 / (len(w) * (w**2).sum()),
    }
    assert expected["schedule/ess"] < 0.9
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_weight_sums_combine_without_overflow_or_empty_sides():
    # Log-weights near the clip (exp(2 * 80) overflows float32) and a side
    # without rows: the combined ESS is the float64 one.
    from golfjax.train import step as step_lib
    s = np.array([80.0, 79.0, -80.0, 0.5])
    sums = []
    for rows in (s[:2], s[2:], s[:0]):
        shift = rows.max() if len(rows) else -np.inf
        w = np.exp(rows - (shift if len(rows) else 0.0))
        sums.append({k: np.float32(v) for k, v in {
            "rows": len(rows), "log_w": rows.sum(), "pos_rows": 0, "log_w_pos": 0, "neg_rows": 0,
            "log_w_neg": 0, "abs_max": np.abs(rows).max(initial=0), "shift": shift,
            "w_sum": w.sum(), "w_sq_sum": (w**2).sum()}.items()})
    combined = functools.reduce(step_lib.combine_weight_sums, [sums[2], sums[0], sums[2], sums[1]])
    stats = step_lib.weight_stats(combined)
    w = np.exp(s - s.max())
    np.testing.assert_allclose(stats["schedule/ess"], w.sum() ** 2 / (4 * (w**2).sum()), rtol=1e-5)
    np.testing.assert_allclose(stats["schedule/log_w_mean"], s.mean(), rtol=1e-6)
    assert stats["schedule/log_w_abs_max"] == 80.0
