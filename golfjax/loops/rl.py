"""On-policy RL: rollout -> score -> advantage -> update, plus evaluation.

Letters: B prompts, G samples per prompt, N = B * G rows, P prompt slots,
T response slots.

This is the GRPO baseline as it stands (and GOLF with feedback switched off);
golfjax/loops/golf.py adds critiques, refinements and injection between
scoring and the update, and golfjax/loops/vespo.py trains one rollout over
several mini-batches. Text work (templating, decoding, verification) happens
here on the host, never inside jit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from golfjax import advantages as advantages_lib
from golfjax import sharding
from golfjax.rewards.base import Problem
from golfjax.rewards.base import Task
from golfjax.sampling import Rollout
from golfjax.sampling import Sampler
from golfjax.tokenizer import Tokenizer
from golfjax.types import Batch
from golfjax.types import make_batch


def decode_responses(rollout: Rollout, tokenizer: Tokenizer) -> list[str]:
    """Response text of every row (special tokens such as the stop token dropped)."""
    tokens_NxT = np.asarray(rollout.tokens_NxT)
    mask_NxT = np.asarray(rollout.response_mask_NxT)
    return [tokenizer.decode(row[m]) for row, m in zip(tokens_NxT, mask_NxT)]


@dataclasses.dataclass
class Groups:
    """A rollout of G samples per problem, on the host, with its scores."""

    problems: list[Problem]  # B
    rollout: Rollout  # N rows, prompt-major (NumPy arrays)
    texts: list[str]  # N
    reward_N: np.ndarray  # float32

    @property
    def group_size(self) -> int:
        return len(self.texts) // len(self.problems)

    def reward_BxG(self) -> np.ndarray:
        return self.reward_N.reshape(len(self.problems), self.group_size)


def sample_groups(
    sampler: Sampler,
    params: Any,
    problems: Sequence[Problem],
    prompts: Sequence[Sequence[int]],
    key: jax.Array,
    task: Task,
    tokenizer: Tokenizer,
) -> Groups:
    """Samples G responses per prompt and scores each against its problem."""
    # Every process gets the whole rollout (gathered when it spans processes).
    rollout = sharding.global_to_host(sampler.generate(params, list(prompts), key))
    texts = decode_responses(rollout, tokenizer)
    g = len(texts) // len(problems)
    reward_N = np.array(
        [task.score(problems[i // g], text) for i, text in enumerate(texts)], np.float32
    )
    return Groups(list(problems), rollout, texts, reward_N)


def to_batch(
    rollout: Rollout,
    reward_N: np.ndarray,
    group_id_N: np.ndarray,
    advantage_fn: Callable[..., jax.Array],
    *,
    exclude_N: np.ndarray | None = None,
    off_policy_mask_NxT: np.ndarray | None = None,
) -> Batch:
    """A train `Batch` from rollout arrays, with advantages per group id."""
    advantage_N = np.asarray(
        advantage_fn(reward_N, np.asarray(group_id_N, np.int32), exclude_N)
    )
    return make_batch(
        prompt_tokens_NxP=rollout.prompt_tokens_NxP,
        prompt_mask_NxP=rollout.prompt_mask_NxP,
        tokens_NxT=rollout.tokens_NxT,
        response_mask_NxT=rollout.response_mask_NxT,
        behaviour_logp_NxT=rollout.behaviour_logp_NxT,
        advantage_N=advantage_N,
        reward_N=reward_N,
        group_id_N=group_id_N,
        off_policy_mask_NxT=off_policy_mask_NxT,
    )


def group_metrics(reward_BxG: np.ndarray, prefix: str = "reward") -> dict[str, float]:
    """Mean reward and the fractions of all-fail and all-success groups."""
    success_BxG = reward_BxG >= 1.0
    return {
        f"{prefix}/mean": float(reward_BxG.mean()),
        f"{prefix}/all_fail_frac": float((~success_BxG.any(axis=1)).mean()),
        f"{prefix}/all_success_frac": float(success_BxG.all(axis=1).mean()),
    }


def evaluate(
    sampler: Sampler,
    params: Any,
    problems: Sequence[Problem],
    key: jax.Array,
    task: Task,
    tokenizer: Tokenizer,
    template_kwargs: Mapping[str, Any],
    batch_size: int,
) -> dict[str, float]:
    """Held-out mean accuracy over k samples per problem, and pass@k.

    k is the eval sampler's group size. pass@k is the fraction of problems with
    at least one of its k samples correct.
    """
    correct = []
    for start in range(0, len(problems), batch_size):
        chunk = list(problems[start : start + batch_size])
        prompts = [tokenizer.encode_prompt(p.question, template_kwargs) for p in chunk]
        groups = sample_groups(
            sampler, params, chunk, prompts, jax.random.fold_in(key, start), task, tokenizer
        )
        correct.append(groups.reward_BxG() >= 1.0)
    correct_BxK = np.concatenate(correct, axis=0)
    k = correct_BxK.shape[1]
    return {
        "eval/accuracy": float(correct_BxK.mean()),
        f"eval/pass@{k}": float(correct_BxK.any(axis=1).mean()),
    }


def advantage_fn(name: str) -> Callable[..., jax.Array]:
    """The jitted advantage estimator of that name (compiled once per shape)."""
    return jax.jit(advantages_lib.get_advantage(name))
