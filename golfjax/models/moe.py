"""Mixture-of-Experts MLP (Qwen 3 MoE): a float32 top-k router, dropless experts.

Letters (golfjax/types.py): N rows, Q tokens, D embed_dim, E experts, A
experts per token, F an expert's width (`moe_mlp_dim`), L MoE layers; NQ are
the routed tokens flattened and NQA their token-expert assignments.

Routing, as transformers' `Qwen3MoeTopKRouter`: float32 logits `x @ router`,
`probs = softmax(logits)`, the A most probable experts, weighted by their
probabilities, renormalised to sum to 1 when `norm_topk_prob`.

Dispatch is dropless: the NQA assignments are sorted by expert, each expert's
contiguous rows go through its SwiGLU in one grouped matmul
(`jax.lax.ragged_dot`, or the megablox grouped-matmul kernel on TPU), and the
A outputs of a token are unsorted, weighted and summed. No expert has a
capacity, so no token is dropped or padded away, and the result is the one
of evaluating every expert on every token and keeping the chosen ones
(tests/models/moe_test.py checks exactly that, forward and backward).

Expert parallelism. The parameters name their expert axis "expert"
(golfjax/sharding.py maps it to "fsdp"), so each device of that axis holds
E / ep experts. Traced under `attention.partitioned(mesh)` (the Trainer's
and the Sampler's programs are) the dispatch runs in a `shard_map`: each
device all-gathers the tokens of its expert group (the devices sharing its
other row axes), runs its own experts on the assignments routed to them,
and a reduce-scatter returns every token's summed output to the device that
holds its row (MaxText's all-gather / reduce-scatter form of expert
parallelism); an expert width split over "tensor" adds a psum. Outside
that context, or on one device, XLA partitions the plain dispatch.

Routing replay: `replay = (ids_NxQxA, use_NxQ)` routes the tokens where
`use_NxQ` is set to the recorded experts instead of the router's choice;
their weights are still the current router's probabilities of those
experts (renormalised likewise), so the router keeps its gradient. The
router's own choice is returned either way (`LayerRouting.ids_NxQxA`), for
the sampler to record and the train step to compare (docs/algorithms.md).

Load balancing: `load_balancing_loss` is transformers'
`load_balancing_loss_func` over the per-layer statistics a forward pass
returns, its layers' tokens pooled as transformers concatenates them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from golfjax import sharding as sharding_lib
from golfjax.models import attention as attention_lib
from golfjax.models import platform as platform_lib
from golfjax.models.config import ModelConfig

IMPLEMENTATIONS = ("auto", "ragged_dot", "megablox")
_MEGABLOX_TILE = 128  # The megablox kernel's tile: rows are padded to it.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerRouting:
    """One MoE layer's routing in a forward pass.

    Attributes:
      ids_NxQxA: int32, the A experts the router chose for each token (its own
        top-k, also where a replay overrode it).
      counts_E: float32, the tokens (weighted by the token mask) whose top-k
        holds each expert.
      probs_E: float32, the router probabilities of each expert summed over
        the (masked) tokens; differentiable.
    """

    ids_NxQxA: jax.Array
    counts_E: jax.Array
    probs_E: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Routing:
    """A forward pass's `LayerRouting`s, over its L MoE layers in order.

    Attributes:
      ids_NxQxLxA: int32, each token's chosen experts in every MoE layer.
      counts_LxE, probs_LxE: `LayerRouting.counts_E`, `probs_E` per layer.
    """

    ids_NxQxLxA: jax.Array
    counts_LxE: jax.Array
    probs_LxE: jax.Array


def route_dtype(num_experts: int) -> np.dtype:
    """The narrowest dtype recorded expert ids are stored in (uint8 up to 256)."""
    return np.dtype(np.uint8) if num_experts <= 256 else np.dtype(np.int32)


def route_spec(config: ModelConfig) -> tuple[int, int, np.dtype] | None:
    """(L, A, dtype) of the routes an MoE model's rollout records for each
    token (`Rollout.routes_NxTxLxA`), or None for a dense model."""
    if not config.moe_layers:
        return None
    return len(config.moe_layers), config.experts_per_token, route_dtype(config.num_experts)


def route(x_NxQxD: jax.Array, router_DxE: jax.Array, config: ModelConfig, *,
          token_mask_NxQ: jax.Array | None = None,
          replay: tuple[jax.Array, jax.Array] | None = None
          ) -> tuple[jax.Array, jax.Array, LayerRouting]:
    """The routing of every token: (weights_NxQxA float32, ids_NxQxA, LayerRouting).

    `ids` are the experts the tokens go to (the recorded ones where `replay`
    says so), `weights` the current router's probabilities of them.
    """
    logits_NxQxE = jnp.einsum("ntd,de->nte", x_NxQxD.astype(jnp.float32),
                              router_DxE.astype(jnp.float32))
    probs_NxQxE = jax.nn.softmax(logits_NxQxE, axis=-1)
    _, chosen_NxQxA = jax.lax.top_k(probs_NxQxE, config.experts_per_token)
    ids_NxQxA = chosen_NxQxA
    if replay is not None:
        replay_NxQxA, use_NxQ = replay
        ids_NxQxA = jnp.where(use_NxQ[..., None], replay_NxQxA.astype(jnp.int32),
                              chosen_NxQxA)
    weights_NxQxA = jnp.take_along_axis(probs_NxQxE, ids_NxQxA, axis=-1)
    if config.norm_topk_prob:
        weights_NxQxA = weights_NxQxA / jnp.sum(weights_NxQxA, axis=-1, keepdims=True)
    mask_NxQ = (jnp.ones(x_NxQxD.shape[:2], jnp.float32) if token_mask_NxQ is None
                else token_mask_NxQ.astype(jnp.float32))
    hits_NxQxE = jnp.sum(jax.nn.one_hot(chosen_NxQxA, probs_NxQxE.shape[-1],
                                        dtype=jnp.float32), axis=2)
    stats = LayerRouting(
        ids_NxQxA=chosen_NxQxA,
        counts_E=jnp.einsum("nte,nt->e", hits_NxQxE, mask_NxQ),
        probs_E=jnp.einsum("nte,nt->e", probs_NxQxE, mask_NxQ))
    return weights_NxQxA, ids_NxQxA, stats


def load_balancing_loss(routing: Routing, config: ModelConfig) -> jax.Array:
    """transformers' `load_balancing_loss_func` (the Switch Transformer's loss).

    `E * sum_e f_e * P_e`, with f_e the share of the pooled (masked token,
    MoE layer) top-k assignments that go to expert e (summing to A) and P_e
    its mean router probability over the same tokens. 0 for no token.
    """
    counts_E = jnp.sum(routing.counts_LxE, axis=0)
    probs_E = jnp.sum(routing.probs_LxE, axis=0)
    tokens = jnp.sum(counts_E) / config.experts_per_token  # Tokens x layers.
    safe = jnp.where(tokens > 0, tokens, 1.0)
    loss = config.num_experts * jnp.sum((counts_E / safe) * (probs_E / safe))
    return jnp.where(tokens > 0, loss, 0.0)


def _pick(implementation: str, in_features: int, out_features: int) -> str:
    """The grouped matmul to run: "auto" is the megablox kernel when tracing
    for TPU and both feature counts are multiples of its 128-wide tiles (its
    backward pass reuses the forward's tiles with the two swapped), else
    `ragged_dot`."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"grouped matmul implementation {implementation!r}; expected "
                         f"one of {IMPLEMENTATIONS}")
    tiled = in_features % _MEGABLOX_TILE == 0 and out_features % _MEGABLOX_TILE == 0
    if implementation == "auto":
        return "megablox" if tiled and platform_lib.current() == "tpu" else "ragged_dot"
    if implementation == "megablox" and not tiled:
        raise ValueError(f"megablox grouped matmul: features {in_features} x {out_features}"
                         f" are not multiples of its {_MEGABLOX_TILE}-wide tiles")
    return implementation


