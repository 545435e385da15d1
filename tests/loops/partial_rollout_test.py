"""Tests for golfjax/loops/partial_rollout.py and `GroupSource.sample_partial`:
a chunked rollout's behaviour log-probs are the trainer's teacher-forced ones
under the weights of each chunk (constant weights, a change between chunks, an
MoE policy's routes), its layout is the sampler's, and one chunk is `sample`.

Models: the `tiny` and `tiny_qwen3_moe` presets with random weights scaled up
(normal(0.1) matrices), so that two weight sets give visibly different
log-probs (float32 agreement: 1e-5, relative 1e-5 on log-probs near -5). One
prompt bucket and one batch bucket keep the compiles few. T = 12 new tokens in chunks of K = 5 (chunks of 5, 5, 2); a stop id
set of a sixth of the vocabulary ends some rows in each chunk.
"""

import functools

import jax
import numpy as np
import pytest

from golfjax import sampling
from golfjax.decode import FINISH_STOP, recorded_routes
from golfjax.loops import partial_rollout
from golfjax.loops import rl
from golfjax.models import config as config_lib
from golfjax.models import transformer
from golfjax.rewards.base import Problem
from golfjax.train import step
from tests.loops import stand_in

PROMPTS = [[5, 17, 42, 9, 77, 3, 101], [64, 2], [11, 90, 33, 8, 120]]
T, K, G = 12, 5, 4


def _cfg(vocab):
    return sampling.SamplingConfig(
        temperature=1.0, max_new_tokens=T, group_size=G, stop_ids=tuple(range(1, vocab, 6)),
        prompt_buckets=(24,), batch_buckets=(16,), decode_loops=1)


def _params(config, seed):
    params = transformer.init_params(config, jax.random.key(seed))
    return jax.tree.map(lambda x: x * 5 if x.ndim > 1 else x, params)


@functools.lru_cache(maxsize=None)
def _model(preset):
    config = config_lib.get_preset(preset)
    return config, _params(config, 0), _params(config, 1), sampling.Sampler(config, _cfg(config.vocab_size))


def _refresh(*versions):
    """refresh() giving (params, version) pairs in turn, the last one from then on."""
    calls = []

    def refresh():
        calls.append(None)
        return versions[min(len(calls), len(versions)) - 1]

    refresh.calls = calls
    return refresh


_logprobs = jax.jit(step.compute_logprobs_routed, static_argnames=("model_config",))


def _teacher_forced(config, params, r):
    """The trainer's log-probs of the rollout's tokens under `params`, and the
    (sorted) experts of every prompt and response token for an MoE model."""
    batch = rl.to_batch(r, np.zeros(len(r.length_N), np.float32), r.group_id_N,
                        rl.advantage_fn("grpo"))
    logp, _, routing = _logprobs(params, batch, model_config=config)
    if routing is None:
        return np.asarray(logp), None, None
    ids = np.sort(np.asarray(routing.ids_NxQxLxA), axis=-1)
    p = r.prompt_tokens_NxP.shape[1]
    return np.asarray(logp), ids[:, :p], ids[:, p:]


