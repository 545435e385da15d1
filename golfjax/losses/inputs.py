"""Validation and sanitising of the arrays every loss receives.

Shapes: B rows (sequences), T padded response tokens.

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

    logp_BxT: jax.Array
    old_logp_BxT: jax.Array
    adv_B: jax.Array
    mask_BxT: jax.Array  # bool
    sampler_logp_BxT: jax.Array | None


def check_shapes(
    logp_BxT: jax.Array,
    old_logp_BxT: jax.Array,
    adv_B: jax.Array,
    mask_BxT: jax.Array,
    sampler_logp_BxT: jax.Array | None = None,
) -> None:
    """Raises ValueError naming the first argument whose shape is wrong."""
    logp_shape = jnp.shape(logp_BxT)
    if len(logp_shape) != 2:
        raise ValueError(
            f"logp_BxT has shape {logp_shape}; expected a 2-D [B, T] array"
        )
    if not jnp.issubdtype(jnp.result_type(logp_BxT), jnp.floating):
        raise ValueError(
            f"logp_BxT has dtype {jnp.result_type(logp_BxT)}; expected a"
            " floating dtype"
        )
    batch, length = logp_shape
    expected = {
        "old_logp_BxT": (old_logp_BxT, (batch, length)),
        "adv_B": (adv_B, (batch,)),
        "mask_BxT": (mask_BxT, (batch, length)),
    }
    if sampler_logp_BxT is not None:
        expected["sampler_logp_BxT"] = (sampler_logp_BxT, (batch, length))
    for name, (array, shape) in expected.items():
        if jnp.shape(array) != shape:
            raise ValueError(
                f"{name} has shape {jnp.shape(array)}; expected {shape}"
                f" (B={batch}, T={length} from logp_BxT)"
            )


def prepare(
    logp_BxT: jax.Array,
    old_logp_BxT: jax.Array,
    adv_B: jax.Array,
    mask_BxT: jax.Array,
    sampler_logp_BxT: jax.Array | None = None,
) -> PolicyInputs:
    """Checks shapes, then returns float32-or-wider, gradient-safe inputs."""
    check_shapes(logp_BxT, old_logp_BxT, adv_B, mask_BxT, sampler_logp_BxT)
    dtype = jnp.promote_types(jnp.result_type(logp_BxT), jnp.float32)
    valid_BxT = jnp.asarray(mask_BxT).astype(bool)

    def zero_padding(x_BxT: jax.Array) -> jax.Array:
        return jnp.where(valid_BxT, jnp.asarray(x_BxT, dtype), 0.0)

    sampler = None
    if sampler_logp_BxT is not None:
        sampler = jax.lax.stop_gradient(zero_padding(sampler_logp_BxT))
    return PolicyInputs(
        logp_BxT=zero_padding(logp_BxT),
        old_logp_BxT=jax.lax.stop_gradient(zero_padding(old_logp_BxT)),
        adv_B=jax.lax.stop_gradient(jnp.asarray(adv_B, dtype)),
        mask_BxT=valid_BxT,
        sampler_logp_BxT=sampler,
    )


def clipped_log_ratio(
    logp_BxT: jax.Array, old_logp_BxT: jax.Array, clip: float
) -> jax.Array:
    """`clip(logp - old_logp, -clip, clip)`: the log of a ratio that stays finite."""
    return jnp.clip(logp_BxT - old_logp_BxT, -clip, clip)
