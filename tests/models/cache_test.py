"""golfjax/models/cache.py: the recent buffer decodes exactly like in-place writes;
the stacked form holds what the per-layer one does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golfjax import sharding as sharding_lib
from golfjax.models import PRESETS, transformer
from golfjax.models import cache as cache_lib


@pytest.mark.parametrize("name", ["tiny", "tiny_qwen2"])
def test_recent_buffer_decode_equals_direct_writes(name):
    config = PRESETS[name]
    params = transformer.init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    b, p, steps = 2, 5, 6
    mask = np.ones((b, p + steps), bool)
    mask[1, :2] = False  # Row 1 is left-padded.
    tokens = jnp.asarray(rng.integers(1, config.vocab_size, (b, p + steps)))
    positions = jnp.asarray(np.clip(np.cumsum(mask, axis=1) - 1, 0, None))
    mask = jnp.asarray(mask)
    apply = jax.jit(transformer.apply, static_argnames="config")

    _, prefilled = apply(params, tokens[:, :p], positions[:, :p], mask[:, :p],
                         cache_lib.init_cache(config, b, p), config=config)
    direct = cache_lib.extend(prefilled, p + steps)
    recent = cache_lib.with_recent(prefilled, steps)
    assert recent.max_length == direct.max_length == p + steps
    for i in range(p, p + steps):
        want, direct = apply(params, tokens[:, i:i + 1], positions[:, i:i + 1], mask,
                             direct, config=config)
        got, recent = apply(params, tokens[:, i:i + 1], positions[:, i:i + 1], mask,
                            recent, config=config)
        np.testing.assert_allclose(got, want, atol=1e-5)
    merged = cache_lib.merge_recent(recent, p + steps)
    assert merged.recent_v_NxKxWxDh is None and int(merged.index) == p + steps
    for a, b_ in zip(merged.k_NxKxDhxS + merged.v_NxKxSxDh,
                     direct.k_NxKxDhxS + direct.v_NxKxSxDh):
        np.testing.assert_allclose(a, b_, atol=1e-6)


def test_recent_buffer_misuse_is_refused():
    config = PRESETS["tiny"]
    cache = cache_lib.with_recent(cache_lib.init_cache(config, 1, 4), 2)
    with pytest.raises(ValueError, match="already has a recent buffer"):
        cache_lib.with_recent(cache, 2)
    with pytest.raises(ValueError, match="after merging"):
        cache_lib.extend(cache, 8)
    with pytest.raises(ValueError, match="no recent buffer"):
        cache_lib.merge_recent(cache_lib.init_cache(config, 1, 4), 6)
    params = transformer.init_params(config, jax.random.key(0))
    with pytest.raises(ValueError, match="one token per call"):
        transformer.apply(params, jnp.ones((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32),
                          jnp.ones((1, 6), bool), cache, config=config)


def test_stacked_cache_extends_and_repeats_rows_like_the_per_layer_one():
    config = PRESETS["tiny"]
    rng = np.random.default_rng(0)
    layers = [cache_lib.init_cache(config, 2, 5, stacked=False)]
    layers[0] = layers[0].replace(
        k_NxKxDhxS=tuple(jnp.asarray(rng.normal(size=k.shape), jnp.float32)
                         for k in layers[0].k_NxKxDhxS),
        v_NxKxSxDh=tuple(jnp.asarray(rng.normal(size=v.shape), jnp.float32)
                         for v in layers[0].v_NxKxSxDh))
    per_layer = layers[0]
    stacked = cache_lib.init_cache(config, 2, 5, stacked=True).replace(
        k_LxNxKxDhxS=jnp.stack(per_layer.k_NxKxDhxS),
        v_LxNxKxSxDh=jnp.stack(per_layer.v_NxKxSxDh))
    assert stacked.stacked and not per_layer.stacked
    assert stacked.k_NxKxDhxS is None and stacked.max_length == per_layer.max_length == 5
    for change in (lambda c: cache_lib.extend(c, 9),
                   lambda c: cache_lib.repeat_rows(c, 3)):
        a, b = change(per_layer), change(stacked)
        assert a.max_length == b.max_length
        np.testing.assert_array_equal(jnp.stack(a.k_NxKxDhxS), b.k_LxNxKxDhxS)
        np.testing.assert_array_equal(jnp.stack(a.v_NxKxSxDh), b.v_LxNxKxSxDh)
    repeated = cache_lib.repeat_rows(stacked, 3)
    np.testing.assert_array_equal(repeated.v_LxNxKxSxDh[:, 3], stacked.v_LxNxKxSxDh[:, 1])
    with pytest.raises(ValueError, match="per-layer"):
        cache_lib.with_recent(stacked, 2)
    with pytest.raises(ValueError, match="stacked"):
        stacked.layer(0)


def test_stacked_cache_shardings_leave_layers_and_slots_whole():
    config = PRESETS["tiny"]
    mesh = sharding_lib.make_mesh(data=2, fsdp=2, tensor=2)
    shardings = cache_lib.cache_shardings(config, 4, 6, mesh, stacked=True)
    assert shardings.k_NxKxDhxS is None
    assert tuple(shardings.k_LxNxKxDhxS.spec) == (None, ("data", "fsdp"), "tensor", None, None)
    assert tuple(shardings.v_LxNxKxSxDh.spec) == (None, ("data", "fsdp"), "tensor", None, None)
    cache = jax.device_put(cache_lib.init_cache(config, 4, 6, stacked=True), shardings)
    assert cache.k_LxNxKxDhxS.sharding == shardings.k_LxNxKxDhxS
