"""The sampler's device programs: prefill, and decode loops over a KV cache.

Letters: B prompts (the batch bucket), G samples per prompt, N = B * G rows,
P prompt bucket length, T `max_new_tokens`, S KV-cache slots (at most P + T),
V vocabulary; for MoE models L MoE layers and A experts per token.
golfjax/sampling.py describes a whole `generate` call; this module holds what
runs on the device, compiled once per (B, P).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from golfjax import draw
from golfjax.models import cache as cache_lib
from golfjax.models import moe as moe_lib
from golfjax.models import transformer
from golfjax.models.config import ModelConfig
from golfjax.sampling_config import SamplingConfig

Params = Any

# Values of `Rollout.finish_reason_N`.
FINISH_STOP = 0  # The row sampled one of `stop_ids` (kept as its last token).
FINISH_LENGTH = 1  # The row reached `max_new_tokens` without a stop token.
MIN_LOOP_STEPS = 32  # Fewest decode steps per loop (`decode_segments`).


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Rollout:
    """G samples for each of the prompts; row n answers prompt `group_id_N[n]`.

    Attributes:
      prompt_tokens_NxP: the row's prompt, left-padded with `pad_id`.
      prompt_mask_NxP: True on real prompt tokens.
      tokens_NxT: response tokens; `pad_id` after a row's stop token.
      response_mask_NxT: True on generated tokens, the stop token included.
      behaviour_logp_NxT: log-prob of each token under the distribution it was
        sampled from (module docstring); 0 where the mask is False.
      length_N: int32 number of response tokens, `response_mask_NxT.sum(1)`.
      finish_reason_N: int32, `FINISH_STOP` or `FINISH_LENGTH`.
      group_id_N: int32 index of the row's prompt in the caller's list.
      prompt_routes_NxPxLxA: MoE models only (else None): the experts each
        prompt token was routed to in each MoE layer (`moe.route_dtype`);
        garbage at padding.
      routes_NxTxLxA: MoE models only: the same for each response token
        that was fed back to the model, i.e. all of a row's but its last
        (`recorded_routes`); garbage elsewhere.
    """

    prompt_tokens_NxP: jax.Array
    prompt_mask_NxP: jax.Array
    tokens_NxT: jax.Array
    response_mask_NxT: jax.Array
    behaviour_logp_NxT: jax.Array
    length_N: jax.Array
    finish_reason_N: jax.Array
    group_id_N: jax.Array
    prompt_routes_NxPxLxA: jax.Array | None = None
    routes_NxTxLxA: jax.Array | None = None


def recorded_routes(response_mask_NxT: jax.Array) -> jax.Array:
    """Where `Rollout.routes_NxTxLxA` holds a recorded route: every response
    token but a row's last, which is sampled and never fed to the model."""
    mask_NxT = jnp.asarray(response_mask_NxT, bool)
    return jnp.concatenate([mask_NxT[:, 1:], jnp.zeros_like(mask_NxT[:, :1])], axis=1)


def prefill(
    params: Params,
    tokens_BxP: jax.Array,
    mask_BxP: jax.Array,
    *,
    model_config: ModelConfig,
) -> tuple[cache_lib.KVCache, jax.Array, jax.Array | None]:
    """Writes the prompts into a fresh P-slot cache; logits of each last token,
    and for an MoE model the prompt tokens' experts `B x P x L x A` (else None).

    The decode loops widen the cache as they go (`decode_segments`). The
    cache is stacked over layers iff `model_config.decode_layers` is "scan"
    ("auto" resolved on the default backend; the Sampler passes it resolved).
    """
    b, p = tokens_BxP.shape
    positions_BxP = jnp.maximum(jnp.cumsum(mask_BxP, axis=1, dtype=jnp.int32) - 1, 0)
    cache = cache_lib.init_cache(model_config, b, p)
    h_BxPxD, cache, routing = transformer.hidden_routed(
        params, tokens_BxP, positions_BxP, mask_BxP, cache, config=model_config)
    routes_BxPxLxA = None if routing is None else routing.ids_NxQxLxA.astype(
        moe_lib.route_dtype(model_config.num_experts))
    # Left padding puts every row's last prompt token in the last slot.
    logits_BxV = transformer.unembed(params, h_BxPxD[:, -1, :], config=model_config)
    return cache, logits_BxV, routes_BxPxLxA


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    step: jax.Array  # int32: tokens sampled so far (the next column to write).
    last_N: jax.Array  # The token sampled at step - 1, fed to the next forward.
    cache: cache_lib.KVCache
    done_N: jax.Array  # Stopped, or a dummy row: later tokens are padding.
    stopped_N: jax.Array
    tokens_NxT: jax.Array
    mask_NxT: jax.Array
    logp_NxT: jax.Array
    # MoE models: the experts of each fed token (`Rollout.routes_NxTxLxA`).
    routes_NxTxLxA: jax.Array | None = None


