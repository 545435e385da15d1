"""Preallocated KV cache for incremental decoding, per layer or stacked over layers.

Layout (letters as in golfjax/types.py and golfjax/models/layers.py). Per-layer
form (`stacked` False, the unrolled layers of `ModelConfig.decode_layers`):

  k_NxKxDhxS   tuple of L arrays, one per layer: keys (after RoPE), slots last.
  v_NxKxSxDh   tuple of L arrays, one per layer: values, head_dim last.
               Both in the compute dtype, S = max_length slots per row.
  index        int32 scalar: the next slot to write. Shared by all rows, because
               batches are left-padded so every row's last prompt token sits in
               the same slot.

Stacked form (`stacked` True, the scanned layers): the same arrays stacked on
a leading L axis, `k_LxNxKxDhxS` and `v_LxNxKxSxDh`, and the per-layer tuples
None.

Why two layouts. A decode step writes one slot of every layer and then reads
each layer's whole cache. With a separate buffer per layer, XLA updates it in
place and attention reads it where it lies; a stacked L x ... array carried
through a loop over layers has each layer's slice copied out on every step on
CPU (and a bf16 one converted to float32 around the loop), so on CPU the
layers run unrolled over per-layer buffers. That costs compile time: every
layer of every decode loop is its own copy in the program. On TPU (and on
GPU by choice, `models.config.resolve_decode_layers` says when) the layers
run as one `lax.scan` body over the stacked form: the scan reads each
layer's slice and returns the new tokens' keys and values, which are written
into the stacked arrays once, after the scan (golfjax/models/transformer.py).
Heads come before slots so that each (row, kv head) block is contiguous;
keys put S last and values Dh last so that both decode products are plain
matrix products per (row, kv head) over the cache as it lies
(`layers.decode_attention`).

`apply(..., cache=cache)` with Q new tokens writes their keys and values at slots
[index, index + Q) of every layer, attends over all S slots under the mask rule
below, and returns the cache with `index + Q`. Writing past S is not checked inside
jit (`lax.dynamic_update_slice` clamps the start); the sampler sizes S as
prompt bucket + max new tokens.

Attention mask with a cache: `attention_mask_NxS` covers all S slots (True = a
real token). A query in slot q = index + t sees key slot s iff
`attention_mask_NxS[b, s] and s <= q`. Slots not yet written are excluded by
`s <= q`, so a sampler can pass `concat([prompt_mask_NxP, ones_Bx(S-P)])` for the
whole decode. RoPE positions are independent of slots: `positions_NxQ` for a
left-padded row count from its first real token.

Recent buffer (`with_recent` / `merge_recent`, per-layer form only): for a
decode loop, a cache may carry float32 keys and values for the W slots
[recent_start, recent_start + W) after its S main slots; `max_length` is then
S + W. Each decode step writes its token there and only reads the main arrays.
XLA's CPU backend performs a bf16 dynamic-update-slice by converting the whole
buffer to float32 and back, so a one-slot write into a bf16 cache would read
and write all of a layer's cache on every step; a float32 buffer is updated in
place, and at W of S + W slots its wider reads cost less than that. The decode
loop merges it into the main arrays once, after the loop.

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
from golfjax.models import platform as platform_lib
from golfjax.models.config import ModelConfig, resolve_decode_layers

# Logical axes of each layer's keys and values, and of the stacked arrays; the
# slot axis is not sharded, nor the layer axis ("layers" maps to no mesh axis).
CACHE_LOGICAL_AXES: dict[str, tuple[str | None, ...]] = {
    "k_NxKxDhxS": ("batch", "kv_heads", "head_dim", None),
    "v_NxKxSxDh": ("batch", "kv_heads", None, "head_dim"),
    "k_LxNxKxDhxS": ("layers", "batch", "kv_heads", "head_dim", None),
    "v_LxNxKxSxDh": ("layers", "batch", "kv_heads", None, "head_dim"),
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    k_NxKxDhxS: tuple[jax.Array, ...] | None  # One per layer; None when stacked.
    v_NxKxSxDh: tuple[jax.Array, ...] | None  # One per layer; None when stacked.
    index: jax.Array  # int32 scalar, the next slot to write.
    # Optional recent buffer (module docstring): float32, one per layer.
    recent_k_NxKxDhxW: tuple[jax.Array, ...] | None = None
    recent_v_NxKxWxDh: tuple[jax.Array, ...] | None = None
    recent_start: jax.Array | None = None  # int32 scalar: slot of recent column 0.
    # The stacked form (module docstring): all layers in one array each.
    k_LxNxKxDhxS: jax.Array | None = None
    v_LxNxKxSxDh: jax.Array | None = None

    @property
    def stacked(self) -> bool:
        """Whether the layers' keys and values are stacked on a leading L axis."""
        return self.v_LxNxKxSxDh is not None

    @property
    def max_length(self) -> int:
        """Slots a mask must cover: the main ones, plus the recent buffer's."""
        if self.stacked:
            return self.v_LxNxKxSxDh.shape[3]
        recent = 0 if self.recent_v_NxKxWxDh is None else self.recent_v_NxKxWxDh[0].shape[2]
        return self.v_NxKxSxDh[0].shape[2] + recent

    def layer(self, i: int) -> tuple[jax.Array, jax.Array, Any]:
        """Layer i's (keys, values, recent or None), as `layers.Attention` takes it."""
        if self.stacked:
            raise ValueError("a stacked cache is read by the scanned layers, "
                             "not layer by layer")
        recent = None
        if self.recent_v_NxKxWxDh is not None:
            recent = (self.recent_k_NxKxDhxW[i], self.recent_v_NxKxWxDh[i],
                      self.recent_start)
        return self.k_NxKxDhxS[i], self.v_NxKxSxDh[i], recent

    def replace(self, **changes: Any) -> KVCache:
        return dataclasses.replace(self, **changes)


