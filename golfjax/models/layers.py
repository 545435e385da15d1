"""Transformer building blocks as Flax NNX modules: RMSNorm, RoPE, GQA, SwiGLU,
and the mixture of SwiGLU experts of MoE layers.

Shape letters: the project's (golfjax/types.py), used in every tensor name in
golfjax/models. A forward pass runs over rows:
  N rows                  Q query tokens in this call     S key slots
  D embed_dim             H query heads                   K key/value heads
  R = H // K              Dh head_dim                     F mlp_dim
  V vocab_size            L layers                        W recent-buffer slots
  I, O a dense layer's input and output features
  E experts               A experts per token (MoE layers; F is then moe_mlp_dim)
Without a cache the Q tokens are the whole sequence (Q = S); a prefill has
the P prompt tokens, a decode step one.

Every parameter is an `nnx.Param` whose `out_sharding` metadata holds its logical
axis names (see golfjax/sharding.py). `eager_sharding=False` keeps the names as
metadata only: placement is decided by `golfjax.sharding` rules, never by Flax at
variable creation. Parameters are stored in `param_dtype` and cast to
`compute_dtype` where used; norm statistics and softmax run in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from golfjax.models import attention as attention_lib
from golfjax.models import moe as moe_lib
from golfjax.models import platform as platform_lib
from golfjax.models.config import ModelConfig

_INIT_STD = 0.02  # transformers' default initializer_range.
# One layer's cache: keys, values, and an optional recent buffer (keys, values,
# first slot); see `Attention.__call__`.
LayerCache = tuple[jax.Array, jax.Array,
                   tuple[jax.Array, jax.Array, jax.Array] | None]


def _param(init: Any, key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype,
           names: tuple[str, ...]) -> nnx.Param:
    return nnx.Param(init(key, shape, dtype), out_sharding=names,
                     eager_sharding=False)


def _normal(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    return _INIT_STD * jax.random.normal(key, shape, dtype)


def _zeros(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    del key
    return jnp.zeros(shape, dtype)


def _ones(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    del key
    return jnp.ones(shape, dtype)


def _dense(x_NxQxI: jax.Array, w_IxO: jax.Array) -> jax.Array:
    """`x @ w` over the last axis, as one 2-D matmul over all leading positions.

    Flattening N x Q first matters on CPU: XLA lowers a dot that contracts two
    axes (the weight gradient of a 3-D einsum contracts both N and Q) to a
    generic loop rather than a GEMM; on TPU/GPU both forms compile to the same
    kernel.
    """
    lead = x_NxQxI.shape[:-1]
    # On CPU a bf16 x bf16 -> bf16 dot is computed by converting both operands
    # (the whole weight) to float32 first; asking for the float32 product runs
    # it on the bf16 operands directly. Elsewhere the dot stays in its dtype.
    wide = jnp.float32 if platform_lib.current() == "cpu" else None
    y = jnp.dot(x_NxQxI.reshape(-1, x_NxQxI.shape[-1]), w_IxO,
                preferred_element_type=wide).astype(x_NxQxI.dtype)
    return y.reshape(lead + (w_IxO.shape[-1],))


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis, computed in float32 as transformers does."""

    def __init__(self, dim: int, axis_name: str, config: ModelConfig):
        self.eps = config.rms_norm_eps
        self.scale = _param(_ones, None, (dim,), config.param_jnp_dtype, (axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        x_f32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x_f32), axis=-1, keepdims=True)
        normed = (x_f32 * jax.lax.rsqrt(var + self.eps)).astype(x.dtype)
        scale = self.scale[...].astype(x.dtype).reshape((1,) * (x.ndim - 1) + (-1,))
        return normed * scale


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies [Dh/2], float32, incl. llama3 scaling, as transformers.

    A NumPy constant: it depends only on the config, so it folds into the program.
    """
    h = config.head_dim
    inv_freq = (1.0 / (config.rope_theta ** (
        np.arange(0, h, 2, dtype=np.float32) / np.float32(h)))).astype(np.float32)
    s = config.rope_scaling
    if s is None:
        return inv_freq
    # transformers `_compute_llama3_parameters`.
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = ((s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
              (s.high_freq_factor - s.low_freq_factor))
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_sin_cos(positions_NxQ: jax.Array,
                 config: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """sin, cos of shape [N, Q, Dh] in float32 (HF layout: the Dh/2 freqs twice)."""
    inv_freq = jnp.asarray(rope_inv_freq(config))
    freqs_NxQxDh2 = (positions_NxQ.astype(jnp.float32)[:, :, None] *
                    inv_freq[None, None, :])
    emb_NxQxDh = jnp.concatenate([freqs_NxQxDh2, freqs_NxQxDh2], axis=-1)
    return jnp.sin(emb_NxQxDh), jnp.cos(emb_NxQxDh)


def apply_rope(x_NxQxHxDh: jax.Array, sin_NxQxDh: jax.Array,
               cos_NxQxDh: jax.Array) -> jax.Array:
    """HF rotate-half RoPE: x * cos + rotate_half(x) * sin, in float32."""
    x = x_NxQxHxDh.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    sin, cos = sin_NxQxDh[:, :, None, :], cos_NxQxDh[:, :, None, :]
    return (x * cos + rotated * sin).astype(x_NxQxHxDh.dtype)


class Attention(nnx.Module):
    """Grouped-query attention with optional qkv bias (Qwen 2) and q/k norm (Qwen 3)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        d, n, k, h, dt = (c.embed_dim, c.num_heads, c.num_kv_heads, c.head_dim,
                          c.param_jnp_dtype)
        self.config = c
        self.q = _param(_normal, rngs.params(), (d, n, h), dt,
                        ("embed", "heads", "head_dim"))
        self.k = _param(_normal, rngs.params(), (d, k, h), dt,
                        ("embed", "kv_heads", "head_dim"))
        self.v = _param(_normal, rngs.params(), (d, k, h), dt,
                        ("embed", "kv_heads", "head_dim"))
        self.o = _param(_normal, rngs.params(), (n, h, d), dt,
                        ("heads", "head_dim", "embed"))
        if c.qkv_bias:
            self.q_bias = _param(_zeros, None, (n, h), dt, ("heads", "head_dim"))
            self.k_bias = _param(_zeros, None, (k, h), dt, ("kv_heads", "head_dim"))
            self.v_bias = _param(_zeros, None, (k, h), dt, ("kv_heads", "head_dim"))
        if c.qk_norm:
            self.q_norm = RMSNorm(h, "head_dim", c)
            self.k_norm = RMSNorm(h, "head_dim", c)

    def _project(self, x_NxQxD: jax.Array, name: str) -> jax.Array:
        w_DxHxDh = getattr(self, name)[...].astype(x_NxQxD.dtype)
        y = _dense(x_NxQxD, w_DxHxDh.reshape(w_DxHxDh.shape[0], -1))
        y = y.reshape(y.shape[:-1] + w_DxHxDh.shape[1:])
        if self.config.qkv_bias:
            y = y + getattr(self, f"{name}_bias")[...].astype(y.dtype)[None, None]
        return y

    def __call__(
        self,
        x_NxQxD: jax.Array,
        sin_NxQxDh: jax.Array,
        cos_NxQxDh: jax.Array,
        key_mask_NxS: jax.Array,
        kv_cache: LayerCache | None = None,
        write_index: jax.Array | None = None,
    ) -> tuple[jax.Array, LayerCache | None]:
        """Self-attention; with `kv_cache`, keys/values are written then read back.

        Args:
          key_mask_NxS: True at real key slots; the query in slot q sees slot s
            iff `key_mask_NxS[b, s] and s <= q` (golfjax/models/attention.py).
          kv_cache: this layer's cache (k_NxKxDhxS, v_NxKxSxDh, recent). The new
            keys and values are written at slots [write_index, write_index +
            Q) and attention reads all S slots; the updated cache is returned.
            Writing only the Q new slots lets XLA update the buffers in place
            inside a decode loop. `recent` is None or (keys N x K x Dh x W,
            values N x K x W x Dh, start): float32 buffers for slots [start,
            start + W) that a decode step (Q = 1) writes instead of the main
            arrays, which it then only reads (golfjax/models/cache.py).
        """
        c = self.config
        t = x_NxQxD.shape[1]
        q_NxQxKxRxDh, k_NxQxKxDh, v_NxQxKxDh = self._qkv(x_NxQxD, sin_NxQxDh,
                                                         cos_NxQxDh)
        if kv_cache is None:
            out_NxQxKxRxDh = attention_lib.attention(
                q_NxQxKxRxDh, k_NxQxKxDh, v_NxQxKxDh, key_mask_NxS, 0,
                implementation=c.attention, block=c.attention_block)
            new_cache = None
        else:
            k_NxKxDhxS, v_NxKxSxDh, recent = kv_cache
            zero = jnp.zeros((), jnp.int32)
            if recent is None:
                k_NxKxDhxS, v_NxKxSxDh = _write_slots(
                    k_NxKxDhxS, v_NxKxSxDh, *_cache_layout(k_NxQxKxDh, v_NxQxKxDh,
                                                           k_NxKxDhxS.dtype),
                    write_index)
            s = k_NxKxDhxS.shape[-1]
            if t > 1:
                if recent is not None:
                    raise ValueError("a cache with a recent buffer takes one token "
                                     f"per call, got {t}")
                out_NxQxKxRxDh = self._prefill_attention(
                    q_NxQxKxRxDh, k_NxKxDhxS, v_NxKxSxDh, key_mask_NxS, write_index)
            elif recent is None:
                visible_NxS = key_mask_NxS & (
                    jnp.arange(s, dtype=jnp.int32)[None, :] <= write_index)
                out_NxQxKxRxDh = decode_attention(q_NxQxKxRxDh, k_NxKxDhxS, v_NxKxSxDh,
                                                 visible_NxS)
            else:
                # Main slots before the recent buffer; the new token goes into
                # the (float32, so natively updatable) recent buffer, read
                # up to and including it.
                recent_k_NxKxDhxW, recent_v_NxKxWxDh, start = recent
                w = recent_v_NxKxWxDh.shape[2]
                at = write_index - start
                dt = k_NxKxDhxS.dtype  # Recent values are exactly cache-dtype values.
                new_k_NxKxDhx1, new_v_NxKx1xDh = jax.lax.optimization_barrier((
                    k_NxQxKxDh.astype(dt).astype(jnp.float32).transpose(0, 2, 3, 1),
                    v_NxQxKxDh.astype(dt).astype(jnp.float32).transpose(0, 2, 1, 3)))
                recent_k_NxKxDhxW = jax.lax.dynamic_update_slice(
                    recent_k_NxKxDhxW, new_k_NxKxDhx1, (zero, zero, zero, at))
                recent_v_NxKxWxDh = jax.lax.dynamic_update_slice(
                    recent_v_NxKxWxDh, new_v_NxKx1xDh, (zero, zero, at, zero))
                main_NxS = key_mask_NxS[:, :s] & (
                    jnp.arange(s, dtype=jnp.int32)[None, :] < start)
                recent_NxW = jax.lax.dynamic_slice_in_dim(key_mask_NxS, start, w, axis=1) & (
                    jnp.arange(w, dtype=jnp.int32)[None, :] <= at)
                out_NxQxKxRxDh = decode_attention(
                    q_NxQxKxRxDh, k_NxKxDhxS, v_NxKxSxDh, main_NxS,
                    (recent_k_NxKxDhxW, recent_v_NxKxWxDh, recent_NxW))
                recent = (recent_k_NxKxDhxW, recent_v_NxKxWxDh, start)
            new_cache = (k_NxKxDhxS, v_NxKxSxDh, recent)
        return self._output(out_NxQxKxRxDh), new_cache

    def over_cache(
        self,
        x_NxQxD: jax.Array,
        sin_NxQxDh: jax.Array,
        cos_NxQxDh: jax.Array,
        key_mask_NxS: jax.Array,
        k_NxKxDhxS: jax.Array,
        v_NxKxSxDh: jax.Array,
        write_index: jax.Array,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Self-attention over a read-only cache; the new keys and values returned.

        What `__call__` with this layer's cache computes, for the scanned
        layers (golfjax/models/transformer.py), which read a stacked cache
        layer by layer and write every layer's new slots after the scan. The
        Q tokens are in slots [write_index, write_index + Q); returns the
        output and their keys `N x K x Dh x Q` and values `N x K x Q x Dh` in
        the cache dtype, for the caller to write there.

        A decode step (Q = 1) attends over the cached slots before
        `write_index` plus the new token as `decode_attention`'s `recent`
        term (W = 1), so the layer's cache is only read. A prefill writes the
        new slots into its own copy of the layer's cache and attends as
        `__call__` does.
        """
        t = x_NxQxD.shape[1]
        q_NxQxKxRxDh, k_NxQxKxDh, v_NxQxKxDh = self._qkv(x_NxQxD, sin_NxQxDh,
                                                         cos_NxQxDh)
        new_k_NxKxDhxQ, new_v_NxKxQxDh = _cache_layout(k_NxQxKxDh, v_NxQxKxDh,
                                                       k_NxKxDhxS.dtype)
        if t > 1:
            out_NxQxKxRxDh = self._prefill_attention(
                q_NxQxKxRxDh, *_write_slots(k_NxKxDhxS, v_NxKxSxDh, new_k_NxKxDhxQ,
                                            new_v_NxKxQxDh, write_index),
                key_mask_NxS, write_index)
        else:
            s = k_NxKxDhxS.shape[-1]
            # Cached slots strictly before the new token's; the new token
            # itself is the one-slot recent term, visible if its mask is set.
            cached_NxS = key_mask_NxS & (
                jnp.arange(s, dtype=jnp.int32)[None, :] < write_index)
            new_Nx1 = jax.lax.dynamic_slice_in_dim(key_mask_NxS, write_index, 1, axis=1)
            out_NxQxKxRxDh = decode_attention(
                q_NxQxKxRxDh, k_NxKxDhxS, v_NxKxSxDh, cached_NxS,
                (new_k_NxKxDhxQ, new_v_NxKxQxDh, new_Nx1))
        return self._output(out_NxQxKxRxDh), (new_k_NxKxDhxQ, new_v_NxKxQxDh)

    def _qkv(self, x_NxQxD: jax.Array, sin_NxQxDh: jax.Array, cos_NxQxDh: jax.Array
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries `N x Q x K x R x Dh`, keys and values `N x Q x K x Dh`, after
        the q/k norms (Qwen 3) and RoPE."""
        c = self.config
        b, t, _ = x_NxQxD.shape
        q_NxQxHxDh = self._project(x_NxQxD, "q")
        k_NxQxKxDh = self._project(x_NxQxD, "k")
        v_NxQxKxDh = self._project(x_NxQxD, "v")
        if c.qk_norm:  # Qwen 3 normalises per head, before RoPE.
            q_NxQxHxDh = self.q_norm(q_NxQxHxDh)
            k_NxQxKxDh = self.k_norm(k_NxQxKxDh)
        q_NxQxHxDh = apply_rope(q_NxQxHxDh, sin_NxQxDh, cos_NxQxDh)
        k_NxQxKxDh = apply_rope(k_NxQxKxDh, sin_NxQxDh, cos_NxQxDh)
        r = c.num_heads // c.num_kv_heads
        q_NxQxKxRxDh = q_NxQxHxDh.reshape(b, t, c.num_kv_heads, r, c.head_dim)
        return q_NxQxKxRxDh, k_NxQxKxDh, v_NxQxKxDh

    def _prefill_attention(self, q_NxQxKxRxDh: jax.Array, k_NxKxDhxS: jax.Array,
                           v_NxKxSxDh: jax.Array, key_mask_NxS: jax.Array,
                           write_index: jax.Array) -> jax.Array:
        """Q > 1 queries in slots [write_index, write_index + Q) over a written
        cache, with the cache's slots in the projections' layout."""
        c = self.config
        dt = q_NxQxKxRxDh.dtype
        return attention_lib.attention(
            q_NxQxKxRxDh, k_NxKxDhxS.transpose(0, 3, 1, 2).astype(dt),
            v_NxKxSxDh.transpose(0, 2, 1, 3).astype(dt), key_mask_NxS, write_index,
            implementation=("blockwise" if c.attention in ("cudnn", "splash")
                            else c.attention),
            block=c.attention_block)

    def _output(self, out_NxQxKxRxDh: jax.Array) -> jax.Array:
        """The output projection of the heads' outputs: `N x Q x D`."""
        b, t = out_NxQxKxRxDh.shape[:2]
        o_HxDhxD = self.o[...].astype(out_NxQxKxRxDh.dtype)
        return _dense(out_NxQxKxRxDh.reshape(b, t, -1),
                      o_HxDhxD.reshape(-1, o_HxDhxD.shape[-1]))


def _cache_layout(k_NxQxKxDh: jax.Array, v_NxQxKxDh: jax.Array, dtype: jnp.dtype
                  ) -> tuple[jax.Array, jax.Array]:
    """New keys and values in the cache's layouts and dtype: `N x K x Dh x Q`,
    `N x K x Q x Dh`."""
    return (k_NxQxKxDh.astype(dtype).transpose(0, 2, 3, 1),
            v_NxQxKxDh.astype(dtype).transpose(0, 2, 1, 3))


def _write_slots(k_NxKxDhxS: jax.Array, v_NxKxSxDh: jax.Array,
                 new_k_NxKxDhxQ: jax.Array, new_v_NxKxQxDh: jax.Array,
                 write_index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One layer's cache with Q new slots written at `write_index`; inside a
    decode loop XLA updates the buffers in place."""
    zero = jnp.zeros((), jnp.int32)
    return (jax.lax.dynamic_update_slice(k_NxKxDhxS, new_k_NxKxDhxQ,
                                         (zero, zero, zero, write_index)),
            jax.lax.dynamic_update_slice(v_NxKxSxDh, new_v_NxKxQxDh,
                                         (zero, zero, write_index, zero)))


def decode_attention(
    q_Nx1xKxRxDh: jax.Array, k_NxKxDhxS: jax.Array, v_NxKxSxDh: jax.Array,
    visible_NxS: jax.Array,
    recent: tuple[jax.Array, jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """One query per row over cached keys and values, in the cache's layouts.

    Both products are batched over (row, kv head) and contract the R query
    heads of the group with that kv head's keys, then values, as they lie in
    the cache and in its dtype: every cached key and value is read once, and
    only the N x K x R x S scores are float32. `recent` adds more slots,
    (keys N x K x Dh x W, values N x K x W x Dh, visible N x W), to the same
    softmax.
    """
    h = q_Nx1xKxRxDh.shape[-1]
    # The 1/sqrt(Dh) scale goes on the query (float32, then the cache dtype)
    # instead of on the scores: a scalar times the scores is a constant
    # broadcast that XLA's CPU backend materialises at the scores' full size.
    q_NxKxRxDh = q_Nx1xKxRxDh[:, 0].astype(jnp.float32) * (h ** -0.5)

    def scores(keys_NxKxDhxS: jax.Array, visible: jax.Array) -> jax.Array:
        raw = jnp.einsum("bkgh,bkhs->bkgs", q_NxKxRxDh.astype(keys_NxKxDhxS.dtype),
                         keys_NxKxDhxS, preferred_element_type=jnp.float32)
        # The mask as an additive bias of N x S (0 or MASK_VALUE) rather than a
        # select over the scores: XLA's CPU backend then fuses the scores, the
        # softmax and both products into one kernel, so the float32 scores
        # are never written out; on visible slots the result is the same.
        bias = jnp.where(visible, 0.0, attention_lib.MASK_VALUE).astype(jnp.float32)
        return raw + bias[:, None, None, :]

    def weighted(probs_NxKxRxS: jax.Array, values_NxKxSxDh: jax.Array) -> jax.Array:
        return jnp.einsum("bkgs,bksh->bkgh", probs_NxKxRxS.astype(values_NxKxSxDh.dtype),
                          values_NxKxSxDh, preferred_element_type=jnp.float32)

    main_NxKxRxS = scores(k_NxKxDhxS, visible_NxS)
    top_NxKxR = jnp.max(main_NxKxRxS, axis=-1)
    if recent is not None:
        recent_k, recent_v, recent_visible = recent
        recent_NxKxRxW = scores(recent_k, recent_visible)
        top_NxKxR = jnp.maximum(top_NxKxR, jnp.max(recent_NxKxRxW, axis=-1))
    probs_NxKxRxS = jnp.exp(main_NxKxRxS - top_NxKxR[..., None])
    total_NxKxR = jnp.sum(probs_NxKxRxS, axis=-1)
    out_NxKxRxDh = weighted(probs_NxKxRxS, v_NxKxSxDh)
    if recent is not None:
        recent_probs = jnp.exp(recent_NxKxRxW - top_NxKxR[..., None])
        total_NxKxR = total_NxKxR + jnp.sum(recent_probs, axis=-1)
        out_NxKxRxDh = out_NxKxRxDh + weighted(recent_probs, recent_v)
    out_NxKxRxDh = out_NxKxRxDh / total_NxKxR[..., None]
    return out_NxKxRxDh.astype(q_Nx1xKxRxDh.dtype)[:, None]


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, f, dt = config.embed_dim, config.mlp_dim, config.param_jnp_dtype
        self.chunk = config.mlp_chunk if config.remat else 0
        self.gate = _param(_normal, rngs.params(), (d, f), dt, ("embed", "mlp"))
        self.up = _param(_normal, rngs.params(), (d, f), dt, ("embed", "mlp"))
        self.down = _param(_normal, rngs.params(), (f, d), dt, ("mlp", "embed"))

    def __call__(self, x_NxQxD: jax.Array) -> jax.Array:
        dt = x_NxQxD.dtype
        gate_DxF, up_DxF = self.gate[...].astype(dt), self.up[...].astype(dt)
        down_FxD = self.down[...].astype(dt)

        def mlp(x_XxD: jax.Array) -> jax.Array:
            return _dense(jax.nn.silu(_dense(x_XxD, gate_DxF)) * _dense(x_XxD, up_DxF),
                          down_FxD)

        b, t, d = x_NxQxD.shape
        rows = b * t
        if not self.chunk or rows <= self.chunk:
            return mlp(x_NxQxD)
        # Under remat, long inputs run in chunks of rows, each recomputed in
        # the backward pass: the chunk x F intermediates (and their gradients)
        # exist one chunk at a time, at the cost of one more MLP forward.
        num = -(-rows // self.chunk)
        # The N * Q positions flattened, padded up to whole chunks.
        x_NQxD = jnp.pad(x_NxQxD.reshape(rows, d), ((0, num * self.chunk - rows), (0, 0)))
        y = jax.lax.map(jax.checkpoint(mlp), x_NQxD.reshape(num, self.chunk, d))
        return y.reshape(num * self.chunk, d)[:rows].reshape(b, t, d)


class MoE(nnx.Module):
    """Qwen 3 MoE's sparse MLP: E SwiGLU experts, A per token, chosen by a
    float32 router (golfjax/models/moe.py)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, e, f, dt = (config.embed_dim, config.num_experts, config.moe_mlp_dim,
                       config.param_jnp_dtype)
        self.config = config
        self.router = _param(_normal, rngs.params(), (d, e), dt, ("embed", None))
        self.gate = _param(_normal, rngs.params(), (e, d, f), dt,
                           ("expert", "expert_embed", "expert_mlp"))
        self.up = _param(_normal, rngs.params(), (e, d, f), dt,
                         ("expert", "expert_embed", "expert_mlp"))
        self.down = _param(_normal, rngs.params(), (e, f, d), dt,
                           ("expert", "expert_mlp", "expert_embed"))

    def __call__(self, x_NxQxD: jax.Array, token_mask_NxQ: jax.Array | None = None,
                 replay: tuple[jax.Array, jax.Array] | None = None
                 ) -> tuple[jax.Array, moe_lib.LayerRouting]:
        """The output `N x Q x D` and the layer's routing (`moe.moe_mlp`)."""
        dt = x_NxQxD.dtype
        return moe_lib.moe_mlp(
            x_NxQxD, self.router[...], self.gate[...].astype(dt), self.up[...].astype(dt),
            self.down[...].astype(dt), self.config, token_mask_NxQ=token_mask_NxQ,
            replay=replay)


class Block(nnx.Module):
    """Pre-norm decoder layer: x + attn(norm(x)), then x + mlp(norm(x)).

    The MLP is dense (`self.mlp`) or, in an MoE layer (`sparse`), a mixture
    of experts (`self.moe`), whose routing the calls return (None for a
    dense layer). `token_mask_NxQ` weights an MoE layer's load-balancing
    statistics and `replay` routes its tokens (golfjax/models/moe.py).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, sparse: bool = False):
        self.attn_norm = RMSNorm(config.embed_dim, "embed", config)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = RMSNorm(config.embed_dim, "embed", config)
        if sparse:
            self.moe = MoE(config, rngs=rngs)
        else:
            self.mlp = MLP(config, rngs=rngs)

    def __call__(
        self,
        x_NxQxD: jax.Array,
        sin_NxQxDh: jax.Array,
        cos_NxQxDh: jax.Array,
        key_mask_NxS: jax.Array,
        kv_cache: LayerCache | None = None,
        write_index: jax.Array | None = None,
        *,
        token_mask_NxQ: jax.Array | None = None,
        replay: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, LayerCache | None, moe_lib.LayerRouting | None]:
        return self._residual(x_NxQxD, lambda h_NxQxD: self.attn(
            h_NxQxD, sin_NxQxDh, cos_NxQxDh, key_mask_NxS, kv_cache, write_index),
            token_mask_NxQ, replay)

    def over_cache(
        self,
        x_NxQxD: jax.Array,
        sin_NxQxDh: jax.Array,
        cos_NxQxDh: jax.Array,
        key_mask_NxS: jax.Array,
        k_NxKxDhxS: jax.Array,
        v_NxKxSxDh: jax.Array,
        write_index: jax.Array,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array], moe_lib.LayerRouting | None]:
        """The layer over a read-only cache (`Attention.over_cache`): the output,
        the new tokens' keys and values, and the routing."""
        return self._residual(x_NxQxD, lambda h_NxQxD: self.attn.over_cache(
            h_NxQxD, sin_NxQxDh, cos_NxQxDh, key_mask_NxS, k_NxKxDhxS, v_NxKxSxDh,
            write_index))

    def _residual(self, x_NxQxD: jax.Array,
                  attend: Callable[[jax.Array], tuple[jax.Array, Any]],
                  token_mask_NxQ: jax.Array | None = None,
                  replay: tuple[jax.Array, jax.Array] | None = None,
                  ) -> tuple[jax.Array, Any, moe_lib.LayerRouting | None]:
        """x + attn(norm(x)), then x + mlp(norm(x)), for either attention call;
        `attend` returns its output and what it passes on (the cache)."""
        attn_NxQxD, passed = attend(self.attn_norm(x_NxQxD))
        x_NxQxD = x_NxQxD + attn_NxQxD
        h_NxQxD = self.mlp_norm(x_NxQxD)
        if not hasattr(self, "moe"):
            return x_NxQxD + self.mlp(h_NxQxD), passed, None
        y_NxQxD, routing = self.moe(h_NxQxD, token_mask_NxQ, replay)
        return x_NxQxD + y_NxQxD, passed, routing
