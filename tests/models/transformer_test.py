"""golfjax.models.transformer: shapes, cache decoding, padding, causality, scan."""

from __future__ import annotations

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golfjax.models import cache as cache_lib
from golfjax.models import config as config_lib
from golfjax.models import transformer

TINY = ("tiny", "tiny_qwen2", "tiny_qwen3")
# One jitted forward shared by all tests: same config and shapes reuse a compile.
APPLY = jax.jit(transformer.apply, static_argnames="config")


def left_padded(batch: int, length: int, pads: list[int], seed: int = 0):
    rng = np.random.RandomState(seed)
    mask = np.ones((batch, length), bool)
    for b, p in enumerate(pads):
        mask[b, :p] = False
    tokens = np.where(mask, rng.randint(1, 256, (batch, length)), 0)
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask)


@functools.lru_cache(maxsize=None)
def tiny_params(name: str):
    config = config_lib.PRESETS[name]
    return config, transformer.init_params(config, jax.random.key(0))


class ApplyTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_shapes_dtypes_finite(self):
        config, params = tiny_params("tiny_qwen3")
        tokens, positions, mask = left_padded(2, 7, [0, 3])
        fn = self.variant(functools.partial(transformer.apply, config=config))
        logits, cache = fn(params, tokens, positions, mask)
        chex.assert_shape(logits, (2, 7, config.vocab_size))
        assert logits.dtype == jnp.float32 and cache is None
        chex.assert_tree_all_finite(logits)  # Incl. fully padded query rows.

    def test_abstract_params_and_axes_match_init(self):
        config, params = tiny_params("tiny_qwen2")
        abstract = transformer.abstract_params(config)
        axes = transformer.logical_axes(config)
        jax.tree.map(lambda p, a: self.assertEqual((p.shape, p.dtype),
                                                   (a.shape, a.dtype)),
                     params, abstract)
        jax.tree.map(lambda p, names: self.assertEqual(p.ndim, len(names)),
                     abstract, axes, is_leaf=lambda x: isinstance(x, tuple))
        self.assertEqual(axes["layers"]["attn"]["q"],
                         ("layers", "embed", "heads", "head_dim"))
        self.assertNotIn("lm_head", params)  # Tied.
        n = sum(x.size for x in jax.tree.leaves(params))
        self.assertEqual(n, config.num_params)

    def test_bfloat16_params_and_compute(self):
        config32, params32 = tiny_params("tiny")
        config = config32.replace(param_dtype="bfloat16", compute_dtype="bfloat16")
        abstract = transformer.abstract_params(config)
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(abstract))
        params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params32)
        tokens, positions, mask = left_padded(3, 10, [0, 2, 5])
        logits, _ = APPLY(params, tokens, positions, mask, config=config)
        assert logits.dtype == jnp.float32
        chex.assert_tree_all_finite(logits)
        # The same (bf16-rounded) weights in float32: bf16 compute is close, not equal.
        logits32, _ = APPLY(jax.tree.map(lambda x: x.astype(jnp.float32), params),
                            tokens, positions, mask, config=config32)
        np.testing.assert_allclose(logits[mask], logits32[mask], atol=5e-2)