def _record(state: DecodeState, token_N: jax.Array, logp_N: jax.Array,
            cache: cache_lib.KVCache, cfg: SamplingConfig) -> DecodeState:
    """Writes column `state.step`; rows already done get padding."""
    live_N = ~state.done_N
    token_N = jnp.where(live_N, token_N, cfg.pad_id)
    logp_N = jnp.where(live_N, logp_N, 0.0)
    if cfg.stop_ids:
        stop_ids = jnp.asarray(cfg.stop_ids, jnp.int32)
        hit_N = jnp.any(token_N[:, None] == stop_ids[None, :], axis=1) & live_N
    else:
        hit_N = jnp.zeros_like(live_N)

    def put(buf_NxT: jax.Array, col_N: jax.Array) -> jax.Array:
        return jax.lax.dynamic_update_slice_in_dim(
            buf_NxT, col_N[:, None].astype(buf_NxT.dtype), state.step, axis=1)

    return DecodeState(
        step=state.step + 1,
        last_N=token_N,
        cache=cache,
        done_N=state.done_N | hit_N,
        stopped_N=state.stopped_N | hit_N,
        tokens_NxT=put(state.tokens_NxT, token_N),
        mask_NxT=put(state.mask_NxT, live_N),
        logp_NxT=put(state.logp_NxT, logp_N),
        routes_NxTxLxA=state.routes_NxTxLxA,
    )


