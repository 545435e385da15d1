"""Tests for golfjax/train/trainer.py: the Trainer's log-probs, step metrics and
first update, against values worked out by hand.

The model is tests/bigram_model.py's: the logits of the token after v are
`lm_head[v] * c` whatever else the sequence holds, so a response token's
log-prob under temperature tau is `log_softmax(lm_head[prev] * c / tau)` at it,
prev being the token before it (the last prompt token for the first one).
"""

import jax
import numpy as np
import pytest

from golfjax import sharding
from golfjax.config import TrainSection
from golfjax.losses import LossConfig
from golfjax.losses import reduce
from golfjax.train import state as state_lib
from golfjax.train.trainer import Trainer
from golfjax.types import make_batch
from tests import bigram_model

V = bigram_model.V
LR, WD = 1e-2, 0.1


def _lm_head(seed=0):
    # Logits of a few units: no token's probability is so small that its
    # gradient underflows Adam's epsilon.
    return np.random.default_rng(seed).normal(scale=0.5, size=(V, V)).astype(np.float32)


def _batch():
    # Prompts left-padded (pad 0), responses right-padded; advantages all
    # positive, so no two rows' gradients cancel.
    prompt_tokens = np.array([[0, 3, 4], [5, 6, 7], [0, 0, 9], [2, 2, 2]])
    tokens = np.array([[1, 2, 0, 0], [8, 3, 3, 11], [12, 0, 0, 0], [4, 5, 6, 0]])
    response_mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]], bool)
    return make_batch(prompt_tokens, prompt_tokens != 0, tokens, response_mask,
                      behaviour_logp_NxT=np.zeros((4, 4)), advantage_N=[0.5, 1.0, 2.0, 0.25])


def _previous(batch):
    """The token each response token is predicted from."""
    return np.concatenate([np.asarray(batch.prompt_tokens_NxP)[:, -1:],
                           np.asarray(batch.tokens_NxT)[:, :-1]], axis=1)


def _by_hand(lm_head, batch, temperature):
    """float64 log-prob and entropy of every response token."""
    logp_NxTxV = bigram_model.log_softmax(
        np.stack([bigram_model.logits(lm_head, v) for v in range(V)])[_previous(batch)] / temperature)
    tokens = np.asarray(batch.tokens_NxT)
    logp_NxT = np.take_along_axis(logp_NxTxV, tokens[..., None], axis=-1)[..., 0]
    entropy_NxT = -(np.exp(logp_NxTxV) * logp_NxTxV).sum(axis=-1)
    return logp_NxT, entropy_NxT


def _trainer(temperature, loss="reinforce"):
    mesh = sharding.make_mesh(1, 1, 1, devices=np.array(jax.devices()[:1]))
    return Trainer(bigram_model.CONFIG, TrainSection(loss=loss), LossConfig(agg=reduce.TOKEN_MEAN),
                   state_lib.OptimizerConfig(lr=LR, weight_decay=WD, eps=1e-12), mesh,
                   temperature=temperature)


@pytest.mark.parametrize("temperature, scored_at", [(0.7, 0.7), (0.0, 1.0)])
def test_logprobs_by_hand(temperature, scored_at):
    lm_head, batch = _lm_head(), _batch()
    trainer = _trainer(temperature)
    logp_NxT = trainer.logprobs(bigram_model.params(lm_head), trainer.put_batch(batch))
    np.testing.assert_allclose(logp_NxT, _by_hand(lm_head, batch, scored_at)[0], atol=2e-5)


def test_step_metrics_and_first_adamw_update_by_hand():
    lm_head, batch = _lm_head(), _batch()
    trainer = _trainer(0.7)
    state = trainer.init_state(bigram_model.params(lm_head), seed=0)
    state, metrics = trainer.step(state, trainer.put_batch(batch))
    metrics = jax.device_get(metrics)

    # REINFORCE under token-mean: the mean over response tokens of -A logp.
    logp, entropy = _by_hand(lm_head, batch, 0.7)
    mask = np.asarray(batch.response_mask_NxT)
    adv = np.asarray(batch.advantage_N)[:, None]
    assert metrics["train/response_tokens"] == mask.sum() == 10
    assert metrics["loss"] == pytest.approx((-adv * logp)[mask].mean(), rel=1e-5)
    assert metrics["entropy"] == pytest.approx(entropy[mask].mean(), rel=1e-5)
    assert metrics["train/skipped_nonfinite"] == 0.0 and int(state.step) == 1

    # Only the LM head rows and final-norm scales of the tokens that predict a
    # trained token get a gradient; Adam's first step moves each such
    # coordinate by lr g / (|g| + eps), lr itself for |g| >> eps = 1e-12,
    # and AdamW's decay subtracts
    # lr * wd * w from the LM head (norm scales never decay). The layers'
    # weights are zero and so are their gradients: they stay zero.
    new = jax.device_get(state.params)
    used = np.zeros(V, bool)
    used[_previous(batch)[mask]] = True
    step_VxV = new["lm_head"] - lm_head + LR * WD * lm_head
    np.testing.assert_allclose(np.abs(step_VxV[used]), LR, rtol=1e-3)
    np.testing.assert_allclose(step_VxV[~used], 0.0, atol=1e-7)  # float32 rounding of w.
    scale_step = new["final_norm"]["scale"] - 1.0
    np.testing.assert_allclose(np.abs(scale_step[used]), LR, rtol=1e-3)
    np.testing.assert_array_equal(scale_step[~used], 0.0)
    assert all(not np.any(x) for x in jax.tree.leaves(new["layers"]))