@pytest.mark.parametrize("name", TINY)
def test_incremental_decode_matches_full_forward(name):
    config, params = tiny_params(name)
    tokens, positions, mask = left_padded(3, 10, [0, 2, 5])
    full, _ = APPLY(params, tokens, positions, mask, config=config)

    # Prefill 6 slots, then decode one token at a time; the mask covers all 12
    # cache slots, with ones past the prompt (unwritten slots are hidden by s <= q).
    max_len, prompt = 12, 6
    cache_mask = jnp.concatenate([mask, jnp.ones((3, max_len - 10), bool)], axis=1)
    step = functools.partial(APPLY, config=config)
    cache = cache_lib.init_cache(config, 3, max_len)
    assert len(cache.k_NxKxDhxS) == len(cache.v_NxKxSxDh) == config.num_layers
    chex.assert_shape(cache.k_NxKxDhxS,
                      (3, config.num_kv_heads, config.head_dim, max_len))
    chex.assert_shape(cache.v_NxKxSxDh,
                      (3, config.num_kv_heads, max_len, config.head_dim))
    logits, cache = step(params, tokens[:, :prompt], positions[:, :prompt],
                         cache_mask, cache)
    pieces = [logits]
    for t in range(prompt, 10):
        logits, cache = step(params, tokens[:, t:t + 1], positions[:, t:t + 1],
                             cache_mask, cache)
        pieces.append(logits)
    assert int(cache.index) == 10
    incremental = jnp.concatenate(pieces, axis=1)
    np.testing.assert_allclose(incremental[mask], full[mask], atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_scanned_decode_matches_full_forward_and_unrolled(name):
    # decode_layers="scan": a stacked cache, the layers as one scan body that
    # reads it and writes the new slots after the scan. Prefill 6 slots of a
    # 12-slot cache, then one token at a time, in a while loop as the sampler does.
    config, params = tiny_params(name)
    tokens, positions, mask = left_padded(3, 10, [0, 2, 5])
    full, _ = APPLY(params, tokens, positions, mask, config=config)
    cache_mask = jnp.concatenate([mask, jnp.ones((3, 2), bool)], axis=1)

    @functools.partial(jax.jit, static_argnames="stacked")
    def run(params, *, stacked):
        cache = cache_lib.init_cache(config, 3, 12, stacked=stacked)
        prefill, cache = transformer.apply(params, tokens[:, :6], positions[:, :6],
                                           cache_mask, cache, config=config)

        def body(carry):
            t, cache, out = carry
            tok = jax.lax.dynamic_slice_in_dim(tokens, t, 1, axis=1)
            pos = jax.lax.dynamic_slice_in_dim(positions, t, 1, axis=1)
            logits, cache = transformer.apply(params, tok, pos, cache_mask, cache,
                                              config=config)
            return t + 1, cache, jax.lax.dynamic_update_slice_in_dim(out, logits, t, 1)

        out = jnp.zeros(full.shape, jnp.float32).at[:, :6].set(prefill)
        _, cache, out = jax.lax.while_loop(lambda c: c[0] < 10, body, (6, cache, out))
        return out, cache

    scanned, stacked = run(params, stacked=True)
    unrolled, per_layer = run(params, stacked=False)
    chex.assert_shape(stacked.k_LxNxKxDhxS, (config.num_layers, 3, config.num_kv_heads,
                                             config.head_dim, 12))
    assert stacked.k_NxKxDhxS is None and int(stacked.index) == 10
    np.testing.assert_allclose(scanned[mask], full[mask], atol=1e-5)
    np.testing.assert_allclose(scanned, unrolled, atol=1e-5)
    np.testing.assert_allclose(stacked.k_LxNxKxDhxS, jnp.stack(per_layer.k_NxKxDhxS),
                               atol=1e-5)
    np.testing.assert_allclose(stacked.v_LxNxKxSxDh, jnp.stack(per_layer.v_NxKxSxDh),
                               atol=1e-5)
    with pytest.raises(ValueError, match="per-layer cache"):
        APPLY(transformer.split_layers(params), tokens, positions, cache_mask,
              cache_lib.init_cache(config, 3, 12, stacked=True), config=config)


def test_scanned_prefill_over_a_written_cache_equals_unrolled():
    # A second multi-token call attends over the slots the first one wrote.
    config, params = tiny_params("tiny_qwen2")
    tokens, positions, mask = left_padded(2, 9, [0, 3])
    outs = []
    for stacked in (False, True):
        cache = cache_lib.init_cache(config, 2, 9, stacked=stacked)
        first, cache = APPLY(params, tokens[:, :5], positions[:, :5], mask, cache,
                             config=config)
        second, cache = APPLY(params, tokens[:, 5:], positions[:, 5:], mask, cache,
                              config=config)
        outs.append(jnp.concatenate([first, second], axis=1))
    full, _ = APPLY(params, tokens, positions, mask, config=config)
    np.testing.assert_allclose(outs[1][mask], full[mask], atol=1e-5)
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)


def test_extended_cache_decodes_like_a_full_size_one():
    # The sampler prefills P slots and widens the cache between decode loops.
    config, params = tiny_params("tiny")
    tokens, positions, mask = left_padded(2, 8, [0, 3])
    full, _ = APPLY(params, tokens, positions, mask, config=config)
    cache = cache_lib.init_cache(config, 2, 5)
    logits, cache = APPLY(params, tokens[:, :5], positions[:, :5], mask[:, :5], cache,
                          config=config)
    pieces = [logits]
    for t, width in [(5, 6), (6, 8), (7, 8)]:
        wider = cache_lib.extend(cache, width)
        chex.assert_shape(wider.v_NxKxSxDh, (2, config.num_kv_heads, width, config.head_dim))
        np.testing.assert_array_equal(wider.k_NxKxDhxS[0][..., :cache.max_length],
                                      cache.k_NxKxDhxS[0])
        assert not np.asarray(wider.v_NxKxSxDh[1][:, :, cache.max_length:]).any()
        logits, cache = APPLY(params, tokens[:, t:t + 1], positions[:, t:t + 1],
                              mask[:, :width], wider, config=config)
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1)[mask], full[mask], atol=1e-5)
    with pytest.raises(ValueError, match="8 slots to 4"):
        cache_lib.extend(cache, 4)


