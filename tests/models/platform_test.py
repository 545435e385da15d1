"""golfjax/models/platform.py: choices follow the devices traced for, not the host."""

import jax
import jax.numpy as jnp

from golfjax import sharding
from golfjax.models import attention, platform


def test_compiling_for_sets_the_platform_inside_the_block_only():
    assert platform.current() == jax.default_backend() == "cpu"
    with platform.compiling_for("tpu"):
        assert platform.current() == "tpu"
        with platform.compiling_for(sharding.make_mesh(1, -1, 1)):
            assert platform.current() == "cpu"  # A mesh: its devices' platform.
        assert platform.current() == "tpu"
    assert platform.current() == "cpu"
    assert platform.of(None) == platform.of(sharding.make_mesh(1, -1, 1)) == "cpu"


def test_auto_attention_traced_for_tpu_is_splash():
    s = jax.ShapeDtypeStruct
    q, kv = s((2, 256, 2, 4, 64), jnp.bfloat16), s((2, 256, 2, 64), jnp.bfloat16)

    def lowered(target):
        def f(q, k, v, m):
            with platform.compiling_for(target):
                return attention.attention(q, k, v, m)  # implementation="auto"
        return jax.jit(f).trace(q, kv, kv, s((2, 256), jnp.bool_)).lower(
            lowering_platforms=("tpu",)).as_text()

    assert "tpu_custom_call" in lowered("tpu")
    assert "tpu_custom_call" not in lowered("cpu")  # The host's choice: blockwise.
