"""Preallocated KV cache for incremental decoding.

Layout (letters as in golfjax/types.py and golfjax/models/layers.py):

  k_NxKxDhxS   tuple of L arrays, one per layer: keys (after RoPE), slots last.
  v_NxKxSxDh   tuple of L arrays, one per layer: values, head_dim last.
               Both in the compute dtype, S = max_length slots per row.
  index        int32 scalar: the next slot to write. Shared by all rows, because
               batches are left-padded so every row's last prompt token sits in
               the same slot.

Why this layout. A decode step writes one slot of every layer and then reads
each layer's whole cache. With a separate buffer per layer, XLA updates it in
place and attention reads it where it lies; a stacked L x ... array carried
through a loop over layers has each layer's slice copied out on every step on
CPU. Heads come before slots so that each (row, kv head) block is contiguous;
keys put S last and values Dh last so that both decode products are plain
matrix products per (row, kv head) over the cache as it lies
(`layers.decode_attention`).

`apply(..., cache=cache)` with T new tokens writes their keys and values at slots
[index, index + T) of every layer, attends over all S slots under the mask rule
below, and returns the cache with `index + T`. Writing past S is not checked inside
jit (`lax.dynamic_update_slice` clamps the start); the sampler sizes S as
prompt bucket + max new tokens.

Attention mask with a cache: `attention_mask_NxS` covers all S slots (True = a
real token). A query in slot q = index + t sees key slot s iff
`attention_mask_NxS[b, s] and s <= q`. Slots not yet written are excluded by
`s <= q`, so a sampler can pass `concat([prompt_mask_NxP, ones_Bx(S-P)])` for the
whole decode. RoPE positions are independent of slots: `positions_NxT` for a
left-padded row count from its first real token.

Recent buffer (`with_recent` / `merge_recent`): for a decode loop, a cache may
carry float32 keys and values for the W slots [recent_start, recent_start + W)
after its S main slots; `max_length` is then S + W. Each decode step writes its
token there and only reads the main arrays. XLA's CPU backend performs a bf16
dynamic-update-slice by converting the whole buffer to float32 and back, so a
one-slot write into a bf16 cache would read and write all of a layer's cache
on every step; a float32 buffer is updated in place, and at W of S + W slots
its wider reads cost less than that. The decode loop merges it into the main
arrays once, after the loop.

The cache is a registered pytree dataclass (array leaves, no static fields), so
it can be the carry of `lax.while_loop` and donated to `jax.jit`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from golfjax import sharding as sharding_lib
from golfjax.models.config import ModelConfig

# Logical axes of each layer's keys and values; the slot axis is not sharded.
CACHE_LOGICAL_AXES: dict[str, tuple[str | None, ...]] = {
    "k_NxKxDhxS": ("batch", "kv_heads", "head_dim", None),
    "v_NxKxSxDh": ("batch", "kv_heads", None, "head_dim"),
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    k_NxKxDhxS: tuple[jax.Array, ...]  # One per layer.
    v_NxKxSxDh: tuple[jax.Array, ...]  # One per layer.
    index: jax.Array  # int32 scalar, the next slot to write.
    # Optional recent buffer (module docstring): float32, one per layer.
    recent_k_NxKxDhxW: tuple[jax.Array, ...] | None = None
    recent_v_NxKxWxDh: tuple[jax.Array, ...] | None = None
    recent_start: jax.Array | None = None  # int32 scalar: slot of recent column 0.

    @property
    def max_length(self) -> int:
        """Slots a mask must cover: the main ones, plus the recent buffer's."""
        recent = 0 if self.recent_v_NxKxWxDh is None else self.recent_v_NxKxWxDh[0].shape[2]
        return self.v_NxKxSxDh[0].shape[2] + recent

    def layer(self, i: int) -> tuple[jax.Array, jax.Array, Any]:
        """Layer i's (keys, values, recent or None), as `layers.Attention` takes it."""
        recent = None
        if self.recent_v_NxKxWxDh is not None:
            recent = (self.recent_k_NxKxDhxW[i], self.recent_v_NxKxWxDh[i],
                      self.recent_start)
        return self.k_NxKxDhxS[i], self.v_NxKxSxDh[i], recent

    def replace(self, **changes: jax.Array | tuple[jax.Array, ...]) -> KVCache:
        return dataclasses.replace(self, **changes)