def test_decode_in_while_loop_matches_full_forward():
    # The cache is a valid lax.while_loop carry (what the sampler will do).
    config, params = tiny_params("tiny")
    tokens, positions, mask = left_padded(2, 8, [0, 3])
    full, _ = APPLY(params, tokens, positions, mask, config=config)

    @jax.jit
    def decode(params, cache):
        def body(carry):
            t, cache, out = carry
            tok = jax.lax.dynamic_slice_in_dim(tokens, t, 1, axis=1)
            pos = jax.lax.dynamic_slice_in_dim(positions, t, 1, axis=1)
            logits, cache = transformer.apply(params, tok, pos, mask, cache,
                                              config=config)
            return t + 1, cache, jax.lax.dynamic_update_slice_in_dim(out, logits, t, 1)
        out = jnp.zeros(full.shape, jnp.float32)
        return jax.lax.while_loop(lambda c: c[0] < 8, body, (0, cache, out))[2]

    out = decode(params, cache_lib.init_cache(config, 2, 8))
    np.testing.assert_allclose(out[mask], full[mask], atol=1e-5)


def test_split_layers_decode_equals_stacked():
    config, params = tiny_params("tiny_qwen3")
    tokens, positions, mask = left_padded(2, 6, [0, 2])
    cache_mask = jnp.concatenate([mask, jnp.ones((2, 2), bool)], axis=1)
    split = transformer.split_layers(params)
    assert len(split["layers"]) == config.num_layers
    chex.assert_shape(split["layers"][1]["attn"]["q"],
                      params["layers"]["attn"]["q"].shape[1:])
    outs = []
    for p in (params, split):
        cache = cache_lib.init_cache(config, 2, 8)
        logits, cache = APPLY(p, tokens[:, :5], positions[:, :5], cache_mask, cache,
                              config=config)
        step, cache = APPLY(p, tokens[:, 5:], positions[:, 5:], cache_mask, cache,
                            config=config)
        outs.append((logits, step, cache))
    jax.tree.map(np.testing.assert_array_equal, outs[0], outs[1])
    with pytest.raises(ValueError, match="cached"):
        APPLY(split, tokens, positions, mask, config=config)


def _computation(hlo: str, name: str) -> list[str]:
    """The instruction lines of computation `name` in an HLO module's text."""
    start = hlo.index(f"\n%{name} ") + 1
    return hlo[start:hlo.index("\n}", start)].splitlines()[1:]


def test_decode_loop_reads_weights_and_cache_in_place():
    # What makes decoding fast on CPU: inside the loop body no instruction
    # produces an array of a layer weight's or a cache buffer's shape, except
    # the in-place dynamic-update-slice that writes the new slot. (A stacked
    # cache or stacked weights sliced per layer would show up here as copies.)
    # Distinct sizes: D 28, N x H 24, K x H 12, F 36, V 44, S 14, B 3.
    config = config_lib.ModelConfig(vocab_size=44, embed_dim=28, num_layers=2,
                                    num_heads=4, num_kv_heads=2, head_dim=6,
                                    mlp_dim=36, qkv_bias=True)
    abstract = transformer.abstract_params(config)
    weight_shapes = {x.shape[1:] for x in jax.tree.leaves(abstract["layers"])
                     if x.ndim > 2}
    cache = cache_lib.init_cache(config, 3, 14)
    cache_shapes = {x.shape for x in cache.k_NxKxDhxS + cache.v_NxKxSxDh}
    mask = jnp.ones((3, 14), bool)

    def decode(params, cache):
        params = transformer.split_layers(params)

        def body(carry):
            t, cache = carry
            tokens = jnp.full((3, 1), 7, jnp.int32)
            _, cache = transformer.apply(params, tokens, t + tokens * 0, mask, cache,
                                         config=config)
            return t + 1, cache

        return jax.lax.while_loop(lambda c: c[0] < 12, body, (0, cache))[1]

    hlo = jax.jit(decode).lower(abstract, cache).compile().as_text()
    (body_name,) = re.findall(r"\bwhile\(.*\bbody=%([\w.-]+)", hlo)

    def shape_of(line: str) -> tuple[int, ...] | None:
        m = re.match(r"\s*(?:ROOT )?%[\w.-]+ = \w+\[([\d,]*)\]", line)
        return m and tuple(int(d) for d in m.group(1).split(",") if d)

    checked = 0
    for line in _computation(hlo, body_name):
        shape = shape_of(line)
        opcode = re.search(r"\} (\S+)\(", line) or re.search(r"\] (\S+)\(", line)
        if shape is None or opcode.group(1) in ("parameter", "get-tuple-element",
                                                "bitcast", "tuple"):
            continue
        assert shape not in weight_shapes, f"copies a layer weight: {line}"
        if shape in cache_shapes:
            called = re.search(r"calls=%([\w.-]+)", line)
            root = [l for l in _computation(hlo, called.group(1)) if "ROOT" in l]
            assert "dynamic-update-slice(" in root[0], f"copies the cache: {line}"
            checked += 1
    assert checked == 2 * config.num_layers  # One in-place write per buffer.


