"""Validation and sanitising of the arrays every loss receives.

Shapes: N rows (sequences), T padded response tokens.

`prepare` runs before any computation (at trace time under `jit`, where shapes
are static) and guarantees three things every loss relies on:
- shapes agree, or a ValueError names the offending argument and the expected
  shape;
- no gradient reaches `old_logp`, `sampler_logp` or the advantages
  (`stop_gradient`), and none reaches `logp` at padded positions (padded values
  are *selected* away, so even a NaN or -inf there produces an exact zero);
- arithmetic runs in at least float32, whatever the model's compute dtype.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class PolicyInputs:
    """Sanitised loss inputs; padded positions of every BxT array hold 0."""

    logp_NxT: jax.Array
    old_logp_NxT: jax.Array
    adv_N: jax.Array
    mask_NxT: jax.Array  # bool
    sampler_logp_NxT: jax.Array | None


def check_shapes(
    logp_NxT: jax.Array,
    old_logp_NxT: jax.Array,
    adv_N: jax.Array,
    mask_NxT: jax.Array,
    sampler_logp_NxT: jax.Array | None = None,
) -> None:
    """Raises ValueError naming the first argument whose shape is wrong."""
    logp_shape = jnp.shape(logp_NxT)
    if len(logp_shape) != 2:
        raise ValueError(
            f"logp_NxT has shape {logp_shape}; expected a 2-D [N, T] array"
        )
    if not jnp.issubdtype(jnp.result_type(logp_NxT), jnp.floating):
        raise ValueError(
            f"logp_NxT has dtype {jnp.result_type(logp_NxT)}; expected a"
            " floating dtype"
        )
    batch, length = logp_shape
    expected = {
        "old_logp_NxT": (old_logp_NxT, (batch, length)),
        "adv_N": (adv_N, (batch,)),
        "mask_NxT": (mask_NxT, (batch, length)),
    }
    if sampler_logp_NxT is not None:
        expected["sampler_logp_NxT"] = (sampler_logp_NxT, (batch, length))
    for name, (array, shape) in expected.items():
        if jnp.shape(array) != shape:
            raise ValueError(
                f"{name} has shape {jnp.shape(array)}; expected {shape}"
                f" (N={batch}, T={length} from logp_NxT)"
            )


def prepare(
    logp_NxT: jax.Array,
    old_logp_NxT: jax.Array,
    adv_N: jax.Array,
    mask_NxT: jax.Array,
    sampler_logp_NxT: jax.Array | None = None,
) -> PolicyInputs:
    """Checks shapes, then returns float32-or-wider, gradient-safe inputs."""
    check_shapes(logp_NxT, old_logp_NxT, adv_N, mask_NxT, sampler_logp_NxT)
    dtype = jnp.promote_types(jnp.result_type(logp_NxT), jnp.float32)
    valid_NxT = jnp.asarray(mask_NxT).astype(bool)

    def zero_padding(x_NxT: jax.Array) -> jax.Array:
        return jnp.where(valid_NxT, jnp.asarray(x_NxT, dtype), 0.0)

    sampler = None
    if sampler_logp_NxT is not None:
        sampler = jax.lax.stop_gradient(zero_padding(sampler_logp_NxT))
    return PolicyInputs(
        logp_NxT=zero_padding(logp_NxT),
        old_logp_NxT=jax.lax.stop_gradient(zero_padding(old_logp_NxT)),
        adv_N=jax.lax.stop_gradient(jnp.asarray(adv_N, dtype)),
        mask_NxT=valid_NxT,
        sampler_logp_NxT=sampler,
    )


def clipped_log_ratio(
    logp_NxT: jax.Array, old_logp_NxT: jax.Array, clip: float
) -> jax.Array:
    """`clip(logp - old_logp, -clip, clip)`: the log of a ratio that stays finite."""
    return jnp.clip(logp_NxT - old_logp_NxT, -clip, clip)