def grouped_matmul(lhs_NQAxI: jax.Array, rhs_ExIxO: jax.Array, sizes_E: jax.Array, *,
                   implementation: str = "auto", interpret: bool = False) -> jax.Array:
    """Row group g of `lhs` (contiguous, `sizes_E[g]` rows) times `rhs[g]`.

    Rows past `sum(sizes_E)` belong to no group: their output is zero and
    they get no gradient (whatever a kernel leaves in rows it never visits).
    Accumulates in float32; returns `lhs`'s dtype. "megablox" is the Pallas
    TPU kernel (`interpret` runs it anywhere, for tests); it computes tiles
    of 128 x 128 x 128, so the rows are padded to that.
    """
    dt = lhs_NQAxI.dtype
    m = lhs_NQAxI.shape[0]
    grouped_NQAx1 = (jnp.arange(m) < jnp.sum(sizes_E))[:, None]
    lhs_NQAxI = jnp.where(grouped_NQAx1, lhs_NQAxI, 0)
    if _pick(implementation, *rhs_ExIxO.shape[1:]) == "ragged_dot":
        out = jax.lax.ragged_dot(lhs_NQAxI, rhs_ExIxO, sizes_E,
                                 preferred_element_type=jnp.float32)
    else:
        from jax.experimental.pallas.ops.tpu.megablox import ops as megablox

        lhs = jnp.pad(lhs_NQAxI, ((0, -m % _MEGABLOX_TILE), (0, 0)))
        out = megablox.gmm(lhs, rhs_ExIxO, sizes_E.astype(jnp.int32), jnp.float32,
                           (_MEGABLOX_TILE,) * 3, None, None, False, interpret)[:m]
    return jnp.where(grouped_NQAx1, out, 0).astype(dt)


