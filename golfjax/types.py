"""The one batch that flows through a train step, for every algorithm.

Shape letters, the project's one definition. Array names end in their shape
(`logp_NxT`, `reward_BxG`), the axes joined by `x`; `SHAPE_LETTERS` below
gives each letter's one meaning, the same in every module. Letters written
together are one flattened axis, their product (`QR` = Q * R, one kv head's
queries in attention); a literal size is written as itself (`q_Nx1xKxRxDh`).
A count of optimizer steps between a rollout's policy and the policy trained
on it is written out as `staleness`, never a letter.

Every row is a (prompt, response) pair. Prompts are left-padded into P slots so
the last prompt token of every row sits at slot P - 1; responses are
right-padded into T slots. A GOLF batch holds the original groups and the
refinement groups side by side: each row carries its own prompt (an injected
refinement keeps its ORIGINAL prompt; a refinement row has the refinement
prompt) and its own group id.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Every shape symbol: a capital letter, or for a symbol of one module a capital
# and a qualifier (Dh, Dh2). tests/types_test.py checks that array names use no
# other.
SHAPE_LETTERS = {
    "B": "prompts (problems) of a rollout or mini-batch; the sampler's batch bucket",
    "G": "samples per prompt (a group)",
    "N": "rows (sequences); N = B * G in a rollout",
    "P": "prompt tokens (left-padded)",
    "T": "response tokens (right-padded)",
    "S": ("slots of a whole sequence, the keys a query can attend to: S = P + T in a"
          " training forward, a KV cache's slots in the sampler (at most P + T)"),
    "Q": ("query tokens of one model call: S in a training forward, P in a prefill,"
          " 1 in a decode step"),
    "V": "vocabulary",
    "D": "model width",
    "F": "MLP width",
    "H": "query heads",
    "K": "key/value heads",
    "R": "query heads per key/value head, H / K",
    "Dh": "head dim (the width of one head)",
    "Dh2": "half the head dim (RoPE's frequencies)",
    "L": "layers",
    "M": "micro-batches of a train step",
    "E": "experts of an MoE layer",
    "A": "experts active per token (an MoE router's top-k)",
    "C": "candidate tokens kept by top-k (golfjax/draw.py)",
    "Cb": "blocks of the candidates' CDF (golfjax/draw.py)",
    "Cw": "candidates per CDF block (golfjax/draw.py)",
    "W": "slots of the sampler's float32 recent buffer (golfjax/models/cache.py)",
    "I": "a dense layer's input features",
    "O": "a dense layer's output features",
    "Bq": "query tokens per block of blockwise attention",
    "Bk": "key slots per block of blockwise attention",
    "Nq": "query blocks of blockwise attention",
    "Nk": "key blocks of blockwise attention",
    "Nc": "chunks of the log-prob computation (golfjax/train/logprobs.py)",
    "Tc": "response tokens per chunk of the log-prob computation",
    "X": "any leading axes",
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    """Arrays of one training batch (see the module docstring for the letters).

    Attributes:
      prompt_tokens_NxP: int32 prompt ids, left-padded.
      prompt_mask_NxP: bool, True at real prompt tokens.
      tokens_NxT: int32 response ids, right-padded.
      response_mask_NxT: bool, True at response tokens that are trained on.
      behaviour_logp_NxT: float32 log-probs the sampler reported for each
        response token (for an injected row: under the refinement prompt).
      old_logp_NxT: float32 log-probs of the behaviour policy recomputed by the
        trainer (`compute_logprobs`); equal to `behaviour_logp_NxT` when not
        recomputed.
      ref_logp_NxT: float32 log-probs under the reference policy (KL term);
        zeros when there is no KL term.
      advantage_N: float32 advantage of each row.
      reward_N: float32 reward of each row (for metrics).
      group_id_N: int32 group of each row.
      off_policy_mask_NxT: bool, True at injected (off-policy) tokens.
      prompt_routes_NxPxLxA, routes_NxTxLxA: an MoE policy's rollout only
        (else None): the experts the sampler routed each prompt token and
        each fed-back response token to in each of the L MoE layers
        (`decode.Rollout`), for routing replay and the route-mismatch metric.
    """

    prompt_tokens_NxP: jax.Array
    prompt_mask_NxP: jax.Array
    tokens_NxT: jax.Array
    response_mask_NxT: jax.Array
    behaviour_logp_NxT: jax.Array
    old_logp_NxT: jax.Array
    ref_logp_NxT: jax.Array
    advantage_N: jax.Array
    reward_N: jax.Array
    group_id_N: jax.Array
    off_policy_mask_NxT: jax.Array
    prompt_routes_NxPxLxA: jax.Array | None = None
    routes_NxTxLxA: jax.Array | None = None

    @property
    def num_rows(self) -> int:
        return self.tokens_NxT.shape[0]

    def replace(self, **changes: Any) -> Batch:
        return dataclasses.replace(self, **changes)

    def rows(self, index: Any) -> Batch:
        """The batch restricted to `index` (a slice or an index array) of rows."""
        return jax.tree.map(lambda x: x[index], self)


# Expected (rank, dtype kind) per field: rows first, then P or T.
_FIELDS = {
    "prompt_tokens_NxP": ("NxP", "i"),
    "prompt_mask_NxP": ("NxP", "b"),
    "tokens_NxT": ("NxT", "i"),
    "response_mask_NxT": ("NxT", "b"),
    "behaviour_logp_NxT": ("NxT", "f"),
    "old_logp_NxT": ("NxT", "f"),
    "ref_logp_NxT": ("NxT", "f"),
    "advantage_N": ("N", "f"),
    "reward_N": ("N", "f"),
    "group_id_N": ("N", "i"),
    "off_policy_mask_NxT": ("NxT", "b"),
}
_ROUTES = {"prompt_routes_NxPxLxA": "NxP", "routes_NxTxLxA": "NxT"}


def check_batch(batch: Batch) -> None:
    """Raises ValueError naming the first field whose shape or dtype is wrong."""
    n, t = np.shape(batch.tokens_NxT) if np.ndim(batch.tokens_NxT) == 2 else (None, None)
    if n is None:
        raise ValueError(
            f"Batch.tokens_NxT has shape {np.shape(batch.tokens_NxT)}; expected [N, T]"
        )
    p = np.shape(batch.prompt_tokens_NxP)[-1] if np.ndim(batch.prompt_tokens_NxP) == 2 else -1
    sizes = {"N": (n,), "NxT": (n, t), "NxP": (n, p)}
    for name, (letters, kind) in _FIELDS.items():
        value = getattr(batch, name)
        if np.shape(value) != sizes[letters]:
            raise ValueError(
                f"Batch.{name} has shape {np.shape(value)}; expected {sizes[letters]}"
                f" (N={n}, P={p}, T={t})"
            )
        if jnp.result_type(value).kind != kind:
            kinds = {"i": "an integer", "b": "a bool", "f": "a floating"}
            raise ValueError(
                f"Batch.{name} has dtype {jnp.result_type(value)}; expected {kinds[kind]} dtype"
            )
    routes = {name: getattr(batch, name) for name in _ROUTES}
    if sum(value is None for value in routes.values()) == 1:
        raise ValueError("Batch.prompt_routes_NxPxLxA and Batch.routes_NxTxLxA must be set "
                         "together (an MoE rollout's) or both be None")
    if routes["routes_NxTxLxA"] is None:
        return
    la = np.shape(routes["routes_NxTxLxA"])[2:]
    for name, letters in _ROUTES.items():
        value = routes[name]
        expected = sizes[letters] + (la if len(la) == 2 else ("L", "A"))
        if np.shape(value) != expected or jnp.result_type(value).kind not in "iu":
            raise ValueError(
                f"Batch.{name} has shape {np.shape(value)} and dtype {jnp.result_type(value)};"
                f" expected integer expert ids of shape {expected} (N={n}, P={p}, T={t},"
                " MoE layers L, experts per token A)")


def make_batch(
    prompt_tokens_NxP: Any,
    prompt_mask_NxP: Any,
    tokens_NxT: Any,
    response_mask_NxT: Any,
    behaviour_logp_NxT: Any,
    advantage_N: Any,
    *,
    reward_N: Any = None,
    group_id_N: Any = None,
    off_policy_mask_NxT: Any = None,
    prompt_routes_NxPxLxA: Any = None,
    routes_NxTxLxA: Any = None,
) -> Batch:
    """A `Batch` from host arrays; optional fields get their neutral values.

    `old_logp` starts as the behaviour log-probs and `ref_logp` as zeros; the
    trainer's `compute_logprobs` replaces them when configured.
    """
    behaviour = np.asarray(behaviour_logp_NxT, np.float32)
    n = behaviour.shape[0]
    batch = Batch(
        prompt_tokens_NxP=np.asarray(prompt_tokens_NxP, np.int32),
        prompt_mask_NxP=np.asarray(prompt_mask_NxP, bool),
        tokens_NxT=np.asarray(tokens_NxT, np.int32),
        response_mask_NxT=np.asarray(response_mask_NxT, bool),
        behaviour_logp_NxT=behaviour,
        old_logp_NxT=behaviour,
        ref_logp_NxT=np.zeros_like(behaviour),
        advantage_N=np.asarray(advantage_N, np.float32),
        reward_N=np.zeros(n, np.float32) if reward_N is None else np.asarray(reward_N, np.float32),
        group_id_N=np.arange(n, dtype=np.int32) if group_id_N is None else np.asarray(group_id_N, np.int32),
        off_policy_mask_NxT=(
            np.zeros_like(behaviour, bool) if off_policy_mask_NxT is None
            else np.asarray(off_policy_mask_NxT, bool)
        ),
        prompt_routes_NxPxLxA=(None if prompt_routes_NxPxLxA is None
                               else np.asarray(prompt_routes_NxPxLxA)),
        routes_NxTxLxA=None if routes_NxTxLxA is None else np.asarray(routes_NxTxLxA),
    )
    check_batch(batch)
    return batch


def abstract_batch(rows: int, prompt: int, response: int, sharding: Any = None, *,
                   routes: tuple[int, int, Any] | None = None) -> Batch:
    """A `Batch` of `jax.ShapeDtypeStruct`s (N rows, P prompt and T response
    slots, every field placed by `sharding`), to lower a program without data;
    `routes` = (L, A, dtype) adds an MoE rollout's routes (`moe.route_spec`)."""
    sizes = {"N": (rows,), "NxT": (rows, response), "NxP": (rows, prompt)}
    dtypes = {"i": jnp.int32, "b": jnp.bool_, "f": jnp.float32}
    fields = {name: jax.ShapeDtypeStruct(sizes[letters], dtypes[kind], sharding=sharding)
              for name, (letters, kind) in _FIELDS.items()}
    if routes is not None:
        fields |= {name: jax.ShapeDtypeStruct(sizes[letters] + routes[:2], routes[2],
                                              sharding=sharding)
                   for name, letters in _ROUTES.items()}
    return Batch(**fields)


def concat_parts(parts: tuple[Batch, ...], pad_id: int) -> Batch:
    """Host batches of different prompt lengths as one batch: prompts are
    left-padded to the longest P (as the module docstring lays them out) and
    every field is concatenated along the rows, in order."""
    length = max(np.shape(part.prompt_tokens_NxP)[1] for part in parts)

    def left_pad(x: Any, value: Any) -> np.ndarray:
        x = np.asarray(x)
        return np.pad(x, ((0, 0), (length - x.shape[1], 0)), constant_values=value)

    pads = {"prompt_tokens_NxP": pad_id, "prompt_mask_NxP": False}
    if any(part.routes_NxTxLxA is not None for part in parts):
        raise ValueError("concat_parts: parts with recorded routes are not concatenated")
    batch = Batch(**{
        f.name: np.concatenate([
            left_pad(getattr(part, f.name), pads[f.name]) if f.name in pads
            else np.asarray(getattr(part, f.name)) for part in parts])
        for f in dataclasses.fields(Batch) if f.name not in _ROUTES
    })
    check_batch(batch)
    return batch
