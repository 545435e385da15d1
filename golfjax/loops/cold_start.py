"""Supervised cold start: reference solutions as a train `Batch`.

Maximising the log-likelihood of reference responses is REINFORCE with
advantage 1 under `token-mean` aggregation: `l_t = -1 * logp_t`. So the cold
start reuses the RL train step unchanged (loss "reinforce"); this module only
lays out the examples of golfjax/data/cold_start.py (prompt ids, response ids
ending in eos) as an ordinary `Batch` with advantage 1 on every row.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from golfjax.data.cold_start import SFTExample
from golfjax.types import Batch
from golfjax.types import make_batch


def sft_batch(
    examples: Sequence[SFTExample], *, prompt_len: int, response_len: int, pad_id: int
) -> Batch:
    """Prompts left-padded to `prompt_len`, responses right-padded to `response_len`.

    Raises:
      ValueError: an example does not fit, naming its index and the lengths.
    """
    n = len(examples)
    prompt_tokens = np.full((n, prompt_len), pad_id, np.int32)
    prompt_mask = np.zeros((n, prompt_len), bool)
    tokens = np.full((n, response_len), pad_id, np.int32)
    response_mask = np.zeros((n, response_len), bool)
    for i, example in enumerate(examples):
        prompt, response = example.prompt_tokens, example.response_tokens
        if len(prompt) > prompt_len or len(response) > response_len:
            raise ValueError(
                f"cold-start example {i}: prompt of {len(prompt)} tokens and response of"
                f" {len(response)} tokens do not fit prompt_len={prompt_len},"
                f" response_len={response_len}"
            )
        prompt_tokens[i, prompt_len - len(prompt) :] = prompt
        prompt_mask[i, prompt_len - len(prompt) :] = True
        tokens[i, : len(response)] = response
        response_mask[i, : len(response)] = True
    return make_batch(
        prompt_tokens_NxP=prompt_tokens,
        prompt_mask_NxP=prompt_mask,
        tokens_NxT=tokens,
        response_mask_NxT=response_mask,
        behaviour_logp_NxT=np.zeros((n, response_len), np.float32),
        advantage_N=np.ones(n, np.float32),
    )
