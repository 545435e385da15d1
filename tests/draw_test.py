"""Tests for golfjax/draw.py: the sampler's per-step distribution and draw,
against values worked out by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golfjax import draw
from golfjax.sampling_config import SamplingConfig

PROBS = np.array([0.5, 0.3, 0.15, 0.05])
# One row, V = 4; shifted, as logits are not normalised.
LOGITS = (np.log(PROBS) + 3.0).astype(np.float32)[None, :]


@pytest.mark.parametrize("overrides, expected", [
    # temperature 1, no truncation: the probabilities themselves.
    ({}, [0.5, 0.3, 0.15, 0.05]),
    # temperature 2 takes the square root of each, renormalised.
    ({"temperature": 2.0}, np.sqrt(PROBS) / np.sqrt(PROBS).sum()),
    # top-k 3 drops the 0.05 and renormalises over the 0.95 left.
    ({"top_k": 3}, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0]),
    # top-p 0.7 keeps a token while the mass before it is < 0.7: 0.5 and 0.3.
    ({"top_p": 0.7}, [0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]),
    # Greedy reports the untruncated temperature-1 distribution.
    ({"temperature": 0.0, "top_k": 1}, [0.5, 0.3, 0.15, 0.05]),
])
def test_processed_log_probs_by_hand(overrides, expected):
    logp = np.asarray(draw.processed_log_probs(jnp.asarray(LOGITS), SamplingConfig(**overrides)))
    np.testing.assert_allclose(np.exp(logp[0]), expected, rtol=1e-6, atol=1e-7)


def test_greedy_and_top_1_pick_the_argmax_with_their_log_probs():
    key = jax.random.PRNGKey(0)
    token, logp = draw.sample(jnp.asarray(LOGITS), key, SamplingConfig(temperature=0.0))
    assert int(token[0]) == 0 and float(logp[0]) == pytest.approx(np.log(0.5), abs=1e-6)
    # top-k 1 at temperature 1 samples from a single kept token: probability 1.
    token, logp = draw.sample(jnp.asarray(LOGITS), key, SamplingConfig(top_k=1))
    assert int(token[0]) == 0 and float(logp[0]) == pytest.approx(0.0, abs=1e-6)


def test_the_draw_inverts_the_cdf_at_one_uniform_per_row():
    # 300 candidates: three blocks of the two-level CDF (128 per block), with a
    # third of them masked to -inf (never drawn). Row n draws the token whose
    # CDF interval holds its uniform u_n, as a float64 search finds it.
    rows, v = 64, 300
    rng = np.random.default_rng(0)
    logits_NxV = rng.normal(size=(rows, v)).astype(np.float32)
    logits_NxV[:, rng.permutation(v)[:100]] = -np.inf
    key = jax.random.PRNGKey(7)
    token_N, logp_N = draw.sample(jnp.asarray(logits_NxV), key, SamplingConfig())
    probs_NxV = np.exp(logits_NxV.astype(np.float64) - logits_NxV.max(axis=1, keepdims=True))
    probs_NxV /= probs_NxV.sum(axis=1, keepdims=True)
    u_N = np.asarray(jax.random.uniform(key, (rows,), jnp.float32), np.float64)
    cdf_NxV = np.cumsum(probs_NxV, axis=1)
    expected_N = np.array([np.searchsorted(cdf, u, side="right") for cdf, u in zip(cdf_NxV, u_N)])
    np.testing.assert_array_equal(token_N, expected_N)
    np.testing.assert_allclose(logp_N, np.log(probs_NxV[np.arange(rows), expected_N]), atol=1e-5)
