"""Preallocated KV cache for incremental decoding.

Layout (letters as in golfjax/models/layers.py):

  k_LxBxSxKxH, v_LxBxSxKxH   keys (after RoPE) and values of every layer, in the
                             compute dtype; S = max_length slots per row.
  index                      int32 scalar: the next slot to write. Shared by all
                             rows, because batches are left-padded so every row's
                             last prompt token sits in the same slot.

`apply(..., cache=cache)` with T new tokens writes their keys and values at slots
[index, index + T) of every layer, attends over all S slots under the mask rule
below, and returns the cache with `index + T`. Writing past S is not checked inside
jit (`lax.dynamic_update_slice` clamps the start); the sampler sizes S as
prompt bucket + max new tokens.

Attention mask with a cache: `attention_mask_BxS` covers all S slots (True = a
real token). A query in slot q = index + t sees key slot s iff
`attention_mask_BxS[b, s] and s <= q`. Slots not yet written are excluded by
`s <= q`, so a sampler can pass `concat([prompt_mask_BxP, ones_Bx(S-P)])` for the
whole decode. RoPE positions are independent of slots: `positions_BxT` for a
left-padded row count from its first real token.

The cache is a registered pytree dataclass (three array leaves, no static fields),
so it can be the carry of `lax.while_loop` / `lax.scan` and donated to `jax.jit`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from golfjax import sharding as sharding_lib
from golfjax.models.config import ModelConfig

# Logical axes of k_LxBxSxKxH and v_LxBxSxKxH; the slot axis is not sharded.
CACHE_LOGICAL_AXES: tuple[str | None, ...] = (
    "layers", "batch", None, "kv_heads", "head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  k_LxBxSxKxH: jax.Array
  v_LxBxSxKxH: jax.Array
  index: jax.Array  # int32 scalar, the next slot to write.

  @property
  def max_length(self) -> int:
    return self.k_LxBxSxKxH.shape[2]

  def replace(self, **changes: jax.Array) -> KVCache:
    return dataclasses.replace(self, **changes)


def init_cache(config: ModelConfig, batch_size: int, max_length: int,
               dtype: jnp.dtype | str | None = None) -> KVCache:
  """An empty cache with `index = 0`; dtype defaults to `config.compute_dtype`."""
  shape = (config.num_layers, batch_size, max_length, config.num_kv_heads,
           config.head_dim)
  dtype = jnp.dtype(dtype or config.compute_dtype)
  return KVCache(k_LxBxSxKxH=jnp.zeros(shape, dtype),
                 v_LxBxSxKxH=jnp.zeros(shape, dtype),
                 index=jnp.zeros((), jnp.int32))


def cache_shardings(config: ModelConfig, batch_size: int, max_length: int,
                    mesh: Mesh,
                    rules: sharding_lib.Rules = sharding_lib.LOGICAL_RULES
                    ) -> KVCache:
  """NamedShardings for `init_cache(config, batch_size, max_length)` on `mesh`."""
  shape = (config.num_layers, batch_size, max_length, config.num_kv_heads,
           config.head_dim)
  kv = sharding_lib.logical_to_sharding(CACHE_LOGICAL_AXES, mesh, rules,
                                        shape=shape, what="KV cache")
  return KVCache(k_LxBxSxKxH=kv, v_LxBxSxKxH=kv,
                 index=NamedSharding(mesh, PartitionSpec()))
