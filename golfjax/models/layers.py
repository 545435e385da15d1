"""Transformer building blocks as Flax NNX modules: RMSNorm, RoPE, GQA, SwiGLU.

Shape letters (used in every tensor name in golfjax/models):
  B batch rows            T query tokens in this call     S key slots
  D embed_dim             N query heads                   K key/value heads
  G = N // K              H head_dim                      F mlp_dim
  V vocab_size            L layers

Every parameter is an `nnx.Param` whose `out_sharding` metadata holds its logical
axis names (see golfjax/sharding.py). `eager_sharding=False` keeps the names as
metadata only: placement is decided by `golfjax.sharding` rules, never by Flax at
variable creation. Parameters are stored in `param_dtype` and cast to
`compute_dtype` where used; norm statistics and softmax run in float32.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from golfjax.models import attention as attention_lib
from golfjax.models.config import ModelConfig

_INIT_STD = 0.02
# One layer's cache: keys, values, and an optional recent buffer (keys, values,
# first slot); see `Attention.__call__`.
LayerCache = tuple[jax.Array, jax.Array,
                   tuple[jax.Array, jax.Array, jax.Array] | None]  # transformers' default initializer_range.


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


def _dense(x_BxTxI: jax.Array, w_IxO: jax.Array) -> jax.Array:
    """`x @ w` over the last axis, as one 2-D matmul over all leading positions.

    Flattening B x T first matters on CPU: XLA lowers a dot that contracts two
    axes (the weight gradient of a 3-D einsum contracts both B and T) to a
    generic loop rather than a GEMM; on TPU/GPU both forms compile to the same
    kernel.
    """
    lead = x_BxTxI.shape[:-1]
    # On CPU a bf16 x bf16 -> bf16 dot is computed by converting both operands
    # (the whole weight) to float32 first; asking for the float32 product runs
    # it on the bf16 operands directly. Elsewhere the dot stays in its dtype.
    wide = jnp.float32 if jax.default_backend() == "cpu" else None
    y = jnp.dot(x_BxTxI.reshape(-1, x_BxTxI.shape[-1]), w_IxO,
                preferred_element_type=wide).astype(x_BxTxI.dtype)
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
    """Inverse frequencies [H/2], float32, incl. llama3 scaling, as transformers.

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


