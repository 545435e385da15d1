"""Tests for golfjax/sampling.py: parity with transformers, log-probs, stops, buckets.

Shape letters as in golfjax/sampling.py (N rows, P prompt bucket, T new tokens).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from golfjax import sampling
from golfjax import sharding as sharding_lib
from golfjax.models import hf
from golfjax.models import transformer
from golfjax.models.config import ModelConfig
from tests.models import hf_utils
from tests.models.hf_utils import greedy as _hf_greedy

# Prompts of different lengths, left-padded into one bucket by the sampler.
PROMPTS = [[5, 17, 42, 9, 77, 3, 101], [64, 2], [11, 90, 33, 8, 120]]
NEW_TOKENS = 10


def _checkpoint(family: str, tmp_dir: str) -> tuple[torch.nn.Module, ModelConfig, dict]:
    model = hf_utils.make_hf_model(family)
    model.save_pretrained(tmp_dir)
    config, params = hf.load(tmp_dir)
    return model, config, params


@pytest.fixture(scope="module", params=["qwen2", "llama3"])
def family_model(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(request.param))
    return _checkpoint(request.param, path)


@pytest.fixture(scope="module")
def qwen2_model(tmp_path_factory):
    return _checkpoint("qwen2", str(tmp_path_factory.mktemp("qwen2_only")))


def _cfg(**overrides) -> sampling.SamplingConfig:
    defaults = dict(temperature=0.0, max_new_tokens=NEW_TOKENS, group_size=1,
                    prompt_buckets=(8, 16), batch_buckets=(4, 8))
    defaults.update(overrides)
    return sampling.SamplingConfig(**defaults)


# One sampled config shared by several tests, so its programs compile once
# (`generate` keeps a Sampler per (model config, sampling config)).
SAMPLED = dict(temperature=1.0, group_size=2)


_apply = jax.jit(transformer.apply, static_argnames="config")
_processed_log_probs = jax.jit(sampling.processed_log_probs,
                               static_argnames="cfg")


def _np(rollout: sampling.Rollout) -> sampling.Rollout:
    return jax.tree.map(np.asarray, rollout)


def _teacher_forced_logp(config: ModelConfig, params: dict,
                         r: sampling.Rollout, temperature: float = 1.0
                         ) -> np.ndarray:
    """log_softmax(logits / temperature) at each response token, by one forward
    pass over prompt + response (the trainer's recomputation)."""
    tokens_NxS = np.concatenate([r.prompt_tokens_NxP, r.tokens_NxT], axis=1)
    mask_NxS = np.concatenate([r.prompt_mask_NxP, r.response_mask_NxT], axis=1)
    positions_NxS = np.maximum(np.cumsum(mask_NxS, axis=1) - 1, 0)
    logits_NxSxV, _ = _apply(
        params, jnp.asarray(tokens_NxS), jnp.asarray(positions_NxS),
        jnp.asarray(mask_NxS), config=config)
    logp_NxSxV = np.asarray(jax.nn.log_softmax(logits_NxSxV / temperature, -1))
    p = r.prompt_tokens_NxP.shape[1]
    # Response token i is predicted by the logits at position p - 1 + i.
    pred_NxTxV = logp_NxSxV[:, p - 1:-1]
    return np.take_along_axis(pred_NxTxV, r.tokens_NxT[:, :, None], axis=2)[..., 0]


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", float("nan")), ("top_p", 0.0),
    ("top_p", 1.5), ("top_k", -1), ("max_new_tokens", 0), ("group_size", 0),
    ("decode_loops", 0),
    ("stop_ids", (1, -2)), ("prompt_buckets", ()), ("prompt_buckets", (32, 16)),
    ("batch_buckets", (0, 4)), ("pad_id", -1),
])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"SamplingConfig.{field}"):
        sampling.SamplingConfig(**{field: value})


def test_config_normalises_sequences_so_equal_configs_share_programs():
    a = sampling.SamplingConfig(stop_ids=[1, 2], prompt_buckets=[8, 16])
    b = sampling.SamplingConfig(stop_ids=(1, 2), prompt_buckets=(8, 16))
    assert a == b and hash(a) == hash(b)