def _check_layout(r, n, stop_ids):
    assert r.tokens_NxT.shape == r.behaviour_logp_NxT.shape == (n, T)
    np.testing.assert_array_equal(r.length_N, r.response_mask_NxT.sum(1))
    np.testing.assert_array_equal(r.response_mask_NxT, np.arange(T) < r.length_N[:, None])
    assert np.all(r.tokens_NxT[~r.response_mask_NxT] == 0)
    assert np.all(r.behaviour_logp_NxT[~r.response_mask_NxT] == 0)
    np.testing.assert_array_equal(r.group_id_N, np.repeat(np.arange(len(PROMPTS)), G))
    last = r.tokens_NxT[np.arange(n), r.length_N - 1]
    np.testing.assert_array_equal(r.finish_reason_N == FINISH_STOP, np.isin(last, stop_ids))
    # Rows that ended in each of the three chunks, so the loop ran them all.
    assert {1, 2, 3} <= set((-(-r.length_N // K)).tolist())


def test_constant_weights_give_the_trainers_log_probs():
    config, params, _, sampler = _model("tiny")
    refresh = _refresh((params, 7))
    key = jax.random.key(3)
    out = partial_rollout.generate(sampler, refresh, PROMPTS, key, chunk_tokens=K)
    r = out.rollout
    _check_layout(r, len(PROMPTS) * G, sampler.cfg.stop_ids)
    assert len(refresh.calls) == 3  # One per chunk.
    np.testing.assert_array_equal(out.version_min_N, 7)
    np.testing.assert_array_equal(out.version_max_N, 7)
    logp, _, _ = _teacher_forced(config, params, r)
    m = r.response_mask_NxT
    np.testing.assert_allclose(r.behaviour_logp_NxT[m], logp[m], atol=1e-5)
    # Chunk 0 is the ordinary sampler's first K tokens (same key, same steps).
    whole = jax.tree.map(np.asarray, sampler.generate(params, PROMPTS, key))
    first = np.arange(T) < np.minimum(whole.length_N, K)[:, None]
    np.testing.assert_array_equal(r.tokens_NxT[first], whole.tokens_NxT[first])
    # Deterministic given the key and the refresh sequence.
    again = partial_rollout.generate(sampler, _refresh((params, 7)), PROMPTS, key, K).rollout
    np.testing.assert_array_equal(again.tokens_NxT, r.tokens_NxT)


def _check_two_versions(config, params_a, params_b, out):
    """Tokens of chunk 0 carry version 0's (params_a) log-probs, later ones
    version 1's; returns the rows that spanned both."""
    r = out.rollout
    logp_a, _, _ = _teacher_forced(config, params_a, r)
    logp_b, _, _ = _teacher_forced(config, params_b, r)
    m = r.response_mask_NxT
    old = m & (np.arange(T) < K)
    new = m & (np.arange(T) >= K)
    np.testing.assert_allclose(r.behaviour_logp_NxT[old], logp_a[old], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(r.behaviour_logp_NxT[new], logp_b[new], atol=1e-5, rtol=1e-5)
    # The two weight sets are told apart: the test could fail.
    assert np.abs(logp_a[new] - logp_b[new]).max() > 1e-2
    spans = r.length_N > K
    assert spans.any() and (~spans).any()
    np.testing.assert_array_equal(out.version_min_N, 0)
    np.testing.assert_array_equal(out.version_max_N, spans.astype(np.int32))
    return spans


def test_a_weight_change_between_chunks_gives_the_new_weights_log_probs():
    config, params_a, params_b, sampler = _model("tiny")
    refresh = _refresh((params_a, 0), (params_b, 1))
    out = partial_rollout.generate(sampler, refresh, PROMPTS, jax.random.key(5), K)
    _check_layout(out.rollout, len(PROMPTS) * G, sampler.cfg.stop_ids)
    _check_two_versions(config, params_a, params_b, out)


def test_moe_routes_are_those_of_each_rows_newest_weights():
    config, params_a, params_b, sampler = _model("tiny_qwen3_moe")
    out = partial_rollout.generate(sampler, _refresh((params_a, 0), (params_b, 1)), PROMPTS,
                                   jax.random.key(11), K)
    r = out.rollout
    spans = _check_two_versions(config, params_a, params_b, out)
    recorded = np.asarray(recorded_routes(r.response_mask_NxT))
    for params, rows in ((params_a, ~spans), (params_b, spans)):
        _, prompt_ids, response_ids = _teacher_forced(config, params, r)
        pm = r.prompt_mask_NxP & rows[:, None]
        rm = recorded & rows[:, None]
        np.testing.assert_array_equal(np.sort(r.prompt_routes_NxPxLxA, -1)[pm], prompt_ids[pm])
        np.testing.assert_array_equal(np.sort(r.routes_NxTxLxA, -1)[rm], response_ids[rm])


def test_chunk_tokens_must_be_an_int_at_least_0():
    _, params, _, sampler = _model("tiny")
    with pytest.raises(ValueError, match="chunk_tokens"):
        partial_rollout.generate(sampler, _refresh((params, 0)), PROMPTS, jax.random.key(0), -1)


class _ParityTask(stand_in.AnswerTask):
    """Rewards a response by its first token's parity, so groups are mixed."""

    def score(self, problem, response):
        return float(int(response.split()[0]) % 2)


def test_one_chunk_samples_what_sample_samples():
    _, params, _, sampler = _model("tiny")
    source = rl.GroupSource(sampler, _ParityTask(), stand_in.TokenTokenizer(), rl.advantage_fn("grpo"))
    problems = [Problem(id=i, question=str(p[0]), answer="") for i, p in enumerate(PROMPTS)]
    key = jax.random.key(9)
    batch, info = source.sample(params, problems, key)
    for chunk in (0, T, T + 3):
        refresh = _refresh((params, 2))
        got, got_info, vmin, vmax = source.sample_partial(refresh, problems, key, chunk)
        assert len(refresh.calls) == 1
        jax.tree.map(np.testing.assert_array_equal, got, batch)
        assert got_info == info and info["samples/generated"] == len(PROMPTS) * G
        np.testing.assert_array_equal(vmin, np.full(len(PROMPTS) * G, 2))
        np.testing.assert_array_equal(vmax, vmin)
    # Several chunks: the same batch layout and metrics, versions per row.
    got, got_info, vmin, vmax = source.sample_partial(
        _refresh((params, 0), (params, 1)), problems, key, K)
    assert got.tokens_NxT.shape == batch.tokens_NxT.shape
    assert set(got_info) == set(info) and got_info["samples/generated"] == info["samples/generated"]
    np.testing.assert_array_equal(vmax, (np.asarray(got.response_mask_NxT).sum(1) > K).astype(int))