def rope_sin_cos(positions_BxT: jax.Array,
                 config: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """sin, cos of shape [B, T, H] in float32 (HF layout: the H/2 freqs twice)."""
    inv_freq = jnp.asarray(rope_inv_freq(config))
    freqs_BxTxH2 = (positions_BxT.astype(jnp.float32)[:, :, None] *
                    inv_freq[None, None, :])
    emb_BxTxH = jnp.concatenate([freqs_BxTxH2, freqs_BxTxH2], axis=-1)
    return jnp.sin(emb_BxTxH), jnp.cos(emb_BxTxH)


def apply_rope(x_BxTxNxH: jax.Array, sin_BxTxH: jax.Array,
               cos_BxTxH: jax.Array) -> jax.Array:
    """HF rotate-half RoPE: x * cos + rotate_half(x) * sin, in float32."""
    x = x_BxTxNxH.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    sin, cos = sin_BxTxH[:, :, None, :], cos_BxTxH[:, :, None, :]
    return (x * cos + rotated * sin).astype(x_BxTxNxH.dtype)


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

    def _project(self, x_BxTxD: jax.Array, name: str) -> jax.Array:
        w_DxNxH = getattr(self, name)[...].astype(x_BxTxD.dtype)
        y = _dense(x_BxTxD, w_DxNxH.reshape(w_DxNxH.shape[0], -1))
        y = y.reshape(y.shape[:-1] + w_DxNxH.shape[1:])
        if self.config.qkv_bias:
            y = y + getattr(self, f"{name}_bias")[...].astype(y.dtype)[None, None]
        return y

    def __call__(
        self,
        x_BxTxD: jax.Array,
        sin_BxTxH: jax.Array,
        cos_BxTxH: jax.Array,
        key_mask_BxS: jax.Array,
        kv_cache: LayerCache | None = None,
        write_index: jax.Array | None = None,
    ) -> tuple[jax.Array, LayerCache | None]:
        """Self-attention; with `kv_cache`, keys/values are written then read back.

        Args:
          key_mask_BxS: True at real key slots; the query in slot q sees slot s
            iff `key_mask_BxS[b, s] and s <= q` (golfjax/models/attention.py).
          kv_cache: this layer's cache (k_BxKxHxS, v_BxKxSxH, recent). The new
            keys and values are written at slots [write_index, write_index +
            T) and attention reads all S slots; the updated cache is returned.
            Writing only the T new slots lets XLA update the buffers in place
            inside a decode loop. `recent` is None or (keys B x K x H x W,
            values B x K x W x H, start): float32 buffers for slots [start,
            start + W) that a decode step (T = 1) writes instead of the main
            arrays, which it then only reads (golfjax/models/cache.py).
        """
        c = self.config
        b, t, _ = x_BxTxD.shape
        q_BxTxNxH = self._project(x_BxTxD, "q")
        k_BxTxKxH = self._project(x_BxTxD, "k")
        v_BxTxKxH = self._project(x_BxTxD, "v")
        if c.qk_norm:  # Qwen 3 normalises per head, before RoPE.
            q_BxTxNxH = self.q_norm(q_BxTxNxH)
            k_BxTxKxH = self.k_norm(k_BxTxKxH)
        q_BxTxNxH = apply_rope(q_BxTxNxH, sin_BxTxH, cos_BxTxH)
        k_BxTxKxH = apply_rope(k_BxTxKxH, sin_BxTxH, cos_BxTxH)
        g = c.num_heads // c.num_kv_heads
        q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, c.num_kv_heads, g, c.head_dim)
        if kv_cache is None:
            out_BxTxKxGxH = attention_lib.attention(
                q_BxTxKxGxH, k_BxTxKxH, v_BxTxKxH, key_mask_BxS, 0,
                implementation=c.attention, block=c.attention_block)
            new_cache = None
        else:
            k_BxKxHxS, v_BxKxSxH, recent = kv_cache
            zero = jnp.zeros((), jnp.int32)
            if recent is None:
                k_BxKxHxS = jax.lax.dynamic_update_slice(
                    k_BxKxHxS, k_BxTxKxH.astype(k_BxKxHxS.dtype).transpose(0, 2, 3, 1),
                    (zero, zero, zero, write_index))
                v_BxKxSxH = jax.lax.dynamic_update_slice(
                    v_BxKxSxH, v_BxTxKxH.astype(v_BxKxSxH.dtype).transpose(0, 2, 1, 3),
                    (zero, zero, write_index, zero))
            s = k_BxKxHxS.shape[-1]
            if t > 1:  # Prefill: the cache's slots in the projections' layout.
                if recent is not None:
                    raise ValueError("a cache with a recent buffer takes one token "
                                     f"per call, got {t}")
                out_BxTxKxGxH = attention_lib.attention(
                    q_BxTxKxGxH, k_BxKxHxS.transpose(0, 3, 1, 2).astype(x_BxTxD.dtype),
                    v_BxKxSxH.transpose(0, 2, 1, 3).astype(x_BxTxD.dtype),
                    key_mask_BxS, write_index,
                    implementation=("blockwise" if c.attention in ("cudnn", "splash")
                                    else c.attention),
                    block=c.attention_block)
            elif recent is None:
                visible_BxS = key_mask_BxS & (
                    jnp.arange(s, dtype=jnp.int32)[None, :] <= write_index)
                out_BxTxKxGxH = decode_attention(q_BxTxKxGxH, k_BxKxHxS, v_BxKxSxH,
                                                 visible_BxS)
            else:
                # Main slots before the recent buffer; the new token goes into
                # the (float32, so natively updatable) recent buffer, read
                # up to and including it.
                recent_k_BxKxHxW, recent_v_BxKxWxH, start = recent
                w = recent_v_BxKxWxH.shape[2]
                at = write_index - start
                dt = k_BxKxHxS.dtype  # Recent values are exactly cache-dtype values.
                new_k_BxKxHx1, new_v_BxKx1xH = jax.lax.optimization_barrier((
                    k_BxTxKxH.astype(dt).astype(jnp.float32).transpose(0, 2, 3, 1),
                    v_BxTxKxH.astype(dt).astype(jnp.float32).transpose(0, 2, 1, 3)))
                recent_k_BxKxHxW = jax.lax.dynamic_update_slice(
                    recent_k_BxKxHxW, new_k_BxKxHx1, (zero, zero, zero, at))
                recent_v_BxKxWxH = jax.lax.dynamic_update_slice(
                    recent_v_BxKxWxH, new_v_BxKx1xH, (zero, zero, at, zero))
                main_BxS = key_mask_BxS[:, :s] & (
                    jnp.arange(s, dtype=jnp.int32)[None, :] < start)
                recent_BxW = jax.lax.dynamic_slice_in_dim(key_mask_BxS, start, w, axis=1) & (
                    jnp.arange(w, dtype=jnp.int32)[None, :] <= at)
                out_BxTxKxGxH = decode_attention(
                    q_BxTxKxGxH, k_BxKxHxS, v_BxKxSxH, main_BxS,
                    (recent_k_BxKxHxW, recent_v_BxKxWxH, recent_BxW))
                recent = (recent_k_BxKxHxW, recent_v_BxKxWxH, start)
            new_cache = (k_BxKxHxS, v_BxKxSxH, recent)
        out_BxTxNxH = out_BxTxKxGxH.reshape(b, t, c.num_heads, c.head_dim)
        o_NxHxD = self.o[...].astype(x_BxTxD.dtype)
        out_BxTxD = _dense(out_BxTxNxH.reshape(b, t, -1),
                           o_NxHxD.reshape(-1, o_NxHxD.shape[-1]))
        return out_BxTxD, new_cache