def test_batch_buckets_must_divide_over_the_mesh(qwen2_model):
    _, config, _ = qwen2_model
    mesh = sharding_lib.make_mesh(data=2, fsdp=2, tensor=2)
    with pytest.raises(ValueError, match="batch_buckets"):
        sampling.Sampler(config, _cfg(batch_buckets=(2, 4)), mesh)


def test_prompt_longer_than_every_bucket_raises(qwen2_model):
    _, config, params = qwen2_model
    with pytest.raises(ValueError, match="prompt_buckets"):
        sampling.generate(params, [[1] * 17], jax.random.key(0), _cfg(),
                          model_config=config)


def test_greedy_equals_transformers_generate(family_model):
    model, config, params = family_model
    r = _np(sampling.generate(params, PROMPTS, jax.random.key(0), _cfg(),
                              model_config=config))
    expected = _hf_greedy(model, PROMPTS, NEW_TOKENS)
    np.testing.assert_array_equal(r.tokens_NxT, expected)
    assert r.response_mask_NxT.all()
    np.testing.assert_array_equal(r.length_N, NEW_TOKENS)
    np.testing.assert_array_equal(r.finish_reason_N, sampling.FINISH_LENGTH)
    # Greedy reports the temperature-1 log-prob of the chosen token.
    np.testing.assert_allclose(r.behaviour_logp_NxT,
                               _teacher_forced_logp(config, params, r),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("p, t, loops", [
    (8, 10, 4), (32, 128, 4), (32, 33, 4), (32, 65, 4), (16, 1, 4),
    (32, 128, 1), (32, 1024, 4), (128, 130, 3), (8, 72, 8)])
def test_decode_segments_cover_every_step_and_grow(p, t, loops):
    segments = sampling.decode_segments(p, t, loops)
    ends = [end for end, _ in segments]
    slots = [s for _, s in segments]
    assert 1 <= len(segments) <= loops
    assert ends[-1] == t and ends == sorted(set(ends))
    assert slots == sorted(set(slots)) and slots[-1] <= p + t
    start = 1  # Step 0 samples from the prefill; step s writes slot p + s - 1.
    for end, width in segments:
        assert width >= p + end - 1, (end, width)  # Room for the last step.
        assert end - start >= min(sampling.MIN_LOOP_STEPS, t - start)
        start = end


def test_several_decode_loops_equal_one_loop_and_transformers(qwen2_model):
    model, config, params = qwen2_model
    long = 72  # Three loops: steps 1-32, 33-64, 65-71.
    assert len(sampling.decode_segments(8, long, 4)) == 3
    greedy = _np(sampling.generate(params, PROMPTS, jax.random.key(0),
                                   _cfg(max_new_tokens=long), model_config=config))
    np.testing.assert_array_equal(greedy.tokens_NxT, _hf_greedy(model, PROMPTS, long))
    loops = _np(sampling.generate(params, PROMPTS, jax.random.key(3),
                                  _cfg(max_new_tokens=long, **SAMPLED),
                                  model_config=config))
    one = _np(sampling.generate(params, PROMPTS, jax.random.key(3),
                                _cfg(max_new_tokens=long, decode_loops=1, **SAMPLED),
                                model_config=config))
    np.testing.assert_array_equal(loops.tokens_NxT, one.tokens_NxT)
    # Each loop attends over a cache of its own width, so the softmax sums run
    # over different numbers of (masked) slots: equal up to float32 rounding of
    # log-probs near -3 (CI measured 1.4e-6), not bit for bit.
    np.testing.assert_allclose(loops.behaviour_logp_NxT, one.behaviour_logp_NxT,
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(loops.behaviour_logp_NxT,
                               _teacher_forced_logp(config, params, loops),
                               atol=1e-5, rtol=0)


def test_sharded_8_devices_equals_single_device(qwen2_model):
    _, config, params = qwen2_model
    mesh = sharding_lib.make_mesh(data=2, fsdp=2, tensor=2)
    cfg = _cfg()  # 3 prompts + 1 dummy: 4 rows over data x fsdp = 4 shards.
    single = _np(sampling.generate(params, PROMPTS, jax.random.key(0), cfg,
                                   model_config=config))
    sharded_params = jax.device_put(
        params, transformer.param_shardings(config, mesh))
    sharded = sampling.generate(sharded_params, PROMPTS, jax.random.key(0),
                                cfg, model_config=config, mesh=mesh)
    jax.block_until_ready(sharded)
    np.testing.assert_array_equal(np.asarray(sharded.tokens_NxT),
                                  single.tokens_NxT)
    np.testing.assert_allclose(np.asarray(sharded.behaviour_logp_NxT),
                               single.behaviour_logp_NxT, atol=1e-5)


def test_scanned_layers_sample_what_unrolled_ones_do(qwen2_model):
    # decode_layers="scan" forced on CPU: a stacked cache, no per-layer
    # weights, no recent buffer; the same tokens (greedy, over several decode
    # loops) and the same behaviour log-probs as the default (unrolled) path.
    _, config, params = qwen2_model
    scan = config.replace(decode_layers="scan")
    cfg = _cfg(max_new_tokens=40)  # Two decode loops: steps 1-32, 33-39.
    assert len(sampling.decode_segments(8, 40, cfg.decode_loops)) == 2
    sampler = sampling.Sampler(scan, cfg)
    assert not sampler._split_layers
    cache, _, _ = sampler.programs(4, 8).prefill(params, *sampling.pad_prompts(
        [np.asarray(p) for p in PROMPTS], 4, 8, cfg.pad_id))
    assert cache.stacked
    scanned = _np(sampler.generate(params, PROMPTS, jax.random.key(0)))
    unrolled = _np(sampling.generate(params, PROMPTS, jax.random.key(0), cfg,
                                     model_config=config))
    np.testing.assert_array_equal(scanned.tokens_NxT, unrolled.tokens_NxT)
    np.testing.assert_allclose(scanned.behaviour_logp_NxT, unrolled.behaviour_logp_NxT,
                               atol=1e-5, rtol=0)


def test_scanned_layers_on_8_devices_equal_single_device(qwen2_model):
    _, config, params = qwen2_model
    config = config.replace(decode_layers="scan")
    mesh = sharding_lib.make_mesh(data=2, fsdp=2, tensor=2)
    cfg = _cfg(**SAMPLED)
    single = _np(sampling.generate(params, PROMPTS, jax.random.key(2), cfg,
                                   model_config=config))
    sharded = sampling.generate(jax.device_put(params, transformer.param_shardings(
        config, mesh)), PROMPTS, jax.random.key(2), cfg, model_config=config, mesh=mesh)
    jax.block_until_ready(sharded)
    np.testing.assert_array_equal(np.asarray(sharded.tokens_NxT), single.tokens_NxT)
    np.testing.assert_allclose(np.asarray(sharded.behaviour_logp_NxT),
                               single.behaviour_logp_NxT, atol=1e-5)


@pytest.mark.parametrize("decode_layers", ["auto", "scan"])
def test_sampled_logp_equals_teacher_forced_forward(qwen2_model, decode_layers):
    _, config, params = qwen2_model
    config = config.replace(decode_layers=decode_layers)
    r = _np(sampling.generate(params, PROMPTS, jax.random.key(1),
                              _cfg(**SAMPLED), model_config=config))
    assert r.tokens_NxT.shape == (len(PROMPTS) * 2, NEW_TOKENS)
    np.testing.assert_array_equal(r.group_id_N, np.repeat(np.arange(3), 2))
    np.testing.assert_array_equal(r.prompt_tokens_NxP[0], r.prompt_tokens_NxP[1])
    # The G samples of a prompt share its prefill yet differ from each other.
    assert (r.tokens_NxT[0] != r.tokens_NxT[1]).any()
    ref = _teacher_forced_logp(config, params, r)
    np.testing.assert_allclose(r.behaviour_logp_NxT, ref, atol=1e-5, rtol=0)


def test_logp_under_temperature_and_truncation_matches_processed_log_probs(
        qwen2_model):
    _, config, params = qwen2_model
    cfg = _cfg(temperature=0.7, top_k=20, top_p=0.9, group_size=4)
    r = _np(sampling.generate(params, PROMPTS, jax.random.key(2), cfg,
                              model_config=config))
    tokens_NxS = np.concatenate([r.prompt_tokens_NxP, r.tokens_NxT], axis=1)
    mask_NxS = np.concatenate([r.prompt_mask_NxP, r.response_mask_NxT], axis=1)
    logits_NxSxV, _ = _apply(
        params, jnp.asarray(tokens_NxS),
        jnp.asarray(np.maximum(np.cumsum(mask_NxS, 1) - 1, 0)),
        jnp.asarray(mask_NxS), config=config)
    p = r.prompt_tokens_NxP.shape[1]
    logp_NxTxV = np.asarray(_processed_log_probs(
        logits_NxSxV[:, p - 1:-1], cfg=cfg))
    ref = np.take_along_axis(logp_NxTxV, r.tokens_NxT[:, :, None], 2)[..., 0]
    np.testing.assert_allclose(r.behaviour_logp_NxT, ref, atol=1e-5, rtol=0)
    # Every sampled token lies inside the truncated support.
    assert np.isfinite(ref).all()


def test_top_p_near_zero_equals_greedy(qwen2_model):
    _, config, params = qwen2_model
    greedy = _np(sampling.generate(params, PROMPTS, jax.random.key(0), _cfg(),
                                   model_config=config))
    nucleus = _np(sampling.generate(
        params, PROMPTS, jax.random.key(3),
        _cfg(temperature=1.0, top_p=1e-6, group_size=2), model_config=config))
    np.testing.assert_array_equal(nucleus.tokens_NxT,
                                  np.repeat(greedy.tokens_NxT, 2, axis=0))
    # Only one candidate is left, so the sampled distribution is one-hot.
    np.testing.assert_allclose(nucleus.behaviour_logp_NxT, 0.0, atol=1e-6)


def test_rows_stop_at_any_stop_token_and_are_padded_after(qwen2_model):
    _, config, params = qwen2_model
    # Sampled, not greedy: greedy on a random model repeats one token. With the
    # same key a row draws the same tokens until it stops (per-step keys).
    cfg = _cfg(**SAMPLED)
    free = _np(sampling.generate(params, PROMPTS, jax.random.key(4), cfg,
                                 model_config=config))
    # Row 0 stops at the first step >= 2 whose token is new to it; the other
    # rows stop wherever they first emit either id, if they do.
    row0 = free.tokens_NxT[0]
    first_new = next(j for j in range(2, NEW_TOKENS) if row0[j] not in row0[:j])
    stop_a = int(row0[first_new])
    stop_b = int(free.tokens_NxT[1, 5])
    pad = 127
    r = _np(sampling.generate(
        params, PROMPTS, jax.random.key(4),
        cfg.replace(stop_ids=(stop_a, stop_b), pad_id=pad), model_config=config))
    stopped = 0
    for row in range(free.tokens_NxT.shape[0]):
        hits = np.flatnonzero(np.isin(free.tokens_NxT[row], (stop_a, stop_b)))
        end = hits[0] + 1 if hits.size else NEW_TOKENS
        stopped += bool(hits.size)
        np.testing.assert_array_equal(r.tokens_NxT[row, :end],
                                      free.tokens_NxT[row, :end])
        assert (r.tokens_NxT[row, end:] == pad).all()
        assert r.response_mask_NxT[row, :end].all()
        assert not r.response_mask_NxT[row, end:].any()
        assert (r.behaviour_logp_NxT[row, end:] == 0).all()
        assert r.length_N[row] == end
        assert r.finish_reason_N[row] == (
            sampling.FINISH_STOP if hits.size else sampling.FINISH_LENGTH)
    assert stopped >= 2
    if stop_b not in row0[:first_new]:
        # Emitted stop_a at step first_new, kept it as its last token, stopped.
        assert r.length_N[0] == first_new + 1


def test_padded_array_input_and_dummy_rows(qwen2_model):
    _, config, params = qwen2_model
    cfg = _cfg(**SAMPLED)
    from_lists = _np(sampling.generate(params, PROMPTS, jax.random.key(0), cfg,
                                       model_config=config))
    tokens, mask = sampling.pad_prompts(
        [np.asarray(p) for p in PROMPTS], 3, 9, pad_id=0)
    from_array = _np(sampling.generate(params, tokens, jax.random.key(0), cfg,
                                       model_config=config, prompt_mask=mask))
    # 3 prompts in batch bucket 4: the dummy prompt's 2 rows are dropped.
    assert from_array.tokens_NxT.shape == (6, NEW_TOKENS)
    assert from_array.prompt_tokens_NxP.shape == (6, 8)
    jax.tree.map(np.testing.assert_array_equal, from_array, from_lists)
    with pytest.raises(ValueError, match="left-padded"):
        sampling.generate(params, tokens[:, ::-1], jax.random.key(0), cfg,
                          model_config=config, prompt_mask=mask[:, ::-1])


def test_programs_trace_once_per_bucket_and_respect_max_new_tokens(
        qwen2_model):
    _, config, params = qwen2_model
    sampler = sampling.Sampler(config, _cfg(temperature=1.0, max_new_tokens=4))
    key = jax.random.key(0)
    # Prompt lengths 3..8 fall in bucket 8 and 1..4 prompts in batch bucket 4.
    for num, length in [(1, 3), (4, 8), (2, 5), (3, 7)]:
        r = _np(sampler.generate(params, [[7] * length] * num, key))
        assert r.tokens_NxT.shape == (num, 4)
        np.testing.assert_array_equal(r.length_N, 4)
    assert sampler.trace_counts == {"prefill": 1, "decode": 1}
    sampler.generate(params, [[7] * 12] * 5, key)  # Buckets 16 and 8.
    assert sampler.trace_counts == {"prefill": 2, "decode": 2}


def test_same_key_same_rollout_other_key_differs(qwen2_model):
    _, config, params = qwen2_model
    cfg = _cfg(**SAMPLED)
    a, b, c = (_np(sampling.generate(params, PROMPTS, jax.random.key(k), cfg,
                                     model_config=config)) for k in (5, 5, 6))
    np.testing.assert_array_equal(a.tokens_NxT, b.tokens_NxT)
    assert (a.tokens_NxT != c.tokens_NxT).any()


def _chi2_critical(df: int, z: float = 3.09) -> float:
    """Upper 0.1% point of chi-square(df), Wilson-Hilferty approximation."""
    k = 2.0 / (9.0 * df)
    return df * (1.0 - k + z * math.sqrt(k)) ** 3


@pytest.mark.parametrize("overrides", [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=6, top_p=0.9),
])
def test_empirical_distribution_matches_softmax_chi_square(overrides):
    # A 16-token vocabulary with a scaled-up LM head (p from 0.001 to 0.38 at
    # temperature 1), so the test can tell a softmax from a uniform or a
    # greedy sampler.
    config = ModelConfig(vocab_size=16, embed_dim=32, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=16, mlp_dim=32)
    params = transformer.init_params(config, jax.random.key(0))
    params["lm_head"] = params["lm_head"] * 15.0
    group = 4096
    cfg = _cfg(max_new_tokens=1, group_size=group, batch_buckets=(1,),
               **overrides)
    prompt = [3, 1, 4, 1, 5]
    r = _np(sampling.generate(params, [prompt], jax.random.key(0), cfg,
                              model_config=config))
    tokens = jnp.asarray([prompt])
    logits_1xPxV, _ = _apply(
        params, tokens, jnp.arange(len(prompt))[None], jnp.ones_like(tokens),
        config=config)
    probs_V = np.exp(np.asarray(
        _processed_log_probs(logits_1xPxV[0, -1], cfg=cfg), np.float64))
    assert probs_V.max() > 4 * np.median(probs_V)  # Far from uniform.
    counts_V = np.bincount(r.tokens_NxT[:, 0], minlength=config.vocab_size)
    support = probs_V > 0
    assert support.sum() >= 4  # The truncated case keeps several tokens.
    assert counts_V[~support].sum() == 0  # Truncated tokens are never drawn.
    # Tokens expected fewer than 5 times are pooled into one bin, as the
    # chi-square approximation needs.
    expected_V = group * probs_V
    big = expected_V >= 5
    observed = np.append(counts_V[big], counts_V[support & ~big].sum())
    expected = np.append(expected_V[big], expected_V[support & ~big].sum())
    observed, expected = observed[expected > 0], expected[expected > 0]
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert chi2 < _chi2_critical(len(expected) - 1), (chi2, counts_V)
    # And each row's log-prob is that of its token.
    np.testing.assert_allclose(
        r.behaviour_logp_NxT[:, 0], np.log(probs_V[r.tokens_NxT[:, 0]]),
        atol=1e-5)


def test_sample_multi_block_cdf_matches_softmax_and_skips_masked():
    # 300 candidates: three CDF blocks, the last one padded; the top-k cut
    # leaves masked (-inf) candidates at the end of a block.
    rows, v = 20000, 300
    logits_V = 3.0 * jax.random.normal(jax.random.key(0), (v,))
    logits_NxV = jnp.broadcast_to(logits_V[None, :], (rows, v))
    for cfg in (sampling.SamplingConfig(temperature=1.0),
                sampling.SamplingConfig(temperature=1.0, top_k=140)):
        token_N, logp_N = jax.jit(sampling.sample, static_argnames="cfg")(
            logits_NxV, jax.random.key(1), cfg=cfg)
        probs_V = np.exp(np.asarray(
            _processed_log_probs(logits_V, cfg=cfg), np.float64))
        counts_V = np.bincount(np.asarray(token_N), minlength=v)
        assert counts_V[probs_V == 0].sum() == 0
        expected_V = rows * probs_V
        big = expected_V >= 5
        observed = np.append(counts_V[big], counts_V[~big].sum())
        expected = np.append(expected_V[big], expected_V[~big].sum())
        observed, expected = observed[expected > 0], expected[expected > 0]
        chi2 = float(np.sum((observed - expected) ** 2 / expected))
        assert chi2 < _chi2_critical(len(expected) - 1), chi2
        np.testing.assert_allclose(np.asarray(logp_N),
                                   np.log(probs_V[np.asarray(token_N)]),
                                   atol=1e-5)


def test_decode_bytes_per_step_worked_example():
    # The `tiny` preset (float32, untied): per layer 64 (attn norm) + 3 x 64 x 64
    # (q, o and k+v: 2 x 64 x 32) + 64 (mlp norm) + 3 x 64 x 128 (gate, up,
    # down) = 36,992 weights; 2 layers, the final norm (64) and the LM head
    # (64 x 256) read whole, the embedding only at 8 rows: 73,984 + 64 +
    # 16,384 + 8 x 64 = 90,944 floats = 363,776 bytes. Keys and values:
    # 2 (k, v) x 2 layers x 2 kv heads x 16 x 4 bytes = 512 bytes per slot,
    # x 8 rows x 100 slots = 409,600 bytes.
    tiny = ModelConfig()
    assert sampling.decode_bytes_per_step(tiny, rows=8, slots=100) == (
        363_776 + 409_600)
    # Tied: the table is read whole by the LM head and there is no lm_head.
    tied = tiny.replace(tie_embeddings=True)
    assert sampling.decode_bytes_per_step(tied, rows=8, slots=0) == 4 * (
        73_984 + 64 + 16_384)
    # bfloat16 halves both parts.
    half = tiny.replace(param_dtype="bfloat16", compute_dtype="bfloat16")
    assert sampling.decode_bytes_per_step(half, rows=8, slots=100) == (
        363_776 + 409_600) / 2
