"""Grouped-query self-attention over many keys: one entry point, picked by platform.

Letters (the project's, golfjax/types.py; as in golfjax/models/layers.py):
N rows, T queries, S key slots, K kv heads, G = H / K query heads per kv head,
Dh head dim, M = T * G; blockwise: Bm / Bk the query / key block widths, Nq /
Nk the numbers of query / key blocks.

    out_NxTxKxGxDh = attention(q_NxTxKxGxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS,
                              q_offset, implementation="auto")

Mask rule (the model's, golfjax/models/transformer.py): the query in slot
`q_offset + t` sees key slot s iff `key_mask_NxS[b, s] and s <= q_offset + t`.
Queries and keys come in the compute dtype; scores, the softmax and every
accumulation are float32. K/V are never repeated over the G query heads of a
group: each product contracts a kv head's keys with all its G * T queries.

Implementations:
  "reference"  the S x S scores of every head at once (`reference_attention`).
               Memory grows with T * S; fastest for short sequences.
  "blockwise"  online softmax over key blocks, query block by query block
               (`blockwise_attention`), plain JAX on every backend. Its
               backward pass (a `jax.custom_vjp`) saves only the output and the
               per-query log-sum-exp and recomputes each block's scores, so
               neither pass ever holds more than one block of scores per
               (row, kv head). Key blocks wholly above the causal diagonal are
               skipped in both passes.
  "cudnn"      `jax.nn.dot_product_attention(implementation="cudnn")`, the cuDNN
               flash kernel (GPU, bf16/fp16, head dim <= 128 and a multiple
               of 8, no cache offset). cuDNN masks padding by sequence length
               (right padding), so rows are rotated to put their real tokens
               first and rotated back after: this requires every row's mask to
               be left-padded (False* True*), which is how golfjax pads
               everywhere (the sampler's prompts, the train batches).
  "splash"     the Pallas splash-attention kernel (TPU; `interpret=True` runs
               it on any backend, for tests), GQA-native, with the key mask as
               segment ids; needs T = S (no cache offset) and T a multiple of
               128. A Pallas kernel has no partitioning rule of its own:
               traced under `partitioned(mesh)` (the Trainer's programs are),
               it runs inside a `shard_map` over the mesh, each device on its
               own rows (and its kv heads, where the rules shard them);
               without it, XLA would gather every row onto every device.
  "auto"       GPU: cudnn where it applies (and cuDNN accepts it at trace
               time); TPU: splash where it applies; elsewhere (and for shapes
               they refuse): blockwise, or reference when the whole score
               matrix is no larger than one block pair.

A query row with no visible key (a left-padding position) gets finite garbage
that no real position ever reads; it is the caller's to mask out.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from golfjax import sharding as sharding_lib
from golfjax.models import platform as platform_lib

# Finite, so a query row with no visible key (a left-padding row) gives a
# uniform softmax instead of NaN.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
IMPLEMENTATIONS = ("auto", "reference", "blockwise", "cudnn", "splash")
DEFAULT_BLOCK = 512


def _check(q_NxTxKxGxDh: jax.Array, k_NxSxKxDh: jax.Array, v_NxSxKxDh: jax.Array,
           key_mask_NxS: jax.Array) -> None:
    b, _, k, _, h = q_NxTxKxGxDh.shape
    if k_NxSxKxDh.shape != v_NxSxKxDh.shape:
        raise ValueError(f"attention keys {k_NxSxKxDh.shape} and values "
                         f"{v_NxSxKxDh.shape} differ in shape")
    if (k_NxSxKxDh.shape[0], k_NxSxKxDh.shape[2], k_NxSxKxDh.shape[3]) != (b, k, h):
        raise ValueError(f"attention keys {k_NxSxKxDh.shape} do not match queries "
                         f"{q_NxTxKxGxDh.shape} (N, K, Dh)")
    if key_mask_NxS.shape != (b, k_NxSxKxDh.shape[1]):
        raise ValueError(f"attention key_mask_NxS has shape {key_mask_NxS.shape}, "
                         f"expected {(b, k_NxSxKxDh.shape[1])}")


def _visible(key_mask_NxS: jax.Array, q_slot_M: jax.Array,
             k_slot_S: jax.Array) -> jax.Array:
    """[N, 1, M, S] bool: key slot visible from each query (mask rule above)."""
    causal_MxS = k_slot_S[None, :] <= q_slot_M[:, None]
    return key_mask_NxS[:, None, None, :] & causal_MxS[None, None]


def _to_groups(q_NxTxKxGxDh: jax.Array) -> jax.Array:
    """q as N x K x M x Dh, M = T * G ordered t-major (a query block is contiguous)."""
    b, t, k, g, h = q_NxTxKxGxDh.shape
    return q_NxTxKxGxDh.transpose(0, 2, 1, 3, 4).reshape(b, k, t * g, h)


def _from_groups(x_NxKxMxDh: jax.Array, t: int, g: int) -> jax.Array:
    b, k, _, h = x_NxKxMxDh.shape
    return x_NxKxMxDh.reshape(b, k, t, g, h).transpose(0, 2, 1, 3, 4)


def reference_attention(q_NxTxKxGxDh: jax.Array, k_NxSxKxDh: jax.Array,
                        v_NxSxKxDh: jax.Array, key_mask_NxS: jax.Array,
                        q_offset: jax.Array | int = 0) -> jax.Array:
    """Softmax attention with the full N x K x M x S scores (the definition)."""
    _check(q_NxTxKxGxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS)
    t, g, h = q_NxTxKxGxDh.shape[1], q_NxTxKxGxDh.shape[3], q_NxTxKxGxDh.shape[4]
    s = k_NxSxKxDh.shape[1]
    q_NxKxMxDh = _to_groups(q_NxTxKxGxDh)
    scores_NxKxMxS = jnp.einsum("bkmh,bskh->bkms", q_NxKxMxDh, k_NxSxKxDh,
                                preferred_element_type=jnp.float32) * (h ** -0.5)
    q_slot_M = q_offset + jnp.arange(t * g, dtype=jnp.int32) // g
    visible = _visible(key_mask_NxS.astype(bool), q_slot_M,
                       jnp.arange(s, dtype=jnp.int32))
    scores_NxKxMxS = jnp.where(visible, scores_NxKxMxS, MASK_VALUE)
    probs_NxKxMxS = jax.nn.softmax(scores_NxKxMxS, axis=-1).astype(v_NxSxKxDh.dtype)
    out_NxKxMxDh = jnp.einsum("bkms,bskh->bkmh", probs_NxKxMxS, v_NxSxKxDh,
                             preferred_element_type=jnp.float32)
    return _from_groups(out_NxKxMxDh, t, g).astype(q_NxTxKxGxDh.dtype)


# ---------------------------------------------------------------- blockwise

def _block_scores(q_NxKxMxDh: jax.Array, k_NxSxKxDh: jax.Array,
                  key_mask_NxS: jax.Array, q_slot_M: jax.Array,
                  k_start: jax.Array, scale: float) -> jax.Array:
    """Masked float32 scores of a query block against the key block at k_start."""
    bk = k_NxSxKxDh.shape[1]
    scores_NxKxMxS = jnp.einsum("bkmh,bskh->bkms", q_NxKxMxDh, k_NxSxKxDh,
                                preferred_element_type=jnp.float32) * scale
    k_slot_S = k_start + jnp.arange(bk, dtype=jnp.int32)
    return jnp.where(_visible(key_mask_NxS, q_slot_M, k_slot_S), scores_NxKxMxS,
                     MASK_VALUE)


def _key_blocks_needed(last_q_slot: jax.Array, block_k: int, num_k: int) -> jax.Array:
    """How many key blocks from the first hold a slot <= last_q_slot."""
    return jnp.clip(last_q_slot // block_k + 1, 0, num_k)


def _blockwise_forward(q_NxKxMxDh: jax.Array, k_NxSxKxDh: jax.Array,
                       v_NxSxKxDh: jax.Array, key_mask_NxS: jax.Array,
                       q_offset: jax.Array, g: int, block_q: int, block_k: int
                       ) -> tuple[jax.Array, jax.Array]:
    """(out_NxKxMxDh in q's dtype, float32 lse_NxKxM); T, S multiples of the blocks."""
    b, kh, m, h = q_NxKxMxDh.shape
    s = k_NxSxKxDh.shape[1]
    bm, num_q, num_k = block_q * g, m // (block_q * g), s // block_k
    scale = h ** -0.5
    q_NqxNxKxBmxDh = q_NxKxMxDh.reshape(b, kh, num_q, bm, h).transpose(2, 0, 1, 3, 4)
    in_block_M = jnp.arange(bm, dtype=jnp.int32) // g

    def query_block(args: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        i, q_NxKxBmxDh = args
        q_slot_M = q_offset + i * block_q + in_block_M

        def key_block(j: jax.Array, carry: tuple[jax.Array, ...]
                      ) -> tuple[jax.Array, ...]:
            max_NxKxBm, sum_NxKxBm, acc_NxKxBmxDh = carry
            start = j * block_k
            k_blk = jax.lax.dynamic_slice_in_dim(k_NxSxKxDh, start, block_k, axis=1)
            v_blk = jax.lax.dynamic_slice_in_dim(v_NxSxKxDh, start, block_k, axis=1)
            mask_blk = jax.lax.dynamic_slice_in_dim(key_mask_NxS, start, block_k,
                                                    axis=1)
            scores = _block_scores(q_NxKxBmxDh, k_blk, mask_blk, q_slot_M, start,
                                   scale)
            new_max = jnp.maximum(max_NxKxBm, jnp.max(scores, axis=-1))
            probs = jnp.exp(scores - new_max[..., None])
            rescale = jnp.exp(max_NxKxBm - new_max)
            acc_NxKxBmxDh = acc_NxKxBmxDh * rescale[..., None] + jnp.einsum(
                "bkms,bskh->bkmh", probs.astype(v_blk.dtype), v_blk,
                preferred_element_type=jnp.float32)
            return new_max, sum_NxKxBm * rescale + jnp.sum(probs, axis=-1), acc_NxKxBmxDh

        init = (jnp.full((b, kh, bm), MASK_VALUE, jnp.float32),
                jnp.zeros((b, kh, bm), jnp.float32),
                jnp.zeros((b, kh, bm, h), jnp.float32))
        last = _key_blocks_needed(q_slot_M[-1], block_k, num_k)
        max_, sum_, acc = jax.lax.fori_loop(0, last, key_block, init)
        out = (acc / sum_[..., None]).astype(q_NxKxBmxDh.dtype)
        return out, max_ + jnp.log(sum_)

    out_Nq, lse_Nq = jax.lax.map(
        query_block, (jnp.arange(num_q, dtype=jnp.int32), q_NqxNxKxBmxDh))
    out_NxKxMxDh = out_Nq.transpose(1, 2, 0, 3, 4).reshape(b, kh, m, h)
    return out_NxKxMxDh, lse_Nq.transpose(1, 2, 0, 3).reshape(b, kh, m)


def _blockwise_backward(q_NxKxMxDh: jax.Array, k_NxSxKxDh: jax.Array,
                        v_NxSxKxDh: jax.Array, key_mask_NxS: jax.Array,
                        q_offset: jax.Array, out_NxKxMxDh: jax.Array,
                        lse_NxKxM: jax.Array, dout_NxKxMxDh: jax.Array, g: int,
                        block_q: int, block_k: int
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gradients of q, k, v, recomputing each block's probabilities from lse.

    Key blocks outside, query blocks inside (from the first that can see the
    key block); dq accumulates in one float32 buffer the size of q.
    """
    b, kh, m, h = q_NxKxMxDh.shape
    s = k_NxSxKxDh.shape[1]
    bm, num_q, num_k = block_q * g, m // (block_q * g), s // block_k
    scale = h ** -0.5
    dt = q_NxKxMxDh.dtype
    # D = rowsum(dO * O), the softmax-Jacobian term shared by a row's blocks.
    delta_NxKxM = jnp.sum(dout_NxKxMxDh.astype(jnp.float32) *
                          out_NxKxMxDh.astype(jnp.float32), axis=-1)
    in_block_M = jnp.arange(bm, dtype=jnp.int32) // g

    def q_slice(x: jax.Array, i: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice_in_dim(x, i * bm, bm, axis=2)

    def key_block(dq_NxKxMxDh: jax.Array, j: jax.Array
                  ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        start = j * block_k
        k_blk = jax.lax.dynamic_slice_in_dim(k_NxSxKxDh, start, block_k, axis=1)
        v_blk = jax.lax.dynamic_slice_in_dim(v_NxSxKxDh, start, block_k, axis=1)
        mask_blk = jax.lax.dynamic_slice_in_dim(key_mask_NxS, start, block_k, axis=1)

        def query_block(i: jax.Array, carry: tuple[jax.Array, ...]
                        ) -> tuple[jax.Array, ...]:
            dk_blk, dv_blk, dq = carry
            q_i = q_slice(q_NxKxMxDh, i)
            dout_i = q_slice(dout_NxKxMxDh, i)
            lse_i = jax.lax.dynamic_slice_in_dim(lse_NxKxM, i * bm, bm, axis=2)
            delta_i = jax.lax.dynamic_slice_in_dim(delta_NxKxM, i * bm, bm, axis=2)
            q_slot_M = q_offset + i * block_q + in_block_M
            scores = _block_scores(q_i, k_blk, mask_blk, q_slot_M, start, scale)
            probs = jnp.exp(scores - lse_i[..., None])
            dv_blk = dv_blk + jnp.einsum("bkms,bkmh->bskh", probs.astype(dt), dout_i,
                                         preferred_element_type=jnp.float32)
            dprobs = jnp.einsum("bkmh,bskh->bkms", dout_i, v_blk,
                                preferred_element_type=jnp.float32)
            dscores = (probs * (dprobs - delta_i[..., None])).astype(dt)
            dk_blk = dk_blk + scale * jnp.einsum(
                "bkms,bkmh->bskh", dscores, q_i, preferred_element_type=jnp.float32)
            dq_i = q_slice(dq, i) + scale * jnp.einsum(
                "bkms,bskh->bkmh", dscores, k_blk, preferred_element_type=jnp.float32)
            dq = jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * bm, axis=2)
            return dk_blk, dv_blk, dq

        # The first query block holding a slot >= this key block's first slot.
        first = jnp.clip((start - q_offset) // block_q, 0, num_q)
        zeros = jnp.zeros((b, block_k, kh, h), jnp.float32)
        dk_blk, dv_blk, dq_NxKxMxDh = jax.lax.fori_loop(
            first, num_q, query_block, (zeros, zeros, dq_NxKxMxDh))
        return dq_NxKxMxDh, (dk_blk, dv_blk)

    dq_NxKxMxDh, (dk_Nk, dv_Nk) = jax.lax.scan(
        key_block, jnp.zeros((b, kh, m, h), jnp.float32),
        jnp.arange(num_k, dtype=jnp.int32))

    def unblock(x_NkxNxBkxKxDh: jax.Array) -> jax.Array:
        return x_NkxNxBkxKxDh.transpose(1, 0, 2, 3, 4).reshape(b, s, kh, h)

    return (dq_NxKxMxDh.astype(dt), unblock(dk_Nk).astype(k_NxSxKxDh.dtype),
            unblock(dv_Nk).astype(v_NxSxKxDh.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _blockwise(q_NxKxMxDh: jax.Array, k_NxSxKxDh: jax.Array, v_NxSxKxDh: jax.Array,
               key_mask_NxS: jax.Array, q_offset: jax.Array, g: int, block_q: int,
               block_k: int) -> jax.Array:
    return _blockwise_forward(q_NxKxMxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS,
                              q_offset, g, block_q, block_k)[0]


def _blockwise_fwd(q_NxKxMxDh: jax.Array, k_NxSxKxDh: jax.Array,
                   v_NxSxKxDh: jax.Array, key_mask_NxS: jax.Array,
                   q_offset: jax.Array, g: int, block_q: int, block_k: int
                   ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    out, lse = _blockwise_forward(q_NxKxMxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS,
                                  q_offset, g, block_q, block_k)
    return out, (q_NxKxMxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS, q_offset, out, lse)


def _blockwise_bwd(g: int, block_q: int, block_k: int,
                   residuals: tuple[jax.Array, ...], dout_NxKxMxDh: jax.Array
                   ) -> tuple[jax.Array | None, ...]:
    q, k, v, key_mask, q_offset, out, lse = residuals
    dq, dk, dv = _blockwise_backward(q, k, v, key_mask, q_offset, out, lse,
                                     dout_NxKxMxDh, g, block_q, block_k)
    return dq, dk, dv, None, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(q_NxTxKxGxDh: jax.Array, k_NxSxKxDh: jax.Array,
                        v_NxSxKxDh: jax.Array, key_mask_NxS: jax.Array,
                        q_offset: jax.Array | int = 0, *,
                        block_q: int = DEFAULT_BLOCK,
                        block_k: int = DEFAULT_BLOCK) -> jax.Array:
    """Attention by online softmax over key blocks, memory linear in T and S.

    T and S are padded up to multiples of the (clipped) block sizes; padded
    keys are masked out and padded queries dropped.
    """
    _check(q_NxTxKxGxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"attention blocks must be >= 1, got block_q={block_q}, "
                         f"block_k={block_k}")
    b, t, kh, g, h = q_NxTxKxGxDh.shape
    s = k_NxSxKxDh.shape[1]
    bq, bk = min(block_q, t), min(block_k, s)
    pad_t, pad_s = -t % bq, -s % bk
    key_mask_NxS = key_mask_NxS.astype(bool)
    if pad_t:
        q_NxTxKxGxDh = jnp.pad(q_NxTxKxGxDh, ((0, 0), (0, pad_t), (0, 0), (0, 0), (0, 0)))
    if pad_s:
        widths = ((0, 0), (0, pad_s), (0, 0), (0, 0))
        k_NxSxKxDh, v_NxSxKxDh = jnp.pad(k_NxSxKxDh, widths), jnp.pad(v_NxSxKxDh, widths)
        key_mask_NxS = jnp.pad(key_mask_NxS, ((0, 0), (0, pad_s)))
    out_NxKxMxDh = _blockwise(_to_groups(q_NxTxKxGxDh), k_NxSxKxDh, v_NxSxKxDh,
                             key_mask_NxS, jnp.asarray(q_offset, jnp.int32), g, bq, bk)
    return _from_groups(out_NxKxMxDh, t + pad_t, g)[:, :t]


# ---------------------------------------------------------------- kernels

def _cudnn_applies(q_NxTxKxGxDh: jax.Array, k_NxSxKxDh: jax.Array,
                   q_offset: jax.Array | int) -> bool:
    h = q_NxTxKxGxDh.shape[-1]
    return (isinstance(q_offset, int) and q_offset == 0 and
            q_NxTxKxGxDh.shape[1] == k_NxSxKxDh.shape[1] and
            q_NxTxKxGxDh.dtype in (jnp.bfloat16, jnp.float16) and
            h <= 128 and h % 8 == 0)


def cudnn_attention(q_NxTxKxGxDh: jax.Array, k_NxSxKxDh: jax.Array,
                    v_NxSxKxDh: jax.Array, key_mask_NxS: jax.Array) -> jax.Array:
    """cuDNN flash attention for left-padded rows, T = S (module docstring)."""
    _check(q_NxTxKxGxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS)
    b, t, kh, g, h = q_NxTxKxGxDh.shape
    # A row without any real token counts its last slot as one, so that cuDNN
    # never sees a zero length: its output stays finite garbage.
    length_N = jnp.maximum(jnp.sum(key_mask_NxS.astype(jnp.int32), axis=1), 1)
    # Rotate each row left by its padding: real tokens first, in order.
    slot_NxT = (jnp.arange(t, dtype=jnp.int32)[None, :] + (t - length_N)[:, None]) % t

    def rotate(x: jax.Array, slots: jax.Array) -> jax.Array:
        return jnp.take_along_axis(x, slots.reshape(slots.shape + (1,) * (x.ndim - 2)),
                                   axis=1)

    q_NxTxHxDh = rotate(q_NxTxKxGxDh, slot_NxT).reshape(b, t, kh * g, h)
    out_NxTxHxDh = jax.nn.dot_product_attention(
        q_NxTxHxDh, rotate(k_NxSxKxDh, slot_NxT), rotate(v_NxSxKxDh, slot_NxT),
        is_causal=True, query_seq_lengths=length_N, key_value_seq_lengths=length_N,
        implementation="cudnn")
    back_NxT = (jnp.arange(t, dtype=jnp.int32)[None, :] - (t - length_N)[:, None]) % t
    return rotate(out_NxTxHxDh, back_NxT).reshape(b, t, kh, g, h)


def _splash_block(t: int) -> int | None:
    for block in (512, 256, 128):
        if t % block == 0:
            return block
    return None


def _splash_applies(q_NxTxKxGxDh: jax.Array, k_NxSxKxDh: jax.Array,
                    q_offset: jax.Array | int) -> bool:
    t = q_NxTxKxGxDh.shape[1]
    return (isinstance(q_offset, int) and q_offset == 0 and
            t == k_NxSxKxDh.shape[1] and _splash_block(t) is not None)


def splash_attention(q_NxTxKxGxDh: jax.Array, k_NxSxKxDh: jax.Array,
                     v_NxSxKxDh: jax.Array, key_mask_NxS: jax.Array, *,
                     interpret: bool = False) -> jax.Array:
    """Pallas splash attention (causal, key mask as segment ids), T = S.

    A query sees a key iff both are real or both are padding (and causal): a
    real query sees exactly the mask rule's keys, and a padding query sees at
    least itself, so no row is empty.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash, splash_attention_mask as splash_mask)
    _check(q_NxTxKxGxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS)
    b, t, kh, g, h = q_NxTxKxGxDh.shape
    block = _splash_block(t)
    if block is None or k_NxSxKxDh.shape[1] != t:
        raise ValueError(f"splash attention needs T = S, a multiple of 128; got "
                         f"T={t}, S={k_NxSxKxDh.shape[1]}")
    n = kh * g
    specs = _splash_specs(b, kh)
    head_shards = 1 if specs is None else specs[3]
    # One mask per query head the kernel sees: a device's share of them.
    mask = splash_mask.MultiHeadMask(
        [splash_mask.CausalMask((t, t)) for _ in range(n // head_shards)])
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block,
                              block_kv_dkv_compute=block, block_q_dq=block,
                              block_kv_dq=block)
    kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1,
                                    q_seq_shards=1, interpret=interpret)
    # Query head n = kv head n // G, the kernel's grouping too.
    q_NxHxTxDh = (q_NxTxKxGxDh.reshape(b, t, n, h).transpose(0, 2, 1, 3) *
                 jnp.asarray(h ** -0.5, q_NxTxKxGxDh.dtype))
    segments_NxT = key_mask_NxS.astype(jnp.int32)

    def one_row(q_HxTxDh: jax.Array, k_KxSxDh: jax.Array, v_KxSxDh: jax.Array,
                seg_T: jax.Array) -> jax.Array:
        return kernel(q_HxTxDh, k_KxSxDh, v_KxSxDh,
                      segment_ids=splash.SegmentIds(q=seg_T, kv=seg_T))

    def rows(q_NxHxTxDh: jax.Array, k_NxKxSxDh: jax.Array, v_NxKxSxDh: jax.Array,
             segments_NxT: jax.Array) -> jax.Array:
        return jax.vmap(one_row)(q_NxHxTxDh, k_NxKxSxDh, v_NxKxSxDh, segments_NxT)

    k_NxKxSxDh, v_NxKxSxDh = k_NxSxKxDh.transpose(0, 2, 1, 3), v_NxSxKxDh.transpose(0, 2, 1, 3)
    if specs is not None:
        # Each device runs the kernel on its rows and kv heads (query heads
        # split alike: head n belongs to kv head n // G).
        mesh, rows_spec, heads_spec, _ = specs
        rows = jax.shard_map(rows, mesh=mesh, in_specs=(heads_spec,) * 3 + (rows_spec,),
                             out_specs=heads_spec, check_vma=False)
    out_NxHxTxDh = rows(q_NxHxTxDh, k_NxKxSxDh, v_NxKxSxDh, segments_NxT)
    return out_NxHxTxDh.transpose(0, 2, 1, 3).reshape(b, t, kh, g, h).astype(
        q_NxTxKxGxDh.dtype)


# The mesh (and logical rules) that kernels without a partitioning rule of
# their own split their work over; see `partitioned`.
_PARTITION: contextvars.ContextVar[tuple[Mesh, sharding_lib.Rules] | None] = (
    contextvars.ContextVar("golfjax_attention_partition", default=None))


@contextlib.contextmanager
def partitioned(mesh: Mesh, rules: sharding_lib.Rules = sharding_lib.LOGICAL_RULES
                ) -> Iterator[None]:
    """Attention traced inside this context splits Pallas kernels over `mesh`.

    Rows go over the `batch` rule's mesh axes and kv heads over the
    `kv_heads` rule's, as the model's activations are laid out. Enter it
    inside the function being jitted (a trace-time setting): `Trainer` does
    for its step and log-prob programs.
    """
    token = _PARTITION.set((mesh, rules))
    try:
        yield
    finally:
        _PARTITION.reset(token)


def _splash_specs(n: int, kh: int
                  ) -> tuple[Mesh, PartitionSpec, PartitionSpec, int] | None:
    """(mesh, rows spec, rows x kv-heads spec, kv-head shards) to shard_map
    splash over, or None.

    None outside `partitioned` or on a one-device mesh. Rows and kv heads
    are split where the rules shard them and their counts divide.
    """
    partition = _PARTITION.get()
    if partition is None or partition[0].size == 1:
        return None
    mesh, rules = partition
    rows = sharding_lib.logical_to_spec(("batch",), rules)[0]
    if n % sharding_lib.row_shards(mesh, rules):
        # Only shape-only traces see such row counts (the train step's
        # `eval_shape` of one row); batches themselves are checked to divide.
        rows = None
    heads = dict(rules).get("kv_heads")
    size = sharding_lib.mesh_axis_size(mesh, heads)
    if size == 1 or kh % size:
        heads, size = None, 1
    return mesh, PartitionSpec(rows), PartitionSpec(rows, heads), size


# ---------------------------------------------------------------- entry point

def attention(q_NxTxKxGxDh: jax.Array, k_NxSxKxDh: jax.Array, v_NxSxKxDh: jax.Array,
              key_mask_NxS: jax.Array, q_offset: jax.Array | int = 0, *,
              implementation: str = "auto", block: int = DEFAULT_BLOCK,
              platform: str | None = None) -> jax.Array:
    """Self-attention under the mask rule of the module docstring.

    Args:
      q_NxTxKxGxDh: queries after RoPE, grouped by kv head.
      k_NxSxKxDh, v_NxSxKxDh: keys (after RoPE) and values of the S slots.
      key_mask_NxS: True at real key slots.
      q_offset: the slot of query 0 (a Python int 0 allows the kernels).
      implementation: one of `IMPLEMENTATIONS`.
      block: query and key block of "blockwise" (and of the "auto" choice
        between reference and blockwise).
      platform: the backend to pick for ("cpu", "gpu", "tpu"); default
        the platform being traced for (`golfjax.models.platform.current`).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r}; expected "
                         f"one of {IMPLEMENTATIONS}")
    if implementation == "auto":
        implementation = _pick(q_NxTxKxGxDh, k_NxSxKxDh, q_offset, block,
                               platform or platform_lib.current())
        if implementation == "cudnn":
            # cuDNN's own checks (library present, version, layout) run at
            # trace time; where they refuse, the blockwise attention serves.
            try:
                return cudnn_attention(q_NxTxKxGxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS)
            except (RuntimeError, NotImplementedError, ValueError):
                implementation = "blockwise"
    if implementation == "reference":
        return reference_attention(q_NxTxKxGxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS,
                                   q_offset)
    if implementation == "blockwise":
        return blockwise_attention(q_NxTxKxGxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS,
                                   q_offset, block_q=block, block_k=block)
    if not (isinstance(q_offset, int) and q_offset == 0):
        raise ValueError(f"attention implementation {implementation!r} needs "
                         f"q_offset 0 (no cache); got {q_offset!r}")
    if implementation == "cudnn":
        return cudnn_attention(q_NxTxKxGxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS)
    return splash_attention(q_NxTxKxGxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS)


def _pick(q_NxTxKxGxDh: jax.Array, k_NxSxKxDh: jax.Array,
          q_offset: jax.Array | int, block: int, platform: str) -> str:
    if platform == "gpu" and _cudnn_applies(q_NxTxKxGxDh, k_NxSxKxDh, q_offset):
        return "cudnn"
    if platform == "tpu" and _splash_applies(q_NxTxKxGxDh, k_NxSxKxDh, q_offset):
        return "splash"
    if q_NxTxKxGxDh.shape[1] * k_NxSxKxDh.shape[1] <= block * block:
        return "reference"
    return "blockwise"