def decode_attention(
    q_Bx1xKxGxH: jax.Array, k_BxKxHxS: jax.Array, v_BxKxSxH: jax.Array,
    visible_BxS: jax.Array,
    recent: tuple[jax.Array, jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """One query per row over cached keys and values, in the cache's layouts.

    Both products are batched over (row, kv head) and contract the G query
    heads of the group with that kv head's keys, then values, as they lie in
    the cache and in its dtype: every cached key and value is read once, and
    only the B x K x G x S scores are float32. `recent` adds more slots,
    (keys B x K x H x W, values B x K x W x H, visible B x W), to the same
    softmax.
    """
    h = q_Bx1xKxGxH.shape[-1]
    # The 1/sqrt(Dh) scale goes on the query (float32, then the cache dtype)
    # instead of on the scores: a scalar times the scores is a constant
    # broadcast that XLA's CPU backend materialises at the scores' full size.
    q_BxKxGxH = q_Bx1xKxGxH[:, 0].astype(jnp.float32) * (h ** -0.5)

    def scores(keys_BxKxHxS: jax.Array, visible: jax.Array) -> jax.Array:
        raw = jnp.einsum("bkgh,bkhs->bkgs", q_BxKxGxH.astype(keys_BxKxHxS.dtype),
                         keys_BxKxHxS, preferred_element_type=jnp.float32)
        # The mask as an additive bias of B x S (0 or MASK_VALUE) rather than a
        # select over the scores: XLA's CPU backend then fuses the scores, the
        # softmax and both products into one kernel, so the float32 scores
        # are never written out; on visible slots the result is the same.
        bias = jnp.where(visible, 0.0, attention_lib.MASK_VALUE).astype(jnp.float32)
        return raw + bias[:, None, None, :]

    def weighted(probs_BxKxGxS: jax.Array, values_BxKxSxH: jax.Array) -> jax.Array:
        return jnp.einsum("bkgs,bksh->bkgh", probs_BxKxGxS.astype(values_BxKxSxH.dtype),
                          values_BxKxSxH, preferred_element_type=jnp.float32)

    main_BxKxGxS = scores(k_BxKxHxS, visible_BxS)
    top_BxKxG = jnp.max(main_BxKxGxS, axis=-1)
    if recent is not None:
        recent_k, recent_v, recent_visible = recent
        recent_BxKxGxW = scores(recent_k, recent_visible)
        top_BxKxG = jnp.maximum(top_BxKxG, jnp.max(recent_BxKxGxW, axis=-1))
    probs_BxKxGxS = jnp.exp(main_BxKxGxS - top_BxKxG[..., None])
    total_BxKxG = jnp.sum(probs_BxKxGxS, axis=-1)
    out_BxKxGxH = weighted(probs_BxKxGxS, v_BxKxSxH)
    if recent is not None:
        recent_probs = jnp.exp(recent_BxKxGxW - top_BxKxG[..., None])
        total_BxKxG = total_BxKxG + jnp.sum(recent_probs, axis=-1)
        out_BxKxGxH = out_BxKxGxH + weighted(recent_probs, recent_v)
    out_BxKxGxH = out_BxKxGxH / total_BxKxG[..., None]
    return out_BxKxGxH.astype(q_Bx1xKxGxH.dtype)[:, None]


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, f, dt = config.embed_dim, config.mlp_dim, config.param_jnp_dtype
        self.chunk = config.mlp_chunk if config.remat else 0
        self.gate = _param(_normal, rngs.params(), (d, f), dt, ("embed", "mlp"))
        self.up = _param(_normal, rngs.params(), (d, f), dt, ("embed", "mlp"))
        self.down = _param(_normal, rngs.params(), (f, d), dt, ("mlp", "embed"))

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        dt = x_BxTxD.dtype
        gate_DxF, up_DxF = self.gate[...].astype(dt), self.up[...].astype(dt)
        down_FxD = self.down[...].astype(dt)

        def mlp(x_RxD: jax.Array) -> jax.Array:
            return _dense(jax.nn.silu(_dense(x_RxD, gate_DxF)) * _dense(x_RxD, up_DxF),
                          down_FxD)

        b, t, d = x_BxTxD.shape
        rows = b * t
        if not self.chunk or rows <= self.chunk:
            return mlp(x_BxTxD)
        # Under remat, long inputs run in chunks of rows, each recomputed in
        # the backward pass: the R x F intermediates (and their gradients)
        # exist one chunk at a time, at the cost of one more MLP forward.
        num = -(-rows // self.chunk)
        x_RxD = jnp.pad(x_BxTxD.reshape(rows, d), ((0, num * self.chunk - rows), (0, 0)))
        y_CxRxD = jax.lax.map(jax.checkpoint(mlp), x_RxD.reshape(num, self.chunk, d))
        return y_CxRxD.reshape(num * self.chunk, d)[:rows].reshape(b, t, d)


class Block(nnx.Module):
    """Pre-norm decoder layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(config.embed_dim, "embed", config)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = RMSNorm(config.embed_dim, "embed", config)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(
        self,
        x_BxTxD: jax.Array,
        sin_BxTxH: jax.Array,
        cos_BxTxH: jax.Array,
        key_mask_BxS: jax.Array,
        kv_cache: LayerCache | None = None,
        write_index: jax.Array | None = None,
    ) -> tuple[jax.Array, LayerCache | None]:
        attn_BxTxD, kv_cache = self.attn(self.attn_norm(x_BxTxD), sin_BxTxH,
                                         cos_BxTxH, key_mask_BxS, kv_cache,
                                         write_index)
        x_BxTxD = x_BxTxD + attn_BxTxD
        x_BxTxD = x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD))
        return x_BxTxD, kv_cache
