"""The per-step token distribution of the sampler: truncation, draw, log-probs.

Letters (the project's, golfjax/types.py): N rows, V vocabulary, C candidate
tokens kept by top-k, Cb blocks of the CDF over them, Cw candidates per block,
X any leading axes. golfjax/sampling.py describes the distribution
sampled from and how a trainer recomputes its log-probs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from golfjax.sampling_config import SamplingConfig

_CDF_BLOCK = 128  # Candidates per block of the two-level CDF in `_draw`.


def _truncate(scaled_XxV: jax.Array, cfg: SamplingConfig
              ) -> tuple[jax.Array, jax.Array | None]:
    """The processed logits over the kept candidates, and their token ids.

    Returns (logits_XxC, ids_XxC) with C = min(top_k, V) (or V when only top-p
    is on), candidates sorted most probable first and cut ones at -inf; or
    (scaled_XxV, None) when no truncation is configured, which avoids sorting
    the vocabulary.
    """
    v = scaled_XxV.shape[-1]
    if cfg.top_k == 0 and cfg.top_p >= 1.0:
        return scaled_XxV, None
    c = min(cfg.top_k, v) if cfg.top_k else v
    top_XxC, ids_XxC = jax.lax.top_k(scaled_XxV, c)
    if cfg.top_p < 1.0:
        probs_XxC = jax.nn.softmax(top_XxC, axis=-1)
        # Keep a candidate iff the mass strictly before it is < top_p: the
        # smallest prefix reaching top_p, never empty (transformers' TopP rule).
        before_XxC = jnp.cumsum(probs_XxC, axis=-1) - probs_XxC
        top_XxC = jnp.where(before_XxC < cfg.top_p, top_XxC, -jnp.inf)
    return top_XxC, ids_XxC


def processed_log_probs(logits_XxV: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Log-probs of the distribution `sample` draws from, over the whole vocabulary.

    `log_softmax(logits / temperature)` with the top-k / top-p cuts of `cfg`
    applied (-inf outside the kept set); for `temperature == 0` the temperature-1
    `log_softmax(logits)`, matching what greedy sampling reports. This is the
    recomputation a trainer uses to match `Rollout.behaviour_logp_NxT`.
    """
    logits_XxV = logits_XxV.astype(jnp.float32)
    if cfg.temperature == 0:
        return jax.nn.log_softmax(logits_XxV, axis=-1)
    kept_XxC, ids_XxC = _truncate(logits_XxV / cfg.temperature, cfg)
    logp_XxC = jax.nn.log_softmax(kept_XxC, axis=-1)
    if ids_XxC is None:
        return logp_XxC
    full_XxV = jnp.full(logits_XxV.shape, -jnp.inf, jnp.float32)
    return jnp.put_along_axis(full_XxV, ids_XxC, logp_XxC, axis=-1,
                              inplace=False)


def _last_positive(mass_NxC: jax.Array) -> jax.Array:
    """Index of the last positive entry of each row (0 if none)."""
    c = mass_NxC.shape[1]
    return jnp.max(jnp.where(mass_NxC > 0,
                             jnp.arange(c, dtype=jnp.int32)[None, :], 0), axis=1)


