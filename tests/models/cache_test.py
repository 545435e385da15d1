"""golfjax/models/cache.py: the recent buffer decodes exactly like in-place writes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
