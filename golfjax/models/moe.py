"""Mixture-of-Experts MLP (Qwen 3 MoE): a float32 top-k router, dropless experts.

Letters (golfjax/types.py): N rows, T tokens, D embed_dim, E experts, A
experts per token, F an expert's width (`moe_mlp_dim`), L MoE layers; here
also R = N * T routed tokens and M = R * A token-expert assignments.

Routing, as transformers' `Qwen3MoeTopKRouter`: float32 logits `x @ router`,
`probs = softmax(logits)`, the A most probable experts, weighted by their
probabilities, renormalised to sum to 1 when `norm_topk_prob`.

Dispatch is dropless: the M assignments are sorted by expert, each expert's
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

Routing replay: `replay = (ids_NxTxA, use_NxT)` routes the tokens where
`use_NxT` is set to the recorded experts instead of the router's choice;
their weights are still the current router's probabilities of those
experts (renormalised likewise), so the router keeps its gradient. The
router's own choice is returned either way (`LayerRouting.ids_NxTxA`), for
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
from golfjax.models.config import ModelConfig

IMPLEMENTATIONS = ("auto", "ragged_dot", "megablox")
_MEGABLOX_ROWS = 128  # The megablox kernel's row tile; rows are padded to it.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerRouting:
    """One MoE layer's routing in a forward pass.

    Attributes:
      ids_NxTxA: int32, the A experts the router chose for each token (its own
        top-k, also where a replay overrode it).
      counts_E: float32, the tokens (weighted by the token mask) whose top-k
        holds each expert.
      probs_E: float32, the router probabilities of each expert summed over
        the (masked) tokens; differentiable.
    """

    ids_NxTxA: jax.Array
    counts_E: jax.Array
    probs_E: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Routing:
    """A forward pass's `LayerRouting`s, over its L MoE layers in order.

    Attributes:
      ids_NxTxLxA: int32, each token's chosen experts in every MoE layer.
      counts_LxE, probs_LxE: `LayerRouting.counts_E`, `probs_E` per layer.
    """

    ids_NxTxLxA: jax.Array
    counts_LxE: jax.Array
    probs_LxE: jax.Array


def route_dtype(num_experts: int) -> np.dtype:
    """The narrowest dtype recorded expert ids are stored in (uint8 up to 256)."""
    return np.dtype(np.uint8) if num_experts <= 256 else np.dtype(np.int32)


def route(x_NxTxD: jax.Array, router_DxE: jax.Array, config: ModelConfig, *,
          token_mask_NxT: jax.Array | None = None,
          replay: tuple[jax.Array, jax.Array] | None = None
          ) -> tuple[jax.Array, jax.Array, LayerRouting]:
    """The routing of every token: (weights_NxTxA float32, ids_NxTxA, LayerRouting).

    `ids` are the experts the tokens go to (the recorded ones where `replay`
    says so), `weights` the current router's probabilities of them.
    """
    logits_NxTxE = jnp.einsum("ntd,de->nte", x_NxTxD.astype(jnp.float32),
                              router_DxE.astype(jnp.float32))
    probs_NxTxE = jax.nn.softmax(logits_NxTxE, axis=-1)
    _, chosen_NxTxA = jax.lax.top_k(probs_NxTxE, config.experts_per_token)
    ids_NxTxA = chosen_NxTxA
    if replay is not None:
        replay_NxTxA, use_NxT = replay
        ids_NxTxA = jnp.where(use_NxT[..., None], replay_NxTxA.astype(jnp.int32),
                              chosen_NxTxA)
    weights_NxTxA = jnp.take_along_axis(probs_NxTxE, ids_NxTxA, axis=-1)
    if config.norm_topk_prob:
        weights_NxTxA = weights_NxTxA / jnp.sum(weights_NxTxA, axis=-1, keepdims=True)
    mask_NxT = (jnp.ones(x_NxTxD.shape[:2], jnp.float32) if token_mask_NxT is None
                else token_mask_NxT.astype(jnp.float32))
    hits_NxTxE = jnp.sum(jax.nn.one_hot(chosen_NxTxA, probs_NxTxE.shape[-1],
                                        dtype=jnp.float32), axis=2)
    stats = LayerRouting(
        ids_NxTxA=chosen_NxTxA,
        counts_E=jnp.einsum("nte,nt->e", hits_NxTxE, mask_NxT),
        probs_E=jnp.einsum("nte,nt->e", probs_NxTxE, mask_NxT))
    return weights_NxTxA, ids_NxTxA, stats


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


def _pick(implementation: str) -> str:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"grouped matmul implementation {implementation!r}; expected "
                         f"one of {IMPLEMENTATIONS}")
    if implementation == "auto":
        return "megablox" if jax.default_backend() == "tpu" else "ragged_dot"
    return implementation


def grouped_matmul(lhs_MxI: jax.Array, rhs_ExIxO: jax.Array, sizes_E: jax.Array, *,
                   implementation: str = "auto", interpret: bool = False) -> jax.Array:
    """Row group g of `lhs` (contiguous, `sizes_E[g]` rows) times `rhs[g]`.

    Rows past `sum(sizes_E)` belong to no group: their output is zero and
    they get no gradient (whatever a kernel leaves in rows it never visits).
    Accumulates in float32; returns `lhs`'s dtype. "megablox" is the Pallas
    TPU kernel (`interpret` runs it anywhere, for tests); it computes row
    tiles of 128, so the rows are padded to that.
    """
    dt = lhs_MxI.dtype
    m = lhs_MxI.shape[0]
    grouped_Mx1 = (jnp.arange(m) < jnp.sum(sizes_E))[:, None]
    lhs_MxI = jnp.where(grouped_Mx1, lhs_MxI, 0)
    if _pick(implementation) == "ragged_dot":
        out = jax.lax.ragged_dot(lhs_MxI, rhs_ExIxO, sizes_E,
                                 preferred_element_type=jnp.float32)
    else:
        from jax.experimental.pallas.ops.tpu.megablox import ops as megablox

        lhs = jnp.pad(lhs_MxI, ((0, -m % _MEGABLOX_ROWS), (0, 0)))
        tiles = (_MEGABLOX_ROWS, min(128, lhs.shape[1]), min(128, rhs_ExIxO.shape[2]))
        out = megablox.gmm(lhs, rhs_ExIxO, sizes_E.astype(jnp.int32), jnp.float32, tiles,
                           None, None, False, interpret)[:m]
    return jnp.where(grouped_Mx1, out, 0).astype(dt)


def expert_mlp(x_RxD: jax.Array, ids_RxA: jax.Array, weights_RxA: jax.Array,
               gate_ExDxF: jax.Array, up_ExDxF: jax.Array, down_ExFxD: jax.Array, *,
               implementation: str = "auto") -> jax.Array:
    """`sum_a weights[r, a] * expert_{ids[r, a]}(x[r])`, float32, dropless.

    An id of E (the number of experts given) means "not here": that
    assignment adds nothing (expert parallelism passes the ids of experts
    held elsewhere so). The M assignments are sorted by expert (a stable
    sort), gathered into contiguous groups for `grouped_matmul`, and the
    outputs gathered back into token order before the weighted sum.
    """
    r, a = ids_RxA.shape
    e = gate_ExDxF.shape[0]
    ids_M = ids_RxA.reshape(-1).astype(jnp.int32)
    order_M = jnp.argsort(ids_M, stable=True)
    # Assignments elsewhere (id E) sort last, past every group: output zero.
    sizes_E = jnp.zeros((e + 1,), jnp.int32).at[ids_M].add(1)[:e]
    x_MxD = jnp.take(x_RxD, order_M // a, axis=0)
    matmul = functools.partial(grouped_matmul, sizes_E=sizes_E,
                               implementation=implementation)
    h_MxF = jax.nn.silu(matmul(x_MxD, gate_ExDxF)) * matmul(x_MxD, up_ExDxF)
    y_MxD = matmul(h_MxF, down_ExFxD)
    # Back to token order: sorted position j holds assignment order_M[j].
    unsort_M = jnp.zeros_like(order_M).at[order_M].set(
        jnp.arange(order_M.shape[0], dtype=order_M.dtype))
    y_RxAxD = jnp.take(y_MxD, unsort_M, axis=0).reshape(r, a, -1)
    return jnp.einsum("rad,ra->rd", y_RxAxD.astype(jnp.float32),
                      weights_RxA.astype(jnp.float32))


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


def _dispatch_parallel(plan: _Plan, x_NxTxD: jax.Array, ids_NxTxA: jax.Array,
                       weights_NxTxA: jax.Array, gate_ExDxF: jax.Array,
                       up_ExDxF: jax.Array, down_ExFxD: jax.Array,
                       implementation: str) -> jax.Array:
    """`expert_mlp` with the experts split over `plan.experts` (module docstring)."""
    gathered = tuple(a for a in plan.experts if a in plan.rows)
    partial = tuple(a for a in plan.experts if a not in plan.rows) + plan.width
    dt = x_NxTxD.dtype

    def local(x_NxTxD: jax.Array, ids_NxTxA: jax.Array, weights_NxTxA: jax.Array,
              gate_ExDxF: jax.Array, up_ExDxF: jax.Array, down_ExFxD: jax.Array
              ) -> jax.Array:
        n, t, d = x_NxTxD.shape
        a = ids_NxTxA.shape[-1]
        x_RxD, ids_RxA, w_RxA = (x_NxTxD.reshape(-1, d), ids_NxTxA.reshape(-1, a),
                                 weights_NxTxA.reshape(-1, a))
        if gathered:  # The tokens of every device holding other experts.
            x_RxD, ids_RxA, w_RxA = (jax.lax.all_gather(v, gathered, axis=0, tiled=True)
                                     for v in (x_RxD, ids_RxA, w_RxA))
        e = gate_ExDxF.shape[0]
        first = jax.lax.axis_index(plan.experts) * e if plan.experts else 0
        local_RxA = ids_RxA - first
        local_RxA = jnp.where((local_RxA >= 0) & (local_RxA < e), local_RxA, e)
        y_RxD = expert_mlp(x_RxD, local_RxA, w_RxA, gate_ExDxF, up_ExDxF, down_ExFxD,
                           implementation=implementation).astype(dt)
        if partial:
            y_RxD = jax.lax.psum(y_RxD, partial)
        if gathered:  # Each token's sum over all experts, back on its device.
            y_RxD = jax.lax.psum_scatter(y_RxD, gathered, scatter_dimension=0,
                                         tiled=True)
        return y_RxD.reshape(n, t, d)

    rows = PartitionSpec(plan.rows or None, None, None)
    up = PartitionSpec(plan.experts or None, None, plan.width or None)
    down = PartitionSpec(plan.experts or None, plan.width or None, None)
    return jax.shard_map(local, mesh=plan.mesh, in_specs=(rows, rows, rows, up, up, down),
                         out_specs=rows)(x_NxTxD, ids_NxTxA, weights_NxTxA, gate_ExDxF,
                                         up_ExDxF, down_ExFxD)


def moe_mlp(x_NxTxD: jax.Array, router_DxE: jax.Array, gate_ExDxF: jax.Array,
            up_ExDxF: jax.Array, down_ExFxD: jax.Array, config: ModelConfig, *,
            token_mask_NxT: jax.Array | None = None,
            replay: tuple[jax.Array, jax.Array] | None = None,
            implementation: str = "auto") -> tuple[jax.Array, LayerRouting]:
    """The sparse MLP of one layer: its output `N x T x D` and its routing.

    The expert weights come in the compute dtype (x's); `token_mask_NxT`
    weights the load-balancing statistics (None: every token counts);
    `replay` as in the module docstring.
    """
    weights_NxTxA, ids_NxTxA, stats = route(x_NxTxD, router_DxE, config,
                                            token_mask_NxT=token_mask_NxT, replay=replay)
    n, t, d = x_NxTxD.shape
    plan = _parallel_plan(n, gate_ExDxF.shape[0], gate_ExDxF.shape[2])
    if plan is not None:
        y_NxTxD = _dispatch_parallel(plan, x_NxTxD, ids_NxTxA, weights_NxTxA, gate_ExDxF,
                                     up_ExDxF, down_ExFxD, implementation)
        return y_NxTxD, stats
    a = ids_NxTxA.shape[-1]
    y_RxD = expert_mlp(x_NxTxD.reshape(-1, d), ids_NxTxA.reshape(-1, a),
                       weights_NxTxA.reshape(-1, a), gate_ExDxF, up_ExDxF, down_ExFxD,
                       implementation=implementation)
    return y_RxD.astype(x_NxTxD.dtype).reshape(n, t, d), stats
