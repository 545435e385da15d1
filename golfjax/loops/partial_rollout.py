"""Partial rollouts: generation in chunks, each chunk under the newest weights.

Letters as in golfjax/sampling.py: B prompts, G samples per prompt, N = B * G
rows, P prompt slots, T = `sampling.max_new_tokens`; K tokens per chunk.

    out = partial_rollout.generate(sampler, refresh, prompts, key, chunk_tokens=K)
    out.rollout, out.version_min_N, out.version_max_N

VESPO's fully asynchronous recipe (verl's recipe/fully_async_policy with
`async_training.partial_rollout=True`) lets a generation that is in flight at
a weight sync continue under the new weights, so one response spans several
policy versions and each token's behaviour log-prob is the one of the
weights that produced it. Here that is a loop of chunks:

1. `refresh()` -> (params, version): the newest published weights, called
   before every chunk (an async producer passes its channel's `latest`).
2. Chunk 0 samples G responses per prompt with at most K new tokens: the
   ordinary sampler, its config with `max_new_tokens=K`, the call's own key.
3. Chunk c > 0 continues every unfinished row (no stop token yet, fewer than
   T tokens): its prompt + partial response is re-prefilled as one prompt
   (a sampler config with `group_size=1` and prompt buckets wide enough for
   P + T) and decoded for at most K more tokens, of which the row keeps
   min(K, T - its length); key `chunk_key(key, c)`.

The prefill numbers positions by the prompt mask (cumsum - 1) and the
decode continues from the number of real tokens, so a re-prefilled prompt +
partial response has exactly the positions and attention of the
uninterrupted sequence: with constant weights, a chunked rollout's
behaviour log-probs are the trainer's teacher-forced ones (a test checks).

MoE models: the re-prefill routes the prompt and the partial response again
under the chunk's weights; a row keeps the routes of its newest forward
(prompt and prefix routes from the re-prefill, later tokens from the decode),
i.e. the experts a teacher-forced pass under its newest weights chose.

Cost. Every chunk after the first re-prefills each unfinished row's prompt
and partial response, one row at a time (the G rows of a prompt no longer
share one prefill), even when the version has not changed: about
N * (P + k) prefill tokens for a row with k tokens, against N * 1 decode
tokens per step. That is compute, not correctness: the KV cache written
under old weights is stale after a sync (its keys and values are the old
weights'), and the sampler's programs do not hand a cache from one call to
the next, so re-prefilling is what makes the continuation the one the new
weights would produce. With K >= T (or K = 0) there is one chunk and no
re-prefill: the call is the ordinary sampler's, token for token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from golfjax import sampling
from golfjax import sharding
from golfjax.decode import FINISH_LENGTH, FINISH_STOP, Rollout

Params = Any
Refresh = Callable[[], tuple[Params, int]]
# Salt of the chunk keys, far above any decode step index (the decode draws
# step s with fold_in(key, s)), so no chunk key is a step key of chunk 0.
_CHUNK_SALT = 0x5A17C4A1


@dataclasses.dataclass(frozen=True)
class PartialRollout:
    """A chunked rollout (host arrays) and the policy versions of each row.

    Attributes:
      rollout: N rows, prompt-major, laid out as `Sampler.generate` returns.
      version_min_N, version_max_N: int32, the oldest and newest version
        (from `refresh`) whose weights produced tokens of the row.
    """

    rollout: Rollout
    version_min_N: np.ndarray
    version_max_N: np.ndarray


def chunk_key(key: jax.Array, chunk: int) -> jax.Array:
    """The key of chunk `chunk` > 0 (chunk 0 samples with the call's key)."""
    return jax.random.fold_in(jax.random.fold_in(key, _CHUNK_SALT), chunk)


def generate_host(sampler: Any, params: Params, prompts: Sequence[Sequence[int]],
                  key: jax.Array) -> Rollout:
    """`sampler.generate` on host arrays, for any number of prompts.

    More prompts than the sampler's largest batch bucket are sampled in calls
    of that many, call i with `fold_in(key, i)`, and joined (prompts
    left-padded to the longest); every process gets the whole rollout.
    """
    prompts, cap = list(prompts), sampler.cfg.batch_buckets[-1]
    calls = [sharding.global_to_host(sampler.generate(
        params, prompts[i:i + cap], key if len(prompts) <= cap else jax.random.fold_in(key, i // cap)))
        for i in range(0, len(prompts), cap)]
    return calls[0] if len(calls) == 1 else _join(calls, cap, sampler.cfg.pad_id)


def _join(calls: Sequence[Rollout], cap: int, pad_id: int) -> Rollout:
    """The rollouts of consecutive calls of `cap` prompts as one (host arrays)."""
    p = max(r.prompt_tokens_NxP.shape[1] for r in calls)
    fields = {}
    for field in dataclasses.fields(Rollout):
        if getattr(calls[0], field.name) is None:  # A dense model's routes.
            fields[field.name] = None
            continue
        parts = [np.asarray(getattr(r, field.name)) for r in calls]
        if "_NxP" in field.name:  # Left padding, as the sampler pads (routes: expert 0).
            fill = pad_id if "tokens" in field.name else 0
            parts = [np.pad(x, ((0, 0), (p - x.shape[1], 0)) + ((0, 0),) * (x.ndim - 2),
                            constant_values=fill) for x in parts]
        elif field.name == "group_id_N":  # Each call numbers its prompts from 0.
            parts = [x + i * cap for i, x in enumerate(parts)]
        fields[field.name] = np.concatenate(parts)
    return Rollout(**fields)


def _with_cfg(sampler: Any, cfg: sampling.SamplingConfig) -> Any:
    """A sampler of the same model and mesh with config `cfg` (`make_sampler`'s,
    so its programs are shared across calls; the default rule table, as
    golfjax/components.py builds every sampler)."""
    if cfg == sampler.cfg:
        return sampler
    return sampling.make_sampler(sampler.model_config, cfg, sampler.mesh)


def continuation_config(cfg: sampling.SamplingConfig, chunk: int) -> sampling.SamplingConfig:
    """One sample per row, K new tokens, prompt buckets that fit P + T."""
    wide = {b + cfg.max_new_tokens for b in cfg.prompt_buckets}
    return cfg.replace(group_size=1, max_new_tokens=chunk,
                       prompt_buckets=tuple(sorted(set(cfg.prompt_buckets) | wide)))


def generate(sampler: Any, refresh: Refresh, prompts: Sequence[Sequence[int]],
             key: jax.Array, chunk_tokens: int) -> PartialRollout:
    """G responses per prompt in chunks of `chunk_tokens`, each under `refresh()`'s weights.

    Args:
      sampler: the ordinary `Sampler` (its config's T and G are the rollout's).
      refresh: () -> (params, version), called before every chunk.
      prompts: token-id lists (B of them).
      key: the call's key; with the same `refresh` sequence, the same rollout.
      chunk_tokens: K, new tokens per chunk; 0 (or >= T): one chunk.
    """
    cfg = sampler.cfg
    t = cfg.max_new_tokens
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, (int, np.integer)) \
            or chunk_tokens < 0:
        raise ValueError(f"chunk_tokens must be an int >= 0 (0: whole responses), got {chunk_tokens!r}")
    k = t if chunk_tokens == 0 else min(int(chunk_tokens), t)
    params, version = refresh()
    first = generate_host(_with_cfg(sampler, cfg.replace(max_new_tokens=k)), params, prompts, key)
    n = len(first.length_N)
    version_min_N = np.full(n, version, np.int32)
    version_max_N = version_min_N.copy()
    if k == t:
        return PartialRollout(first, version_min_N, version_max_N)

    def widen(x: np.ndarray, fill: Any) -> np.ndarray:  # [N, K, ...] -> [N, T, ...]
        out = np.full((n, t) + x.shape[2:], fill, x.dtype)
        out[:, :k] = x
        return out

    tokens_NxT = widen(np.asarray(first.tokens_NxT), cfg.pad_id)
    mask_NxT = widen(np.asarray(first.response_mask_NxT), False)
    logp_NxT = widen(np.asarray(first.behaviour_logp_NxT), 0.0)
    length_N = np.asarray(first.length_N).copy()
    stopped_N = np.asarray(first.finish_reason_N) == FINISH_STOP
    moe = first.routes_NxTxLxA is not None
    if moe:
        prompt_routes = np.array(first.prompt_routes_NxPxLxA)
        routes = widen(np.asarray(first.routes_NxTxLxA), 0)
    prompt_rows = [row[m] for row, m in zip(np.asarray(first.prompt_tokens_NxP),
                                            np.asarray(first.prompt_mask_NxP))]
    p0 = first.prompt_tokens_NxP.shape[1]
    cont = _with_cfg(sampler, continuation_config(cfg, k))
    chunk = 0
    while (live := np.flatnonzero(~stopped_N & (length_N < t))).size:
        chunk += 1
        params, version = refresh()
        rows = [np.concatenate([prompt_rows[i], tokens_NxT[i, :length_N[i]]]) for i in live]
        r = generate_host(cont, params, rows, chunk_key(key, chunk))
        pc = r.prompt_tokens_NxP.shape[1]
        for j, i in enumerate(live):
            done, new = int(length_N[i]), int(r.length_N[j])
            keep = min(new, t - done)
            tokens_NxT[i, done:done + keep] = r.tokens_NxT[j, :keep]
            mask_NxT[i, done:done + keep] = True
            logp_NxT[i, done:done + keep] = r.behaviour_logp_NxT[j, :keep]
            # A stop token past the row's budget is dropped with the tokens after it.
            stopped_N[i] = r.finish_reason_N[j] == FINISH_STOP and keep == new
            if moe:  # The re-prefill's routes of prompt and prefix, then the decode's.
                plen = len(prompt_rows[i])
                prefix = r.prompt_routes_NxPxLxA[j, pc - plen - done:]
                prompt_routes[i, p0 - plen:] = prefix[:plen]
                routes[i, :done] = prefix[plen:]
                routes[i, done:done + keep] = r.routes_NxTxLxA[j, :keep]
            length_N[i] = done + keep
        version_min_N[live] = np.minimum(version_min_N[live], version)
        version_max_N[live] = np.maximum(version_max_N[live], version)
    rollout = Rollout(
        prompt_tokens_NxP=np.asarray(first.prompt_tokens_NxP),
        prompt_mask_NxP=np.asarray(first.prompt_mask_NxP),
        tokens_NxT=tokens_NxT,
        response_mask_NxT=mask_NxT,
        behaviour_logp_NxT=logp_NxT,
        length_N=length_N.astype(np.int32),
        finish_reason_N=np.where(stopped_N, FINISH_STOP, FINISH_LENGTH).astype(np.int32),
        group_id_N=np.asarray(first.group_id_N),
        prompt_routes_NxPxLxA=prompt_routes if moe else None,
        routes_NxTxLxA=routes if moe else None,
    )
    return PartialRollout(rollout, version_min_N, version_max_N)