def default_stacked(config: ModelConfig, platform: str | None = None) -> bool:
    """Whether `config`'s cached forward scans its layers on `platform`.

    `platform` defaults to the platform being traced for
    (`golfjax.models.platform.current`); `ModelConfig.decode_layers` ("auto"
    resolved by `resolve_decode_layers`) decides.
    """
    return resolve_decode_layers(config, platform or platform_lib.current()) == "scan"


def _shapes(config: ModelConfig, batch_size: int, max_length: int, stacked: bool
            ) -> dict[str, tuple[int, ...]]:
    """Each array's shape: one layer's (per-layer form) or the stacked one's."""
    b, k, s, h = batch_size, config.num_kv_heads, max_length, config.head_dim
    if stacked:
        n = config.num_layers
        return {"k_LxNxKxDhxS": (n, b, k, h, s), "v_LxNxKxSxDh": (n, b, k, s, h)}
    return {"k_NxKxDhxS": (b, k, h, s), "v_NxKxSxDh": (b, k, s, h)}


def init_cache(config: ModelConfig, batch_size: int, max_length: int,
               dtype: jnp.dtype | str | None = None, *,
               stacked: bool | None = None) -> KVCache:
    """An empty cache with `index = 0`; dtype defaults to `config.compute_dtype`.

    `stacked` picks the form (module docstring); it defaults to
    `default_stacked(config)`, the one `transformer.apply` is fastest with on
    this backend.
    """
    dtype = jnp.dtype(dtype or config.compute_dtype)
    if stacked is None:
        stacked = default_stacked(config)
    index = jnp.zeros((), jnp.int32)
    shapes = _shapes(config, batch_size, max_length, stacked)
    if stacked:
        return KVCache(k_NxKxDhxS=None, v_NxKxSxDh=None, index=index,
                       **{name: jnp.zeros(shape, dtype) for name, shape in shapes.items()})
    return KVCache(
        **{name: tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
           for name, shape in shapes.items()},
        index=index)


def _pad(x: jax.Array, axis: int, grow: int) -> jax.Array:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, grow)
    return jnp.pad(x, widths)


def extend(cache: KVCache, max_length: int) -> KVCache:
    """`cache` with `max_length` >= its slots; the new ones, at the end, are zero."""
    if cache.recent_v_NxKxWxDh is not None:
        raise ValueError("extend a cache after merging its recent buffer")
    grow = max_length - cache.max_length
    if grow < 0:
        raise ValueError(f"cannot extend a cache of {cache.max_length} slots to "
                         f"{max_length}")
    if cache.stacked:
        return cache.replace(k_LxNxKxDhxS=_pad(cache.k_LxNxKxDhxS, 4, grow),
                             v_LxNxKxSxDh=_pad(cache.v_LxNxKxSxDh, 3, grow))
    return cache.replace(k_NxKxDhxS=tuple(_pad(k, 3, grow) for k in cache.k_NxKxDhxS),
                         v_NxKxSxDh=tuple(_pad(v, 2, grow) for v in cache.v_NxKxSxDh))


def repeat_rows(cache: KVCache, repeats: int) -> KVCache:
    """`cache` with each row repeated `repeats` times in place (row b -> rows
    b * repeats .. b * repeats + repeats - 1), in either form."""
    if cache.recent_v_NxKxWxDh is not None:
        raise ValueError("repeat a cache's rows before adding a recent buffer")

    def repeat(x: jax.Array, axis: int) -> jax.Array:
        return jnp.repeat(x, repeats, axis=axis,
                          total_repeat_length=x.shape[axis] * repeats)

    if cache.stacked:
        return cache.replace(k_LxNxKxDhxS=repeat(cache.k_LxNxKxDhxS, 1),
                             v_LxNxKxSxDh=repeat(cache.v_LxNxKxSxDh, 1))
    return cache.replace(k_NxKxDhxS=tuple(repeat(k, 0) for k in cache.k_NxKxDhxS),
                         v_NxKxSxDh=tuple(repeat(v, 0) for v in cache.v_NxKxSxDh))


def with_recent(cache: KVCache, width: int) -> KVCache:
    """`cache` with an empty float32 recent buffer of `width` slots at its index.

    The main arrays must hold every slot before the index: the recent slots
    follow them, and the mask then covers S + width slots. Per-layer form only.
    """
    if cache.stacked:
        raise ValueError("a recent buffer is for the per-layer (unrolled) cache, "
                         "not the stacked one")
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
                    rules: sharding_lib.Rules = sharding_lib.LOGICAL_RULES, *,
                    stacked: bool | None = None) -> KVCache:
    """NamedShardings for `init_cache(config, batch_size, max_length, stacked=...)`
    on `mesh`; `stacked` defaults to `default_stacked` on the mesh's platform."""
    if stacked is None:
        stacked = default_stacked(config, mesh.devices.flat[0].platform)
    shardings = {name: sharding_lib.logical_to_sharding(
        CACHE_LOGICAL_AXES[name], mesh, rules, shape=shape, what="KV cache")
        for name, shape in _shapes(config, batch_size, max_length, stacked).items()}
    index = NamedSharding(mesh, PartitionSpec())
    if stacked:
        return KVCache(k_NxKxDhxS=None, v_NxKxSxDh=None, index=index, **shardings)
    return KVCache(**{name: (sharding,) * config.num_layers
                      for name, sharding in shardings.items()}, index=index)
