"""GOLF's injected rows as data: the records GOLF logs and their offline replay.

With `golf.log_injected` each step's injected rows (`injected_rows`: problem,
response token ids, advantage) reach the metrics under `INJECTED_ROWS` (golf.py),
and the train loop writes them to `injected.jsonl`; `replay_batch` turns such
records back into a train batch, so that benchmarks/golf_vs_grpo.py can train
a policy on GOLF's demonstrations alone. `distinct_demonstrations` counts the
distinct (question, response) pairs among them (`golf/distinct_demonstrations`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from golfjax.rewards.base import Problem
from golfjax.tokenizer import Tokenizer
from golfjax.types import Batch
from golfjax.types import make_batch


def injected_rows(problems: Sequence[Problem], original: Batch, injected_N: np.ndarray,
                  g: int) -> list[dict[str, Any]]:
    """Each injected row of the original part as plain data: its problem
    (`problem_id`, `question`), response token ids and advantage; what the
    offline replay trains on (benchmarks/golf_vs_grpo.py)."""
    rows = []
    for i in np.flatnonzero(injected_N):
        problem = problems[i // g]
        mask = np.asarray(original.response_mask_NxT[i])
        rows.append({
            "problem_id": int(problem.id),
            "question": problem.question,
            "response": np.asarray(original.tokens_NxT[i])[mask].tolist(),
            "advantage": float(original.advantage_N[i]),
        })
    return rows


def distinct_demonstrations(rows: Sequence[dict[str, Any]]) -> int:
    """How many distinct (question, response) pairs `injected_rows` holds."""
    return len({(r["question"], tuple(r["response"])) for r in rows})


def replay_batch(
    rows: Sequence[dict[str, Any]],
    tokenizer: Tokenizer,
    *,
    capacity: int,
    prompt_buckets: Sequence[int],
    response_len: int,
    template_kwargs: dict[str, Any] | None = None,
    supervised: bool = False,
) -> Batch:
    """`injected_rows` records (`injected.jsonl`) as a train batch of `capacity` rows.

    Each row's prompt is its question, templated as the rollout templates it;
    its response the logged tokens. By default every response token is
    off-policy with the logged advantage (the train step applies
    `train.off_policy_loss` to them alone); `supervised` makes them on-policy
    with advantage 1 (supervised learning under REINFORCE). Rows beyond the
    records are empty (no token: they count nowhere), so every step of a replay
    has one shape.

    Raises:
      ValueError: more records than `capacity`, or a response longer than
        `response_len`.
    """
    if len(rows) > capacity:
        raise ValueError(f"replay_batch: {len(rows)} rows do not fit capacity={capacity}")
    prompts = [tokenizer.encode_prompt(r["question"], template_kwargs or {}) for r in rows]
    longest = max([len(p) for p in prompts], default=1)
    p = next((b for b in prompt_buckets if b >= longest), longest)
    prompt_tokens_NxP = np.full((capacity, p), tokenizer.pad_id, np.int32)
    prompt_mask_NxP = np.zeros((capacity, p), bool)
    tokens_NxT = np.full((capacity, response_len), tokenizer.pad_id, np.int32)
    mask_NxT = np.zeros((capacity, response_len), bool)
    advantage_N = np.zeros(capacity, np.float32)
    for i, (row, prompt) in enumerate(zip(rows, prompts)):
        response = row["response"]
        if len(response) > response_len:
            raise ValueError(f"replay_batch: row {i} has {len(response)} response tokens;"
                             f" response_len={response_len}")
        prompt_tokens_NxP[i, p - len(prompt):] = prompt
        prompt_mask_NxP[i, p - len(prompt):] = True
        tokens_NxT[i, :len(response)] = response
        mask_NxT[i, :len(response)] = True
        advantage_N[i] = 1.0 if supervised else row["advantage"]
    return make_batch(
        prompt_tokens_NxP=prompt_tokens_NxP, prompt_mask_NxP=prompt_mask_NxP, tokens_NxT=tokens_NxT,
        response_mask_NxT=mask_NxT, behaviour_logp_NxT=np.zeros((capacity, response_len), np.float32),
        advantage_N=advantage_N, reward_N=(advantage_N != 0).astype(np.float32),
        off_policy_mask_NxT=None if supervised else mask_NxT,
    )