def decode(
    params: Params,
    cache: cache_lib.KVCache,
    logits_BxV: jax.Array,
    tokens_BxP: jax.Array,
    mask_BxP: jax.Array,
    valid_B: jax.Array,
    key: jax.Array,
    prompt_routes_BxPxLxA: jax.Array | None = None,
    *,
    model_config: ModelConfig,
    cfg: SamplingConfig,
    split_layers: bool,
    recent_buffer: bool = False,
) -> Rollout:
    """Shares each prefill across its G rows, then samples until all rows finish.

    For an MoE model, `prompt_routes_BxPxLxA` are the prefill's routes, and
    each decode step records the experts of the token it feeds.

    `cache` is the prefill's, per-layer or stacked; a stacked one runs the
    layers scanned (golfjax/models/transformer.py). With `split_layers` (on
    CPU, per-layer cache only), the layer weights are copied into per-layer
    arrays once, before the loop, instead of XLA copying each layer's slice
    of the stacked weights on every step (`transformer.split_layers`). With
    `recent_buffer` (likewise), each loop writes its tokens' keys and values
    into a float32 recent buffer merged after the loop (golfjax/models/cache.py
    says why).
    """
    g, t = cfg.group_size, cfg.max_new_tokens
    if cache.stacked and (split_layers or recent_buffer):
        raise ValueError("split_layers and recent_buffer are for the per-layer "
                         "(unrolled) cache, not a stacked one")
    if split_layers:
        params = transformer.split_layers(params)
    b, p = tokens_BxP.shape
    n = b * g

    def tile(x: jax.Array, axis: int = 0) -> jax.Array:
        return jnp.repeat(x, g, axis=axis, total_repeat_length=n)

    cache = cache_lib.repeat_rows(cache, g)
    mask_NxP = tile(mask_BxP)
    attention_mask_NxS = jnp.concatenate(
        [mask_NxP, jnp.ones((n, t), bool)], axis=1)
    # RoPE position of response token i is prompt_len + i (left padding does not
    # count); the token fed at loop step s is response token s - 1.
    first_position_N = jnp.sum(mask_NxP, axis=1, dtype=jnp.int32) - 1

    routes_NxTxLxA = None
    if prompt_routes_BxPxLxA is not None:
        routes_NxTxLxA = jnp.zeros((n, t) + prompt_routes_BxPxLxA.shape[2:],
                                   prompt_routes_BxPxLxA.dtype)
    state = DecodeState(
        step=jnp.zeros((), jnp.int32),
        last_N=jnp.zeros((n,), jnp.int32),
        cache=cache,
        done_N=~tile(valid_B),
        stopped_N=jnp.zeros((n,), bool),
        tokens_NxT=jnp.full((n, t), cfg.pad_id, jnp.int32),
        mask_NxT=jnp.zeros((n, t), bool),
        logp_NxT=jnp.zeros((n, t), jnp.float32),
        routes_NxTxLxA=routes_NxTxLxA,
    )
    token_N, logp_N = draw.sample(tile(logits_BxV), jax.random.fold_in(key, 0), cfg)
    state = _record(state, token_N, logp_N, cache, cfg)

    def keep_going(end: int, state: DecodeState) -> jax.Array:
        return (state.step < end) & ~jnp.all(state.done_N)

    for main, slots, end in loop_caches(p, t, cfg.decode_loops):
        cache = state.cache
        if recent_buffer:
            cache = cache_lib.with_recent(cache_lib.extend(cache, main), slots - main)
        else:
            cache = cache_lib.extend(cache, slots)
        body = functools.partial(decode_step, params, mask_NxS=attention_mask_NxS[:, :slots],
                                 first_position_N=first_position_N, key=key,
                                 model_config=model_config, cfg=cfg)
        state = jax.lax.while_loop(functools.partial(keep_going, end),
                                   lambda state: body(state),
                                   dataclasses.replace(state, cache=cache))
        if recent_buffer:
            state = dataclasses.replace(
                state, cache=cache_lib.merge_recent(state.cache, slots))
    return Rollout(
        prompt_tokens_NxP=tile(tokens_BxP),
        prompt_mask_NxP=mask_NxP,
        tokens_NxT=state.tokens_NxT,
        response_mask_NxT=state.mask_NxT,
        behaviour_logp_NxT=state.logp_NxT,
        length_N=jnp.sum(state.mask_NxT, axis=1, dtype=jnp.int32),
        finish_reason_N=jnp.where(state.stopped_N, FINISH_STOP,
                                  FINISH_LENGTH).astype(jnp.int32),
        group_id_N=jnp.arange(n, dtype=jnp.int32) // g,
        prompt_routes_NxPxLxA=(None if prompt_routes_BxPxLxA is None
                               else tile(prompt_routes_BxPxLxA)),
        routes_NxTxLxA=state.routes_NxTxLxA,
    )


def decode_step(params: Params, state: DecodeState, *, mask_NxS: jax.Array,
                first_position_N: jax.Array, key: jax.Array,
                model_config: ModelConfig, cfg: SamplingConfig) -> DecodeState:
    """One decode step: a Q = 1 forward pass of every row, a draw, the record.

    The body of every decode loop; `mask_NxS` covers the loop's S cache slots
    and `first_position_N` is each row's RoPE position of response token 0.
    With `state.routes_NxTxLxA`, the fed token's experts go to its column.
    """
    positions_Nx1 = (first_position_N + state.step)[:, None]
    h_Nx1xD, cache, routing = transformer.hidden_routed(
        params, state.last_N[:, None], positions_Nx1, mask_NxS, state.cache,
        config=model_config)
    logits_Nx1xV = transformer.unembed(params, h_Nx1xD, config=model_config)
    if state.routes_NxTxLxA is not None:
        routes = state.routes_NxTxLxA
        state = dataclasses.replace(state, routes_NxTxLxA=jax.lax.dynamic_update_slice_in_dim(
            routes, routing.ids_NxQxLxA.astype(routes.dtype), state.step - 1, axis=1))
    token_N, logp_N = draw.sample(logits_Nx1xV[:, 0, :],
                                  jax.random.fold_in(key, state.step), cfg)
    return _record(state, token_N, logp_N, cache, cfg)