def _layer_shapes(config: ModelConfig, batch_size: int, max_length: int
                  ) -> dict[str, tuple[int, int, int, int]]:
    b, k, s, h = batch_size, config.num_kv_heads, max_length, config.head_dim
    return {"k_NxKxDhxS": (b, k, h, s), "v_NxKxSxDh": (b, k, s, h)}


def init_cache(config: ModelConfig, batch_size: int, max_length: int,
               dtype: jnp.dtype | str | None = None) -> KVCache:
    """An empty cache with `index = 0`; dtype defaults to `config.compute_dtype`."""
    dtype = jnp.dtype(dtype or config.compute_dtype)
    shapes = _layer_shapes(config, batch_size, max_length)
    return KVCache(
        **{name: tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
           for name, shape in shapes.items()},
        index=jnp.zeros((), jnp.int32))


def extend(cache: KVCache, max_length: int) -> KVCache:
    """`cache` with `max_length` >= its slots; the new ones, at the end, are zero."""
    if cache.recent_v_NxKxWxDh is not None:
        raise ValueError("extend a cache after merging its recent buffer")
    grow = max_length - cache.max_length
    if grow < 0:
        raise ValueError(f"cannot extend a cache of {cache.max_length} slots to "
                         f"{max_length}")

    def pad(x: jax.Array, axis: int) -> jax.Array:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, grow)
        return jnp.pad(x, widths)

    return cache.replace(k_NxKxDhxS=tuple(pad(k, 3) for k in cache.k_NxKxDhxS),
                         v_NxKxSxDh=tuple(pad(v, 2) for v in cache.v_NxKxSxDh))


def with_recent(cache: KVCache, width: int) -> KVCache:
    """`cache` with an empty float32 recent buffer of `width` slots at its index.

    The main arrays must hold every slot before the index: the recent slots
    follow them, and the mask then covers S + width slots.
    """
    if cache.recent_v_NxKxWxDh is not None:
        raise ValueError("cache already has a recent buffer")
    b, k, h, _ = cache.k_NxKxDhxS[0].shape
    return cache.replace(
        recent_k_NxKxDhxW=tuple(jnp.zeros((b, k, h, width), jnp.float32)
                               for _ in cache.k_NxKxDhxS),
        recent_v_NxKxWxDh=tuple(jnp.zeros((b, k, width, h), jnp.float32)
                               for _ in cache.v_NxKxSxDh),
        recent_start=cache.index.astype(jnp.int32))


def merge_recent(cache: KVCache, max_length: int) -> KVCache:
    """The recent buffer written into main arrays of `max_length` slots.

    `max_length` must hold `recent_start + W` (the recent slots, written or
    not); the buffer is dropped.
    """
    if cache.recent_v_NxKxWxDh is None:
        raise ValueError("cache has no recent buffer to merge")
    width = cache.recent_v_NxKxWxDh[0].shape[2]
    main = extend(cache.replace(recent_k_NxKxDhxW=None, recent_v_NxKxWxDh=None,
                                recent_start=None), max_length)
    zero = jnp.zeros((), jnp.int32)
    # Clamp so the write never shifts: slots past max_length are never read.
    start = jnp.minimum(cache.recent_start, max_length - width)
    keys = tuple(jax.lax.dynamic_update_slice(k, r.astype(k.dtype), (zero, zero, zero, start))
                 for k, r in zip(main.k_NxKxDhxS, cache.recent_k_NxKxDhxW))
    values = tuple(jax.lax.dynamic_update_slice(v, r.astype(v.dtype), (zero, zero, start, zero))
                   for v, r in zip(main.v_NxKxSxDh, cache.recent_v_NxKxWxDh))
    return main.replace(k_NxKxDhxS=keys, v_NxKxSxDh=values)


def cache_shardings(config: ModelConfig, batch_size: int, max_length: int,
                    mesh: Mesh,
                    rules: sharding_lib.Rules = sharding_lib.LOGICAL_RULES
                    ) -> KVCache:
    """NamedShardings for `init_cache(config, batch_size, max_length)` on `mesh`."""
    shapes = _layer_shapes(config, batch_size, max_length)
    return KVCache(
        **{name: (sharding_lib.logical_to_sharding(
            CACHE_LOGICAL_AXES[name], mesh, rules, shape=shape,
            what="KV cache"),) * config.num_layers
           for name, shape in shapes.items()},
        index=NamedSharding(mesh, PartitionSpec()))