def expert_mlp(x_NQxD: jax.Array, ids_NQxA: jax.Array, weights_NQxA: jax.Array,
               gate_ExDxF: jax.Array, up_ExDxF: jax.Array, down_ExFxD: jax.Array, *,
               implementation: str = "auto") -> jax.Array:
    """`sum_a weights[r, a] * expert_{ids[r, a]}(x[r])`, float32, dropless.

    An id of E (the number of experts given) means "not here": that
    assignment adds nothing (expert parallelism passes the ids of experts
    held elsewhere so). The NQA assignments are sorted by expert (a stable
    sort), gathered into contiguous groups for `grouped_matmul`, and the
    outputs gathered back into token order before the weighted sum.
    """
    r, a = ids_NQxA.shape
    e = gate_ExDxF.shape[0]
    ids_NQA = ids_NQxA.reshape(-1).astype(jnp.int32)
    order_NQA = jnp.argsort(ids_NQA, stable=True)
    # Assignments elsewhere (id E) sort last, past every group: output zero.
    sizes_E = jnp.zeros((e + 1,), jnp.int32).at[ids_NQA].add(1)[:e]
    x_NQAxD = jnp.take(x_NQxD, order_NQA // a, axis=0)
    matmul = functools.partial(grouped_matmul, sizes_E=sizes_E,
                               implementation=implementation)
    h_NQAxF = jax.nn.silu(matmul(x_NQAxD, gate_ExDxF)) * matmul(x_NQAxD, up_ExDxF)
    y_NQAxD = matmul(h_NQAxF, down_ExFxD)
    # Back to token order: sorted position j holds assignment order_NQA[j].
    unsort_NQA = jnp.zeros_like(order_NQA).at[order_NQA].set(
        jnp.arange(order_NQA.shape[0], dtype=order_NQA.dtype))
    y_NQxAxD = jnp.take(y_NQAxD, unsort_NQA, axis=0).reshape(r, a, -1)
    return jnp.einsum("rad,ra->rd", y_NQxAxD.astype(jnp.float32),
                      weights_NQxA.astype(jnp.float32))


class _Plan(NamedTuple):
    """The mesh axes of expert-parallel dispatch (`_parallel_plan`)."""

    mesh: Mesh
    rows: tuple[str, ...]  # The token rows' axes (the `batch` rule).
    experts: tuple[str, ...]  # The expert axis' (`expert`).
    width: tuple[str, ...]  # The expert width's (`expert_mlp`).


def _axes(axes: sharding_lib.MeshAxes) -> tuple[str, ...]:
    return () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))


def _parallel_plan(rows: int, num_experts: int, width: int) -> _Plan | None:
    """How to shard_map the dispatch, or None for XLA's own partitioning.

    None outside `attention.partitioned`, on one device, when the rows do
    not split over their axes (only shape-only traces see such counts, as
    the train step's `eval_shape` of one row), or when the rules split the
    expert width over an axis that also splits the rows.
    """
    partition = attention_lib.current_partition()
    if partition is None or partition[0].size == 1:
        return None
    mesh, rules = partition
    table = dict(rules)
    plan = _Plan(mesh, _axes(table.get("batch")), _axes(table.get("expert")),
                 _axes(table.get("expert_mlp")))
    size = functools.partial(sharding_lib.mesh_axis_size, mesh)
    if (rows % size(plan.rows) or num_experts % size(plan.experts)
            or width % size(plan.width) or set(plan.width) & set(plan.rows)):
        return None
    return plan


