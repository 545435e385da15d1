"""An MoE policy's routing in the train step: replay, mismatch metric, balancing loss.

Letters (golfjax/types.py): N rows, P prompt tokens, T response tokens, L MoE
layers, A experts per token.

The sampler records the experts every prompt token and every fed-back
response token was routed to (`Rollout.prompt_routes_NxPxLxA`,
`routes_NxTxLxA`; a row's last response token is sampled but never fed, so
it has none: `decode.recorded_routes`), and a rollout's batch carries them.

Replay (`ModelConfig.routing_replay = "rollout"`, R3 in the VESPO scripts'
naming): the train step's forward pass over [prompt; response] routes every
recorded token to its recorded experts, with the current router's weights
for them (golfjax/models/moe.py), so the recomputed log-probs see the
experts the rollout saw. Tokens without a record (padding, a row's last
token) keep the router's own choice; batches without routes (the cold
start's) are not replayed.

The metric, replayed or not: for every recorded response token and MoE
layer, whether the train step's router would choose another top-k set than
the rollout recorded. `moe/route_mismatch` is the fraction of such
(token, layer) pairs, `moe/route_mismatch_tokens` the fraction of tokens
with a different set in at least one layer. docs/algorithms.md says where
both come from.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from golfjax.decode import recorded_routes
from golfjax.models import moe as moe_lib
from golfjax.models.config import ModelConfig
from golfjax.types import Batch


def token_mask(batch: Batch) -> jax.Array:
    """The real tokens of [prompt; response], `N x (P + T)`: those the
    load-balancing statistics count."""
    return jnp.concatenate([batch.prompt_mask_NxP, batch.response_mask_NxT], axis=1)


def replay(batch: Batch, config: ModelConfig) -> tuple[jax.Array, jax.Array] | None:
    """The replay `(ids, use)` over [prompt; response], or None (module docstring)."""
    if config.routing_replay != "rollout" or batch.routes_NxTxLxA is None:
        return None
    ids_NxSxLxA = jnp.concatenate([batch.prompt_routes_NxPxLxA, batch.routes_NxTxLxA],
                                  axis=1)
    use_NxS = jnp.concatenate([batch.prompt_mask_NxP,
                               recorded_routes(batch.response_mask_NxT)], axis=1)
    return ids_NxSxLxA, use_NxS


def route_counts(batch: Batch) -> dict[str, jax.Array]:
    """The whole batch's recorded response tokens and (token, layer) pairs:
    the denominators of the mismatch metrics (masks only)."""
    if batch.routes_NxTxLxA is None:
        return {}
    tokens = jnp.sum(recorded_routes(batch.response_mask_NxT), dtype=jnp.float32)
    return {"routed_tokens": tokens, "routed_pairs": tokens * batch.routes_NxTxLxA.shape[2]}


def mismatch_sums(routing: moe_lib.Routing, batch: Batch) -> dict[str, jax.Array]:
    """This (micro-)batch's counts of mismatched (token, layer) pairs and tokens.

    `routing` is the forward pass over [prompt; response]; its response part
    is compared, as sets, with the recorded routes.
    """
    p = batch.prompt_tokens_NxP.shape[1]
    ours_NxTxLxA = jnp.sort(routing.ids_NxQxLxA[:, p:], axis=-1)
    theirs_NxTxLxA = jnp.sort(batch.routes_NxTxLxA.astype(jnp.int32), axis=-1)
    differ_NxTxL = jnp.any(ours_NxTxLxA != theirs_NxTxLxA, axis=-1)
    differ_NxTxL = differ_NxTxL & recorded_routes(batch.response_mask_NxT)[..., None]
    return {"routed_pairs": jnp.sum(differ_NxTxL, dtype=jnp.float32),
            "routed_tokens": jnp.sum(jnp.any(differ_NxTxL, axis=-1), dtype=jnp.float32)}


METRICS = {"routed_pairs": "moe/route_mismatch", "routed_tokens": "moe/route_mismatch_tokens"}