def _max_and_sum_exp(x_NxCbxCw: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per block, `max(x)` and `sum(exp(x - max(x)))` in one pass over x.

    A variadic reduction whose reducer merges two partial (max, sum) pairs by
    rescaling the smaller one, the online-softmax rule; a block of -inf
    gives (-inf, 0).
    """
    def merge(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]
              ) -> tuple[jax.Array, jax.Array]:
        (max_a, sum_a), (max_b, sum_b) = a, b
        top = jnp.maximum(max_a, max_b)
        scaled_a = jnp.where(sum_a > 0, sum_a * jnp.exp(max_a - top), 0.0)
        scaled_b = jnp.where(sum_b > 0, sum_b * jnp.exp(max_b - top), 0.0)
        return top, scaled_a + scaled_b

    ones = jnp.where(x_NxCbxCw > -jnp.inf, 1.0, 0.0).astype(x_NxCbxCw.dtype)
    return jax.lax.reduce((x_NxCbxCw, ones),
                          (jnp.array(-jnp.inf, x_NxCbxCw.dtype),
                           jnp.array(0.0, x_NxCbxCw.dtype)), merge, (2,))


def _draw(logits_NxC: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A categorical draw by inverse CDF, and its normalised log-prob.

    One uniform per row (Gumbel-max would need a random number per
    candidate). The CDF is two-level: the mass of each block of `_CDF_BLOCK`
    candidates, then the CDF inside the chosen block. Two passes over the
    candidates: the global max, then every block's mass `sum(exp(x - max))`;
    everything after reads one block per row. Candidates at -inf have zero
    mass and are never drawn: `count(cdf <= u)` passes over them with their
    predecessor, and the result is clamped to the last candidate with mass,
    for when rounding puts u at the very top of the CDF.
    """
    n, c = logits_NxC.shape
    width = min(_CDF_BLOCK, c)
    blocks = -(-c // width)
    x_NxC = logits_NxC
    if blocks * width != c:
        x_NxC = jnp.pad(x_NxC, ((0, 0), (0, blocks * width - c)),
                        constant_values=-jnp.inf)
    x_NxCbxCw = x_NxC.reshape(n, blocks, width)
    block_max_NxCb, block_sum_NxCb = _max_and_sum_exp(x_NxCbxCw)
    top_N = jnp.max(block_max_NxCb, axis=-1)
    block_NxCb = jnp.where(block_sum_NxCb > 0, block_sum_NxCb * jnp.exp(
        block_max_NxCb - top_N[:, None]), 0.0)
    cdf_NxCb = jnp.cumsum(block_NxCb, axis=-1)
    total_N = cdf_NxCb[:, -1]
    u_N = jax.random.uniform(key, (n,), jnp.float32) * total_N
    block_N = jnp.minimum(
        jnp.sum(cdf_NxCb <= u_N[:, None], axis=-1, dtype=jnp.int32),
        _last_positive(block_NxCb))
    x_NxCw = jnp.take_along_axis(x_NxCbxCw, block_N[:, None, None], axis=1)[:, 0]
    p_NxCw = jnp.exp(x_NxCw - top_N[:, None])
    before_N = (jnp.take_along_axis(cdf_NxCb, block_N[:, None], axis=1) -
                jnp.take_along_axis(block_NxCb, block_N[:, None], axis=1))[:, 0]
    cdf_NxCw = jnp.cumsum(p_NxCw, axis=-1)
    within_N = jnp.minimum(
        jnp.sum(cdf_NxCw <= (u_N - before_N)[:, None], axis=-1, dtype=jnp.int32),
        _last_positive(p_NxCw))
    choice_N = block_N * width + within_N
    picked_N = jnp.take_along_axis(x_NxCw, within_N[:, None], axis=-1)[:, 0]
    return choice_N, picked_N - top_N - jnp.log(total_N)


def sample(logits_NxV: jax.Array, key: jax.Array, cfg: SamplingConfig
           ) -> tuple[jax.Array, jax.Array]:
    """One token per row and its behaviour log-prob (module docstring).

    Returns (token_N int32, logp_N float32).
    """
    logits_NxV = logits_NxV.astype(jnp.float32)
    if cfg.temperature == 0:
        token_N = jnp.argmax(logits_NxV, axis=-1).astype(jnp.int32)
        picked_N = jnp.take_along_axis(logits_NxV, token_N[:, None], axis=-1)[:, 0]
        return token_N, picked_N - jax.nn.logsumexp(logits_NxV, axis=-1)
    kept_NxC, ids_NxC = _truncate(logits_NxV / cfg.temperature, cfg)
    choice_N, logp_N = _draw(kept_NxC, key)
    if ids_NxC is None:
        return choice_N, logp_N
    token_N = jnp.take_along_axis(ids_NxC, choice_N[:, None], axis=-1)[:, 0]
    return token_N.astype(jnp.int32), logp_N