def loop_caches(prompt_len: int, max_new_tokens: int, loops: int
                ) -> list[tuple[int, int, int]]:
    """(main, slots, end) per decode loop: its cache's slots and step bound.

    `slots` and `end` as in `decode_segments`; `main` is the slots written
    before the loop starts (P + its first step - 1), the ones a recent buffer
    of `slots - main` follows.
    """
    out, first = [], 1
    for end, slots in decode_segments(prompt_len, max_new_tokens, loops):
        out.append((prompt_len + first - 1, slots, end))
        first = end
    return out


def decode_segments(prompt_len: int, max_new_tokens: int, loops: int
                    ) -> list[tuple[int, int]]:
    """(end, slots) of each decode loop: steps < end read the first `slots` slots.

    Decode step s (1 <= s < T; step 0 samples from the prefill's logits) feeds
    response token s - 1, writes it at slot P + s - 1 and attends to slots
    0 .. P + s - 1. Early steps therefore need only a prefix of the S = P + T
    slots, and reading the whole cache on every step would stream about
    S / (P + T / 2) times more keys and values than a decode needs. So the
    steps are split into up to `loops` consecutive `while_loop`s of at least
    `MIN_LOOP_STEPS` steps, each over a cache just wide enough for its last
    step (widths in multiples of 8 slots; the last loop's is S): the cache
    holds the P prompt slots after prefill and is padded to each loop's width
    before the loop (`cache.extend`), one copy per loop instead of reading
    unwritten slots on every step. Each loop is its own compiled body; a
    finished batch exits every later loop on its first check.
    """
    p, t = prompt_len, max_new_tokens
    width = max(-(-t // loops), MIN_LOOP_STEPS)
    width = -(-width // 8) * 8
    segments, slots = [], p
    while not segments or segments[-1][0] < t:
        slots = min(slots + width, p + t)
        segments.append((min(slots - p + 1, t), slots))
    return segments


def decode_bytes_per_step(model_config: ModelConfig, rows: int,
                          slots: float, active_experts: float | None = None) -> float:
    """The fewest bytes one decode step must read from memory (a roofline).

    Every parameter once, except the input embedding table, of which only the
    `rows` looked-up rows are read unless it is tied to the LM head (which
    reads it whole), and except the experts of an MoE layer that no row
    routes to: a step reads `active_experts` of each MoE layer's E experts,
    by default min(E, rows * A), what `rows` rows routed to A experts each
    reach when they overlap least (a measured count may be passed); plus the
    keys and values in `slots` cache slots of every layer for each row.
    Decode throughput is at most `rows * bandwidth / decode_bytes_per_step(...)`
    tokens/s; over a decode of T tokens after a P-token prompt the mean
    `slots` is P + (T - 1) / 2.
    """
    c = model_config
    param_bytes = jnp.dtype(c.param_dtype).itemsize
    params = c.num_params
    if not c.tie_embeddings:  # Only the looked-up rows of the table.
        params -= (c.vocab_size - rows) * c.embed_dim
    if c.moe_layers:
        if active_experts is None:
            active_experts = min(c.num_experts, rows * c.experts_per_token)
        idle = c.num_experts - active_experts
        params -= len(c.moe_layers) * idle * 3 * c.embed_dim * c.moe_mlp_dim
    kv_per_slot = (2 * c.num_layers * c.num_kv_heads * c.head_dim *
                   jnp.dtype(c.compute_dtype).itemsize)
    return params * param_bytes + rows * slots * kv_per_slot