def _dispatch_parallel(plan: _Plan, x_NxQxD: jax.Array, ids_NxQxA: jax.Array,
                       weights_NxQxA: jax.Array, gate_ExDxF: jax.Array,
                       up_ExDxF: jax.Array, down_ExFxD: jax.Array,
                       implementation: str) -> jax.Array:
    """`expert_mlp` with the experts split over `plan.experts` (module docstring)."""
    gathered = tuple(a for a in plan.experts if a in plan.rows)
    partial = tuple(a for a in plan.experts if a not in plan.rows) + plan.width
    dt = x_NxQxD.dtype

    def local(x_NxQxD: jax.Array, ids_NxQxA: jax.Array, weights_NxQxA: jax.Array,
              gate_ExDxF: jax.Array, up_ExDxF: jax.Array, down_ExFxD: jax.Array
              ) -> jax.Array:
        n, t, d = x_NxQxD.shape
        a = ids_NxQxA.shape[-1]
        x_NQxD, ids_NQxA, w_NQxA = (x_NxQxD.reshape(-1, d), ids_NxQxA.reshape(-1, a),
                                    weights_NxQxA.reshape(-1, a))
        if gathered:  # The tokens of every device holding other experts.
            x_NQxD, ids_NQxA, w_NQxA = (jax.lax.all_gather(v, gathered, axis=0, tiled=True)
                                        for v in (x_NQxD, ids_NQxA, w_NQxA))
        e = gate_ExDxF.shape[0]
        first = jax.lax.axis_index(plan.experts) * e if plan.experts else 0
        local_NQxA = ids_NQxA - first
        local_NQxA = jnp.where((local_NQxA >= 0) & (local_NQxA < e), local_NQxA, e)
        y_NQxD = expert_mlp(x_NQxD, local_NQxA, w_NQxA, gate_ExDxF, up_ExDxF, down_ExFxD,
                            implementation=implementation).astype(dt)
        if partial:
            y_NQxD = jax.lax.psum(y_NQxD, partial)
        if gathered:  # Each token's sum over all experts, back on its device.
            y_NQxD = jax.lax.psum_scatter(y_NQxD, gathered, scatter_dimension=0,
                                          tiled=True)
        return y_NQxD.reshape(n, t, d)

    rows = PartitionSpec(plan.rows or None, None, None)
    up = PartitionSpec(plan.experts or None, None, plan.width or None)
    down = PartitionSpec(plan.experts or None, plan.width or None, None)
    # Unchecked varying axes: the megablox kernel's outputs declare none
    # (tests/models/moe_test.py checks the gradients on the 8-device mesh).
    return jax.shard_map(local, mesh=plan.mesh, in_specs=(rows, rows, rows, up, up, down),
                         out_specs=rows, check_vma=False)(
                             x_NxQxD, ids_NxQxA, weights_NxQxA, gate_ExDxF, up_ExDxF, down_ExFxD)


def moe_mlp(x_NxQxD: jax.Array, router_DxE: jax.Array, gate_ExDxF: jax.Array,
            up_ExDxF: jax.Array, down_ExFxD: jax.Array, config: ModelConfig, *,
            token_mask_NxQ: jax.Array | None = None,
            replay: tuple[jax.Array, jax.Array] | None = None,
            implementation: str = "auto") -> tuple[jax.Array, LayerRouting]:
    """The sparse MLP of one layer: its output `N x Q x D` and its routing.

    The expert weights come in the compute dtype (x's); `token_mask_NxQ`
    weights the load-balancing statistics (None: every token counts);
    `replay` as in the module docstring.
    """
    weights_NxQxA, ids_NxQxA, stats = route(x_NxQxD, router_DxE, config,
                                            token_mask_NxQ=token_mask_NxQ, replay=replay)
    n, t, d = x_NxQxD.shape
    plan = _parallel_plan(n, gate_ExDxF.shape[0], gate_ExDxF.shape[2])
    if plan is not None:
        y_NxQxD = _dispatch_parallel(plan, x_NxQxD, ids_NxQxA, weights_NxQxA, gate_ExDxF,
                                     up_ExDxF, down_ExFxD, implementation)
        return y_NxQxD, stats
    a = ids_NxQxA.shape[-1]
    y_NQxD = expert_mlp(x_NxQxD.reshape(-1, d), ids_NxQxA.reshape(-1, a),
                       weights_NxQxA.reshape(-1, a), gate_ExDxF, up_ExDxF, down_ExFxD,
                       implementation=implementation)
    return y_NQxD.astype(x_NxQxD.dtype).reshape(n, t, d), stats