@pytest.mark.parametrize("name", TINY)
def test_left_padding_invariance(name):
    # Row 1 is row 0's last 6 tokens behind 4 pad slots; row 2 is the same 6 tokens
    # unpadded, followed by 4 arbitrary tokens that causality hides from them. So
    # row 1's logits at its valid slots 4..9 must equal row 2's at slots 0..5.
    config, params = tiny_params(name)
    x = np.random.RandomState(1).randint(1, 256, 10)
    tokens = np.stack([x, np.r_[[0] * 4, x[4:]], np.r_[x[4:], x[:4]]])
    mask = np.ones((3, 10), bool)
    mask[1, :4] = False
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    logits, _ = APPLY(params, jnp.asarray(tokens), jnp.asarray(positions),
                      jnp.asarray(mask), config=config)
    np.testing.assert_allclose(logits[1, 4:], logits[2, :6], atol=1e-5)


def test_causality_and_padding_gradients_are_exactly_zero():
    # Untied, so the LM head does not touch embedding rows. Distinct token ids per
    # slot make d logits[t] / d embedding[token at t'] the gradient wrt slot t'.
    config, params = tiny_params("tiny")
    tokens = jnp.arange(10, 20, dtype=jnp.int32)[None, :]
    mask = jnp.asarray([[False] * 3 + [True] * 7])
    positions = jnp.clip(jnp.cumsum(mask, axis=1) - 1, 0)
    t = 6

    def logit_sum(embedding):
        p = {**params, "embed": {"embedding": embedding}}
        logits, _ = transformer.apply(p, tokens, positions, mask, config=config)
        return logits[0, t].sum()

    grad_VxD = jax.jit(jax.grad(logit_sum))(params["embed"]["embedding"])
    row_norm = jnp.abs(grad_VxD[10:20]).sum(axis=1)
    assert (row_norm[t + 1:] == 0).all(), row_norm  # Future slots.
    assert (row_norm[:3] == 0).all(), row_norm  # Padding slots.
    assert (row_norm[3:t + 1] > 0).all(), row_norm


def test_remat_same_logits_and_grads():
    config, params = tiny_params("tiny")
    tokens, positions, mask = left_padded(2, 6, [0, 2])

    def loss(params, config):
        logits, _ = transformer.apply(params, tokens, positions, mask, config=config)
        return jnp.where(mask, jax.nn.logsumexp(logits, axis=-1), 0.0).sum()

    g1 = jax.jit(jax.grad(functools.partial(loss, config=config)))(params)
    g2 = jax.jit(jax.grad(functools.partial(
        loss, config=config.replace(remat=True))))(params)
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6), g1, g2)


def test_program_size_does_not_grow_with_depth():
    # The scan keeps one copy of the layer in the program, so 2 and 28 layers lower
    # to the same amount of HLO (compile time then follows; see benchmarks/model.py).
    def hlo_ops(num_layers: int) -> int:
        config = config_lib.PRESETS["tiny"].replace(num_layers=num_layers)
        abstract = transformer.abstract_params(config)
        tokens = jax.ShapeDtypeStruct((2, 8), jnp.int32)
        mask = jax.ShapeDtypeStruct((2, 8), bool)
        lowered = jax.jit(functools.partial(transformer.apply, config=config)).lower(
            abstract, tokens, tokens, mask)
        return lowered.as_text().count("\n")

    assert hlo_ops(28) == hlo_ops(2)


def test_hidden_then_unembed_equals_apply():
    # The train step scores tokens chunk by chunk from `hidden` + `unembed`.
    for name in ("tiny", "tiny_qwen2"):  # Untied and tied LM heads.
        config, params = tiny_params(name)
        tokens, positions, mask = left_padded(3, 10, [0, 2, 5])
        logits, _ = APPLY(params, tokens, positions, mask, config=config)

        @jax.jit
        def two_step(params):
            h, _ = transformer.hidden(params, tokens, positions, mask, config=config)
            chex.assert_shape(h, (3, 10, config.embed_dim))
            return transformer.unembed(params, h[:, 4:], config=config)

        np.testing.assert_allclose(two_step(params), logits[:, 4:], atol=1e-6)
