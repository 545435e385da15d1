"""Per-token log-probs of response tokens, computed in chunks along the sequence.

Letters (golfjax/types.py): N rows, P prompt slots, T response slots,
S = P + T, D model width, V vocabulary; Nc chunks of Tc response positions.

The model runs once over `[prompt; response]` and returns hidden states; the
unembedding (the D x V matmul), the softmax normaliser and the entropy are then
computed Tc response positions at a time under `jax.checkpoint`, so neither the
forward nor the backward pass ever holds a float32 `N x T x V` tensor.

Peak memory of this step: about `3 * N * Tc * V * 4` bytes (the chunk's logits,
its softmax and their cotangent) instead of `N * T * V * 4` for each of those.
For N = 8, Tc = 128, V = 151,936 (Qwen 2.5) that is 1.9 GB instead of 19 GB at
T = 4096 on every device that holds the rows.

Temperature: the sampler draws from `softmax(logits / temperature)` (then
optionally truncated by top-k/top-p); the trainer must score tokens under the
same scaled distribution, so `logp = log_softmax(logits / temperature)[token]`.
With top-k/top-p truncation the sampler's reported log-probs are of the
truncated distribution and differ from these; RL runs use top_p = 1, top_k = 0.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# (hidden_XxD) -> float32 logits_XxV
Unembed = Callable[[jax.Array], jax.Array]


def response_hidden(h_NxSxD: jax.Array, prompt_len: int) -> jax.Array:
    """The hidden states that predict the response tokens.

    The token in slot `P + t` is predicted by the hidden state of slot
    `P + t - 1`, so response token 0 reads the last prompt slot.
    """
    num_response = h_NxSxD.shape[1] - prompt_len
    return jax.lax.slice_in_dim(h_NxSxD, prompt_len - 1, prompt_len - 1 + num_response, axis=1)


def token_logprobs(
    h_NxTxD: jax.Array,
    targets_NxT: jax.Array,
    unembed: Unembed,
    *,
    temperature: float = 1.0,
    chunk: int = 128,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """`log_softmax(unembed(h) / temperature)` at `targets`, and the entropy.

    Args:
      h_NxTxD: hidden states predicting each target (see `response_hidden`).
      targets_NxT: int token ids whose log-prob is wanted.
      unembed: maps hidden states to float32 logits.
      temperature: the sampling temperature (> 0).
      chunk: Tc, response positions per chunk; T is padded up to a multiple.
      with_entropy: also return the entropy of each position's distribution.

    Returns:
      float32 `logp_NxT` and `entropy_NxT` (None unless `with_entropy`).
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}; expected > 0 (greedy rollouts are scored at 1)")
    n, t, d = h_NxTxD.shape
    tc = min(chunk, t)
    num_chunks = -(-t // tc)
    pad = num_chunks * tc - t
    h_NxTxD = jnp.pad(h_NxTxD, ((0, 0), (0, pad), (0, 0)))
    targets_NxT = jnp.pad(targets_NxT, ((0, 0), (0, pad)))
    # Chunks lead, so lax.map walks them one at a time.
    h_NcxNxTcxD = h_NxTxD.reshape(n, num_chunks, tc, d).transpose(1, 0, 2, 3)
    targets_NcxNxTc = targets_NxT.reshape(n, num_chunks, tc).transpose(1, 0, 2)

    @jax.checkpoint  # Backward recomputes the chunk's logits instead of storing them.
    def one_chunk(h_NxTcxD: jax.Array, targets_NxTc: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits_NxTcxV = unembed(h_NxTcxD).astype(jnp.float32) / temperature
        lse_NxTc = jax.nn.logsumexp(logits_NxTcxV, axis=-1)
        target_NxTc = jnp.take_along_axis(logits_NxTcxV, targets_NxTc[..., None], axis=-1)[..., 0]
        logp_NxTc = target_NxTc - lse_NxTc
        if not with_entropy:
            return logp_NxTc, jnp.zeros_like(logp_NxTc)
        probs_NxTcxV = jnp.exp(logits_NxTcxV - lse_NxTc[..., None])
        entropy_NxTc = lse_NxTc - jnp.sum(probs_NxTcxV * logits_NxTcxV, axis=-1)
        return logp_NxTc, entropy_NxTc

    logp_NcxNxTc, entropy_NcxNxTc = jax.lax.map(lambda xs: one_chunk(*xs),
                                                (h_NcxNxTcxD, targets_NcxNxTc))

    def unchunk(x_NcxNxTc: jax.Array) -> jax.Array:
        return x_NcxNxTc.transpose(1, 0, 2).reshape(n, num_chunks * tc)[:, :t]

    return unchunk(logp_NcxNxTc), (unchunk(entropy_NcxNxTc) if with_entropy else None)
