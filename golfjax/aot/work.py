"""How much work each program of a run does per call: flops and HBM bytes per device.

XLA's `cost_analysis()` counts every loop body once: a 10-step `lax.scan`
reports one step's flops (measured on this TPU compiler), and golfjax scans
its layers, its micro-batches, its log-prob chunks and its decode steps. So
the roofline of golfjax/aot/__init__.py uses this module's count of the work,
written from the model's dims and the program's shapes; XLA's own figures are
kept beside it in the reports. Every count is the least work the program
does, as a roofline needs: a matmul of m x k by k x n is 2mkn flops; causal
attention over L tokens visits L (L + 1) / 2 query-key pairs, 4 H Dh flops
each (scores and values); bytes are the parameters, optimizer moments,
saved activations and KV cache each pass must read or write at least once.

Per pass over a sequence of L tokens, for a model of L_m layers whose layer
holds W_l matmul weights (`layer_matmul_params`):

    forward   2 * L * L_m * W_l  +  4 * H * Dh * L_m * L (L + 1) / 2
    logits    2 * D * V per scored position

A train step runs each micro-batch's layers forward once, backward (twice
the forward's flops), and again forward when `remat` recomputes them; the
log-prob chunks (golfjax/train/logprobs.py) score positions under
`jax.checkpoint`, so their logits are computed twice as well as
differentiated. A decode step is one token per row against the slots its
loop's cache holds (`decode.decode_segments`).

Per device: flops divide over every device of the mesh (rows over data x
fsdp, heads and the MLP over tensor); each device reads every parameter it
computes with (FSDP gathers them; tensor parallelism splits them).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from golfjax import decode
from golfjax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Work:
    """One call's flops and HBM bytes on one device (the least, see above)."""

    flops: float
    bytes: float

    def seconds(self, peak_flops: float, hbm_bytes_per_s: float) -> float:
        """The roofline time: the slower of compute and memory at their peaks."""
        return max(self.flops / peak_flops, self.bytes / hbm_bytes_per_s)

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.bytes + other.bytes)


@dataclasses.dataclass(frozen=True)
class Mesh:
    """What the estimates need of a mesh: its devices, row shards and tensor shards."""

    devices: int
    row_shards: int
    tensor: int


def layer_matmul_params(c: ModelConfig) -> float:
    """W_l: one layer's matmul weights a token goes through (q, k, v, o and the
    SwiGLU MLP; in an MoE layer the router and the A experts it routes the
    token to), averaged over the layers."""
    attention = c.embed_dim * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    sparse = len(c.moe_layers)
    if not sparse:
        return attention + 3 * c.embed_dim * c.mlp_dim
    experts = c.embed_dim * c.num_experts + 3 * c.experts_per_token * c.embed_dim * c.moe_mlp_dim
    dense = 3 * c.embed_dim * c.mlp_dim
    return attention + (sparse * experts + (c.num_layers - sparse) * dense) / c.num_layers


def param_bytes(c: ModelConfig) -> int:
    return c.num_params * jnp.dtype(c.param_dtype).itemsize


def kv_bytes_per_slot(c: ModelConfig) -> int:
    """One cache slot's keys and values over every layer, for one row."""
    return 2 * c.num_layers * c.num_kv_heads * c.head_dim * jnp.dtype(c.compute_dtype).itemsize


def _layers_flops(c: ModelConfig, tokens: int, pairs: float) -> float:
    """One forward pass of every layer over `tokens` tokens of one row that
    attend over `pairs` query-key pairs."""
    return 2 * tokens * c.num_layers * layer_matmul_params(c) + 4 * c.num_heads * c.head_dim * c.num_layers * pairs


def _causal_pairs(length: int) -> float:
    return length * (length + 1) / 2


def train_step(c: ModelConfig, parts: list[tuple[int, int]], response: int, micro_batches: int,
               mesh: Mesh) -> Work:
    """One optimizer step over `parts` [(rows, prompt length)] of `response`
    tokens each, in `micro_batches` micro-batches per part."""
    passes = 3 + c.remat  # Forward, backward (2x), and the recomputed forward.
    flops, activations = 0.0, 0.0
    width = jnp.dtype(c.compute_dtype).itemsize
    for rows, prompt in parts:
        length = prompt + response
        flops += rows * (passes * _layers_flops(c, length, _causal_pairs(length))
                         + 4 * 2 * response * c.embed_dim * c.vocab_size)
        # Each layer's input, saved forward and read back (remat's residuals).
        activations += 2 * rows / mesh.row_shards * length * c.embed_dim * width * c.num_layers
    weights = param_bytes(c)
    streamed = len(parts) * micro_batches * ((2 + c.remat) * weights / mesh.tensor  # Forward(s), backward.
                                             + 2 * weights / mesh.devices)  # The gradient accumulator.
    update = 7 * weights / mesh.devices  # Read params, grads, 2 moments; write params, 2 moments.
    return Work(flops / mesh.devices, streamed + update + activations)


def logprobs(c: ModelConfig, rows: int, prompt: int, response: int, mesh: Mesh) -> Work:
    """Teacher-forced log-probs of `rows` rows (one forward, chunked logits)."""
    length = prompt + response
    flops = rows * (_layers_flops(c, length, _causal_pairs(length)) + 2 * response * c.embed_dim * c.vocab_size)
    return Work(flops / mesh.devices, param_bytes(c) / mesh.tensor)


def prefill(c: ModelConfig, rows: int, prompt: int, mesh: Mesh) -> Work:
    """The prompts' forward pass into a fresh cache, logits at every position
    (`transformer.apply`; the sampler keeps the last one)."""
    flops = rows * (_layers_flops(c, prompt, _causal_pairs(prompt)) + 2 * prompt * c.embed_dim * c.vocab_size)
    cache = rows / mesh.row_shards * prompt * kv_bytes_per_slot(c) / mesh.tensor
    return Work(flops / mesh.devices, param_bytes(c) / mesh.tensor + cache)


def decode_program(c: ModelConfig, rows: int, prompt: int, new_tokens: int, loops: int,
                   mesh: Mesh) -> Work:
    """Every decode step of one `generate` call, every row running to
    `new_tokens` (each step reads its loop's slots: `decode.loop_caches`)."""
    work = Work(0.0, 0.0)
    for main, slots, end in decode.loop_caches(prompt, new_tokens, loops):
        steps = end - (main - prompt + 1)  # The loop runs steps main - P + 1 .. end - 1.
        step = decode_step(c, rows, slots, mesh)
        work += Work(steps * step.flops, steps * step.bytes)
    return work


def decode_step(c: ModelConfig, rows: int, slots: int, mesh: Mesh) -> Work:
    """One token for each of `rows` rows against `slots` cache slots; its
    bytes are `decode.decode_bytes_per_step`'s for one device's rows, split
    over the tensor shards."""
    flops = rows * (_layers_flops(c, 1, slots) + 2 * c.embed_dim * c.vocab_size)
    return Work(flops / mesh.devices,
                decode.decode_bytes_per_step(c, rows / mesh.row_shards, slots) / mesh.tensor)
