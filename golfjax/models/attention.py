"""Grouped-query self-attention over many keys: one entry point, picked by platform.

Letters (the project's, golfjax/types.py): N rows, Q queries, S key slots,
K kv heads, R = H / K query heads per kv head, Dh head dim, QR = Q * R one kv
head's queries; blockwise: Bq / Bk the query / key block widths (BqR = Bq * R
rows), Nq / Nk the numbers of query / key blocks.

    out_NxQxKxRxDh = attention(q_NxQxKxRxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS,
                              q_offset, implementation="auto")

Mask rule (the model's, golfjax/models/transformer.py): the query in slot
`q_offset + t` sees key slot s iff `key_mask_NxS[b, s] and s <= q_offset + t`.
Queries and keys come in the compute dtype; scores, the softmax and every
accumulation are float32. K/V are never repeated over the R query heads of a
group: each product contracts a kv head's keys with all its R * Q queries.

Implementations:
  "reference"  the S x S scores of every head at once (`reference_attention`).
               Memory grows with Q * S; fastest for short sequences.
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
               segment ids; needs Q = S (no cache offset) and Q a multiple of
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


def _check(q_NxQxKxRxDh: jax.Array, k_NxSxKxDh: jax.Array, v_NxSxKxDh: jax.Array,
           key_mask_NxS: jax.Array) -> None:
    b, _, k, _, h = q_NxQxKxRxDh.shape
    if k_NxSxKxDh.shape != v_NxSxKxDh.shape:
        raise ValueError(f"attention keys {k_NxSxKxDh.shape} and values "
                         f"{v_NxSxKxDh.shape} differ in shape")
    if (k_NxSxKxDh.shape[0], k_NxSxKxDh.shape[2], k_NxSxKxDh.shape[3]) != (b, k, h):
        raise ValueError(f"attention keys {k_NxSxKxDh.shape} do not match queries "
                         f"{q_NxQxKxRxDh.shape} (N, K, Dh)")
    if key_mask_NxS.shape != (b, k_NxSxKxDh.shape[1]):
        raise ValueError(f"attention key_mask_NxS has shape {key_mask_NxS.shape}, "
                         f"expected {(b, k_NxSxKxDh.shape[1])}")


def _visible(key_mask_NxS: jax.Array, q_slot_QR: jax.Array,
             k_slot_S: jax.Array) -> jax.Array:
    """[N, 1, QR, S] bool: key slot visible from each query (mask rule above)."""
    causal_QRxS = k_slot_S[None, :] <= q_slot_QR[:, None]
    return key_mask_NxS[:, None, None, :] & causal_QRxS[None, None]


def _to_groups(q_NxQxKxRxDh: jax.Array) -> jax.Array:
    """q as N x K x QR x Dh, ordered query-major (a query block is contiguous)."""
    b, t, k, r, h = q_NxQxKxRxDh.shape
    return q_NxQxKxRxDh.transpose(0, 2, 1, 3, 4).reshape(b, k, t * r, h)


def _from_groups(x_NxKxQRxDh: jax.Array, t: int, r: int) -> jax.Array:
    b, k, _, h = x_NxKxQRxDh.shape
    return x_NxKxQRxDh.reshape(b, k, t, r, h).transpose(0, 2, 1, 3, 4)


def reference_attention(q_NxQxKxRxDh: jax.Array, k_NxSxKxDh: jax.Array,
                        v_NxSxKxDh: jax.Array, key_mask_NxS: jax.Array,
                        q_offset: jax.Array | int = 0) -> jax.Array:
    """Softmax attention with the full N x K x QR x S scores (the definition)."""
    _check(q_NxQxKxRxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS)
    t, r, h = q_NxQxKxRxDh.shape[1], q_NxQxKxRxDh.shape[3], q_NxQxKxRxDh.shape[4]
    s = k_NxSxKxDh.shape[1]
    q_NxKxQRxDh = _to_groups(q_NxQxKxRxDh)
    scores_NxKxQRxS = jnp.einsum("bkmh,bskh->bkms", q_NxKxQRxDh, k_NxSxKxDh,
                                 preferred_element_type=jnp.float32) * (h ** -0.5)
    q_slot_QR = q_offset + jnp.arange(t * r, dtype=jnp.int32) // r
    visible = _visible(key_mask_NxS.astype(bool), q_slot_QR,
                       jnp.arange(s, dtype=jnp.int32))
    scores_NxKxQRxS = jnp.where(visible, scores_NxKxQRxS, MASK_VALUE)
    probs_NxKxQRxS = jax.nn.softmax(scores_NxKxQRxS, axis=-1).astype(v_NxSxKxDh.dtype)
    out_NxKxQRxDh = jnp.einsum("bkms,bskh->bkmh", probs_NxKxQRxS, v_NxSxKxDh,
                             preferred_element_type=jnp.float32)
    return _from_groups(out_NxKxQRxDh, t, r).astype(q_NxQxKxRxDh.dtype)


# ---------------------------------------------------------------- blockwise

def _block_scores(q_NxKxQRxDh: jax.Array, k_NxSxKxDh: jax.Array,
                  key_mask_NxS: jax.Array, q_slot_QR: jax.Array,
                  k_start: jax.Array, scale: float) -> jax.Array:
    """Masked float32 scores of a query block against the key block at k_start."""
    bk = k_NxSxKxDh.shape[1]
    scores_NxKxQRxS = jnp.einsum("bkmh,bskh->bkms", q_NxKxQRxDh, k_NxSxKxDh,
                                 preferred_element_type=jnp.float32) * scale
    k_slot_S = k_start + jnp.arange(bk, dtype=jnp.int32)
    return jnp.where(_visible(key_mask_NxS, q_slot_QR, k_slot_S), scores_NxKxQRxS,
                     MASK_VALUE)


def _key_blocks_needed(last_q_slot: jax.Array, block_k: int, num_k: int) -> jax.Array:
    """How many key blocks from the first hold a slot <= last_q_slot."""
    return jnp.clip(last_q_slot // block_k + 1, 0, num_k)


def _blockwise_forward(q_NxKxQRxDh: jax.Array, k_NxSxKxDh: jax.Array,
                       v_NxSxKxDh: jax.Array, key_mask_NxS: jax.Array,
                       q_offset: jax.Array, r: int, block_q: int, block_k: int
                       ) -> tuple[jax.Array, jax.Array]:
    """(out_NxKxQRxDh in q's dtype, float32 lse_NxKxQR); Q, S multiples of the blocks."""
    b, kh, qr, h = q_NxKxQRxDh.shape
    s = k_NxSxKxDh.shape[1]
    bqr, num_q, num_k = block_q * r, qr // (block_q * r), s // block_k
    scale = h ** -0.5
    q_NqxNxKxBqRxDh = q_NxKxQRxDh.reshape(b, kh, num_q, bqr, h).transpose(2, 0, 1, 3, 4)
    in_block_QR = jnp.arange(bqr, dtype=jnp.int32) // r

    def query_block(args: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        i, q_NxKxBqRxDh = args
        q_slot_QR = q_offset + i * block_q + in_block_QR

        def key_block(j: jax.Array, carry: tuple[jax.Array, ...]
                      ) -> tuple[jax.Array, ...]:
            max_NxKxBqR, sum_NxKxBqR, acc_NxKxBqRxDh = carry
            start = j * block_k
            k_blk = jax.lax.dynamic_slice_in_dim(k_NxSxKxDh, start, block_k, axis=1)
            v_blk = jax.lax.dynamic_slice_in_dim(v_NxSxKxDh, start, block_k, axis=1)
            mask_blk = jax.lax.dynamic_slice_in_dim(key_mask_NxS, start, block_k,
                                                    axis=1)
            scores = _block_scores(q_NxKxBqRxDh, k_blk, mask_blk, q_slot_QR, start,
                                   scale)
            new_max = jnp.maximum(max_NxKxBqR, jnp.max(scores, axis=-1))
            probs = jnp.exp(scores - new_max[..., None])
            rescale = jnp.exp(max_NxKxBqR - new_max)
            acc_NxKxBqRxDh = acc_NxKxBqRxDh * rescale[..., None] + jnp.einsum(
                "bkms,bskh->bkmh", probs.astype(v_blk.dtype), v_blk,
                preferred_element_type=jnp.float32)
            return new_max, sum_NxKxBqR * rescale + jnp.sum(probs, axis=-1), acc_NxKxBqRxDh

        init = (jnp.full((b, kh, bqr), MASK_VALUE, jnp.float32),
                jnp.zeros((b, kh, bqr), jnp.float32),
                jnp.zeros((b, kh, bqr, h), jnp.float32))
        last = _key_blocks_needed(q_slot_QR[-1], block_k, num_k)
        max_, sum_, acc = jax.lax.fori_loop(0, last, key_block, init)
        out = (acc / sum_[..., None]).astype(q_NxKxBqRxDh.dtype)
        return out, max_ + jnp.log(sum_)

    out_Nq, lse_Nq = jax.lax.map(
        query_block, (jnp.arange(num_q, dtype=jnp.int32), q_NqxNxKxBqRxDh))
    out_NxKxQRxDh = out_Nq.transpose(1, 2, 0, 3, 4).reshape(b, kh, qr, h)
    return out_NxKxQRxDh, lse_Nq.transpose(1, 2, 0, 3).reshape(b, kh, qr)


def _blockwise_backward(q_NxKxQRxDh: jax.Array, k_NxSxKxDh: jax.Array,
                        v_NxSxKxDh: jax.Array, key_mask_NxS: jax.Array,
                        q_offset: jax.Array, out_NxKxQRxDh: jax.Array,
                        lse_NxKxQR: jax.Array, dout_NxKxQRxDh: jax.Array, r: int,
                        block_q: int, block_k: int
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gradients of q, k, v, recomputing each block's probabilities from lse.

    Key blocks outside, query blocks inside (from the first that can see the
    key block); dq accumulates in one float32 buffer the size of q.
    """
    b, kh, qr, h = q_NxKxQRxDh.shape
    s = k_NxSxKxDh.shape[1]
    bqr, num_q, num_k = block_q * r, qr // (block_q * r), s // block_k
    scale = h ** -0.5
    dt = q_NxKxQRxDh.dtype
    # D = rowsum(dO * O), the softmax-Jacobian term shared by a row's blocks.
    delta_NxKxQR = jnp.sum(dout_NxKxQRxDh.astype(jnp.float32) *
                           out_NxKxQRxDh.astype(jnp.float32), axis=-1)
    in_block_QR = jnp.arange(bqr, dtype=jnp.int32) // r

    def q_slice(x: jax.Array, i: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice_in_dim(x, i * bqr, bqr, axis=2)

    def key_block(dq_NxKxQRxDh: jax.Array, j: jax.Array
                  ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        start = j * block_k
        k_blk = jax.lax.dynamic_slice_in_dim(k_NxSxKxDh, start, block_k, axis=1)
        v_blk = jax.lax.dynamic_slice_in_dim(v_NxSxKxDh, start, block_k, axis=1)
        mask_blk = jax.lax.dynamic_slice_in_dim(key_mask_NxS, start, block_k, axis=1)

        def query_block(i: jax.Array, carry: tuple[jax.Array, ...]
                        ) -> tuple[jax.Array, ...]:
            dk_blk, dv_blk, dq = carry
            q_i = q_slice(q_NxKxQRxDh, i)
            dout_i = q_slice(dout_NxKxQRxDh, i)
            lse_i = jax.lax.dynamic_slice_in_dim(lse_NxKxQR, i * bqr, bqr, axis=2)
            delta_i = jax.lax.dynamic_slice_in_dim(delta_NxKxQR, i * bqr, bqr, axis=2)
            q_slot_QR = q_offset + i * block_q + in_block_QR
            scores = _block_scores(q_i, k_blk, mask_blk, q_slot_QR, start, scale)
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
            dq = jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * bqr, axis=2)
            return dk_blk, dv_blk, dq

        # The first query block holding a slot >= this key block's first slot.
        first = jnp.clip((start - q_offset) // block_q, 0, num_q)
        zeros = jnp.zeros((b, block_k, kh, h), jnp.float32)
        dk_blk, dv_blk, dq_NxKxQRxDh = jax.lax.fori_loop(
            first, num_q, query_block, (zeros, zeros, dq_NxKxQRxDh))
        return dq_NxKxQRxDh, (dk_blk, dv_blk)

    dq_NxKxQRxDh, (dk_Nk, dv_Nk) = jax.lax.scan(
        key_block, jnp.zeros((b, kh, qr, h), jnp.float32),
        jnp.arange(num_k, dtype=jnp.int32))

    def unblock(x_NkxNxBkxKxDh: jax.Array) -> jax.Array:
        return x_NkxNxBkxKxDh.transpose(1, 0, 2, 3, 4).reshape(b, s, kh, h)

    return (dq_NxKxQRxDh.astype(dt), unblock(dk_Nk).astype(k_NxSxKxDh.dtype),
            unblock(dv_Nk).astype(v_NxSxKxDh.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _blockwise(q_NxKxQRxDh: jax.Array, k_NxSxKxDh: jax.Array, v_NxSxKxDh: jax.Array,
               key_mask_NxS: jax.Array, q_offset: jax.Array, r: int, block_q: int,
               block_k: int) -> jax.Array:
    return _blockwise_forward(q_NxKxQRxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS,
                              q_offset, r, block_q, block_k)[0]


def _blockwise_fwd(q_NxKxQRxDh: jax.Array, k_NxSxKxDh: jax.Array,
                   v_NxSxKxDh: jax.Array, key_mask_NxS: jax.Array,
                   q_offset: jax.Array, r: int, block_q: int, block_k: int
                   ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    out, lse = _blockwise_forward(q_NxKxQRxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS,
                                  q_offset, r, block_q, block_k)
    return out, (q_NxKxQRxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS, q_offset, out, lse)


def _blockwise_bwd(r: int, block_q: int, block_k: int,
                   residuals: tuple[jax.Array, ...], dout_NxKxQRxDh: jax.Array
                   ) -> tuple[jax.Array | None, ...]:
    q, k, v, key_mask, q_offset, out, lse = residuals
    dq, dk, dv = _blockwise_backward(q, k, v, key_mask, q_offset, out, lse,
                                     dout_NxKxQRxDh, r, block_q, block_k)
    return dq, dk, dv, None, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(q_NxQxKxRxDh: jax.Array, k_NxSxKxDh: jax.Array,
                        v_NxSxKxDh: jax.Array, key_mask_NxS: jax.Array,
                        q_offset: jax.Array | int = 0, *,
                        block_q: int = DEFAULT_BLOCK,
                        block_k: int = DEFAULT_BLOCK) -> jax.Array:
    """Attention by online softmax over key blocks, memory linear in Q and S.

    Q and S are padded up to multiples of the (clipped) block sizes; padded
    keys are masked out and padded queries dropped.
    """
    _check(q_NxQxKxRxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"attention blocks must be >= 1, got block_q={block_q}, "
                         f"block_k={block_k}")
    b, t, kh, r, h = q_NxQxKxRxDh.shape
    s = k_NxSxKxDh.shape[1]
    bq, bk = min(block_q, t), min(block_k, s)
    pad_t, pad_s = -t % bq, -s % bk
    key_mask_NxS = key_mask_NxS.astype(bool)
    if pad_t:
        q_NxQxKxRxDh = jnp.pad(q_NxQxKxRxDh, ((0, 0), (0, pad_t), (0, 0), (0, 0), (0, 0)))
    if pad_s:
        widths = ((0, 0), (0, pad_s), (0, 0), (0, 0))
        k_NxSxKxDh, v_NxSxKxDh = jnp.pad(k_NxSxKxDh, widths), jnp.pad(v_NxSxKxDh, widths)
        key_mask_NxS = jnp.pad(key_mask_NxS, ((0, 0), (0, pad_s)))
    out_NxKxQRxDh = _blockwise(_to_groups(q_NxQxKxRxDh), k_NxSxKxDh, v_NxSxKxDh,
                             key_mask_NxS, jnp.asarray(q_offset, jnp.int32), r, bq, bk)
    return _from_groups(out_NxKxQRxDh, t + pad_t, r)[:, :t]


# ---------------------------------------------------------------- kernels

def _cudnn_applies(q_NxQxKxRxDh: jax.Array, k_NxSxKxDh: jax.Array,
                   q_offset: jax.Array | int) -> bool:
    h = q_NxQxKxRxDh.shape[-1]
    return (isinstance(q_offset, int) and q_offset == 0 and
            q_NxQxKxRxDh.shape[1] == k_NxSxKxDh.shape[1] and
            q_NxQxKxRxDh.dtype in (jnp.bfloat16, jnp.float16) and
            h <= 128 and h % 8 == 0)


def cudnn_attention(q_NxQxKxRxDh: jax.Array, k_NxSxKxDh: jax.Array,
                    v_NxSxKxDh: jax.Array, key_mask_NxS: jax.Array) -> jax.Array:
    """cuDNN flash attention for left-padded rows, Q = S (module docstring)."""
    _check(q_NxQxKxRxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS)
    b, t, kh, r, h = q_NxQxKxRxDh.shape
    # A row without any real token counts its last slot as one, so that cuDNN
    # never sees a zero length: its output stays finite garbage.
    length_N = jnp.maximum(jnp.sum(key_mask_NxS.astype(jnp.int32), axis=1), 1)
    # Rotate each row left by its padding: real tokens first, in order.
    slot_NxQ = (jnp.arange(t, dtype=jnp.int32)[None, :] + (t - length_N)[:, None]) % t

    def rotate(x: jax.Array, slots: jax.Array) -> jax.Array:
        return jnp.take_along_axis(x, slots.reshape(slots.shape + (1,) * (x.ndim - 2)),
                                   axis=1)

    q_NxQxHxDh = rotate(q_NxQxKxRxDh, slot_NxQ).reshape(b, t, kh * r, h)
    out_NxQxHxDh = jax.nn.dot_product_attention(
        q_NxQxHxDh, rotate(k_NxSxKxDh, slot_NxQ), rotate(v_NxSxKxDh, slot_NxQ),
        is_causal=True, query_seq_lengths=length_N, key_value_seq_lengths=length_N,
        implementation="cudnn")
    back_NxQ = (jnp.arange(t, dtype=jnp.int32)[None, :] - (t - length_N)[:, None]) % t
    return rotate(out_NxQxHxDh, back_NxQ).reshape(b, t, kh, r, h)


def _splash_block(t: int) -> int | None:
    for block in (512, 256, 128):
        if t % block == 0:
            return block
    return None


def _splash_applies(q_NxQxKxRxDh: jax.Array, k_NxSxKxDh: jax.Array,
                    q_offset: jax.Array | int) -> bool:
    t = q_NxQxKxRxDh.shape[1]
    return (isinstance(q_offset, int) and q_offset == 0 and
            t == k_NxSxKxDh.shape[1] and _splash_block(t) is not None)


def splash_attention(q_NxQxKxRxDh: jax.Array, k_NxSxKxDh: jax.Array,
                     v_NxSxKxDh: jax.Array, key_mask_NxS: jax.Array, *,
                     interpret: bool = False) -> jax.Array:
    """Pallas splash attention (causal, key mask as segment ids), Q = S.

    A query sees a key iff both are real or both are padding (and causal): a
    real query sees exactly the mask rule's keys, and a padding query sees at
    least itself, so no row is empty.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash, splash_attention_mask as splash_mask)
    _check(q_NxQxKxRxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS)
    b, t, kh, r, h = q_NxQxKxRxDh.shape
    block = _splash_block(t)
    if block is None or k_NxSxKxDh.shape[1] != t:
        raise ValueError(f"splash attention needs Q = S, a multiple of 128; got "
                         f"Q={t}, S={k_NxSxKxDh.shape[1]}")
    n = kh * r
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
    # Query head n = kv head n // R, the kernel's grouping too.
    q_NxHxQxDh = (q_NxQxKxRxDh.reshape(b, t, n, h).transpose(0, 2, 1, 3) *
                 jnp.asarray(h ** -0.5, q_NxQxKxRxDh.dtype))
    segments_NxQ = key_mask_NxS.astype(jnp.int32)

    def one_row(q_HxQxDh: jax.Array, k_KxSxDh: jax.Array, v_KxSxDh: jax.Array,
                seg_Q: jax.Array) -> jax.Array:
        return kernel(q_HxQxDh, k_KxSxDh, v_KxSxDh,
                      segment_ids=splash.SegmentIds(q=seg_Q, kv=seg_Q))

    def rows(q_NxHxQxDh: jax.Array, k_NxKxSxDh: jax.Array, v_NxKxSxDh: jax.Array,
             segments_NxQ: jax.Array) -> jax.Array:
        return jax.vmap(one_row)(q_NxHxQxDh, k_NxKxSxDh, v_NxKxSxDh, segments_NxQ)

    k_NxKxSxDh, v_NxKxSxDh = k_NxSxKxDh.transpose(0, 2, 1, 3), v_NxSxKxDh.transpose(0, 2, 1, 3)
    if specs is not None:
        # Each device runs the kernel on its rows and kv heads (query heads
        # split alike: head n belongs to kv head n // R).
        mesh, rows_spec, heads_spec, _ = specs
        rows = jax.shard_map(rows, mesh=mesh, in_specs=(heads_spec,) * 3 + (rows_spec,),
                             out_specs=heads_spec, check_vma=False)
    out_NxHxQxDh = rows(q_NxHxQxDh, k_NxKxSxDh, v_NxKxSxDh, segments_NxQ)
    return out_NxHxQxDh.transpose(0, 2, 1, 3).reshape(b, t, kh, r, h).astype(
        q_NxQxKxRxDh.dtype)


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


def current_partition() -> tuple[Mesh, sharding_lib.Rules] | None:
    """The (mesh, rules) of the innermost `partitioned`, or None outside one
    (golfjax/models/moe.py splits its experts over the same mesh)."""
    return _PARTITION.get()


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

def attention(q_NxQxKxRxDh: jax.Array, k_NxSxKxDh: jax.Array, v_NxSxKxDh: jax.Array,
              key_mask_NxS: jax.Array, q_offset: jax.Array | int = 0, *,
              implementation: str = "auto", block: int = DEFAULT_BLOCK,
              platform: str | None = None) -> jax.Array:
    """Self-attention under the mask rule of the module docstring.

    Args:
      q_NxQxKxRxDh: queries after RoPE, grouped by kv head.
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
        implementation = _pick(q_NxQxKxRxDh, k_NxSxKxDh, q_offset, block,
                               platform or platform_lib.current())
        if implementation == "cudnn":
            # cuDNN's own checks (library present, version, layout) run at
            # trace time; where they refuse, the blockwise attention serves.
            try:
                return cudnn_attention(q_NxQxKxRxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS)
            except (RuntimeError, NotImplementedError, ValueError):
                implementation = "blockwise"
    if implementation == "reference":
        return reference_attention(q_NxQxKxRxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS,
                                   q_offset)
    if implementation == "blockwise":
        return blockwise_attention(q_NxQxKxRxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS,
                                   q_offset, block_q=block, block_k=block)
    if not (isinstance(q_offset, int) and q_offset == 0):
        raise ValueError(f"attention implementation {implementation!r} needs "
                         f"q_offset 0 (no cache); got {q_offset!r}")
    if implementation == "cudnn":
        return cudnn_attention(q_NxQxKxRxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS)
    return splash_attention(q_NxQxKxRxDh, k_NxSxKxDh, v_NxSxKxDh, key_mask_NxS)


def _pick(q_NxQxKxRxDh: jax.Array, k_NxSxKxDh: jax.Array,
          q_offset: jax.Array | int, block: int, platform: str) -> str:
    if platform == "gpu" and _cudnn_applies(q_NxQxKxRxDh, k_NxSxKxDh, q_offset):
        return "cudnn"
    if platform == "tpu" and _splash_applies(q_NxQxKxRxDh, k_NxSxKxDh, q_offset):
        return "splash"
    if q_NxQxKxRxDh.shape[1] * k_NxSxKxDh.shape[1] <= block * block:
        return "reference"
    return "blockwise"
