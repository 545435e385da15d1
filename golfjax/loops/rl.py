"""GRPO-style batches: G samples per prompt, scored, advantages within each group.

Letters (golfjax/types.py): B prompts, G samples per prompt, N = B * G rows,
P prompt tokens, T response tokens.

`GroupSource.sample(params, problems, key) -> (batch, metrics)` is the batch
source of the GRPO baseline (`sample_partial`: the same batch generated in chunks
under the newest weights, golfjax/loops/partial_rollout.py); golfjax/loops/golf.py's `GolfSource` adds
critiques, refinements and injection between scoring and the batch, and
golfjax/loops/schedule.py decides when a source samples and how its batches
become optimizer steps. `Evaluator` measures held-out accuracy and pass@k.
Text work (templating, decoding, verification) happens here on the host,
never inside jit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from golfjax import advantages as advantages_lib
from golfjax.loops import partial_rollout
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
    """Samples G responses per prompt and scores each against its problem.

    More prompts than the sampler's largest batch bucket
    (`sampling.prompts_per_call`) are sampled in calls of that many, call i
    with `fold_in(key, i)`, and joined (`partial_rollout.generate_host`).
    """
    rollout = partial_rollout.generate_host(sampler, params, prompts, key)
    return score_groups(problems, rollout, task, tokenizer)


def score_groups(problems: Sequence[Problem], rollout: Rollout, task: Task,
                 tokenizer: Tokenizer) -> Groups:
    """The rollout's responses (host arrays, G per problem) decoded and scored."""
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
        prompt_routes_NxPxLxA=rollout.prompt_routes_NxPxLxA,
        routes_NxTxLxA=rollout.routes_NxTxLxA,
    )


def group_metrics(reward_BxG: np.ndarray, prefix: str = "reward") -> dict[str, float]:
    """Mean reward and the fractions of all-fail and all-success groups."""
    success_BxG = reward_BxG >= 1.0
    return {
        f"{prefix}/mean": float(reward_BxG.mean()),
        f"{prefix}/all_fail_frac": float((~success_BxG.any(axis=1)).mean()),
        f"{prefix}/all_success_frac": float(success_BxG.all(axis=1).mean()),
    }


def advantage_fn(name: str) -> Callable[..., jax.Array]:
    """The jitted advantage estimator of that name (compiled once per shape)."""
    return jax.jit(advantages_lib.get_advantage(name))


def encode_prompts(
    problems: Sequence[Problem], tokenizer: Tokenizer, template_kwargs: Mapping[str, Any]
) -> list[list[int]]:
    """Each problem's question as a chat-templated prompt (`task.template_kwargs`)."""
    return [tokenizer.encode_prompt(p.question, template_kwargs) for p in problems]


@dataclasses.dataclass(frozen=True)
class GroupSource:
    """GRPO's batch: G samples per prompt, advantages per group (`train.advantage`).

    Attributes:
      sampler: samples G responses per prompt (`sampling.group_size`).
      task: scores each response against its problem.
      tokenizer: templates prompts and decodes responses.
      advantage: the jitted estimator (`advantage_fn`).
      template_kwargs: chat-template variables of the prompts.
    """

    sampler: Sampler
    task: Task
    tokenizer: Tokenizer
    advantage: Callable[..., jax.Array]
    template_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def groups(self, params: Any, problems: Sequence[Problem], key: jax.Array) -> Groups:
        """The scored rollout of `problems` (B) sampled by `params`."""
        prompts = encode_prompts(problems, self.tokenizer, self.template_kwargs)
        return sample_groups(self.sampler, params, problems, prompts, key, self.task, self.tokenizer)

    def sample(self, params: Any, problems: Sequence[Problem], key: jax.Array) -> tuple[Batch, dict[str, float]]:
        """The N = B * G row batch and its metrics (rewards, "samples/generated")."""
        return self._batch(self.groups(params, problems, key))

    def sample_partial(self, refresh: partial_rollout.Refresh, problems: Sequence[Problem],
                       key: jax.Array, chunk_tokens: int
                       ) -> tuple[Batch, dict[str, float], np.ndarray, np.ndarray]:
        """`sample` as a partial rollout (golfjax/loops/partial_rollout.py): chunks of
        `chunk_tokens`, each under `refresh()`'s (params, version); also each row's
        oldest and newest version. With one chunk and a constant `refresh`, `sample`."""
        prompts = encode_prompts(problems, self.tokenizer, self.template_kwargs)
        out = partial_rollout.generate(self.sampler, refresh, prompts, key, chunk_tokens)
        groups = score_groups(problems, out.rollout, self.task, self.tokenizer)
        return (*self._batch(groups), out.version_min_N, out.version_max_N)

    def _batch(self, groups: Groups) -> tuple[Batch, dict[str, float]]:
        b, g = len(groups.problems), groups.group_size
        batch = to_batch(groups.rollout, groups.reward_N, np.repeat(np.arange(b), g), self.advantage)
        info = group_metrics(groups.reward_BxG())
        info["samples/generated"] = float(b * g)
        return batch, info

    def advantages(self, reward_N: np.ndarray, group_id_N: np.ndarray, injected_N: np.ndarray) -> np.ndarray:
        """The advantages of rows with these rewards, per group (e.g. after a
        KL penalty, golfjax/loops/schedule.py); GRPO batches inject nothing."""
        del injected_N
        return np.asarray(self.advantage(reward_N, np.asarray(group_id_N, np.int32), None))

    def with_sampler(self, sampler: Sampler) -> GroupSource:
        """The same source sampling with `sampler` (e.g. on the rollout worker's devices)."""
        return dataclasses.replace(self, sampler=sampler)


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """Held-out mean accuracy over k samples per problem, and pass@k.

    k is the sampler's group size (`eval.samples`); pass@k is the fraction of
    problems with at least one of its k samples correct. Problems are sampled
    `batch_size` at a time.
    """

    sampler: Sampler
    problems: Sequence[Problem]
    task: Task
    tokenizer: Tokenizer
    batch_size: int
    template_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __call__(self, params: Any, key: jax.Array) -> dict[str, float]:
        correct = []
        for start in range(0, len(self.problems), self.batch_size):
            chunk = list(self.problems[start : start + self.batch_size])
            prompts = encode_prompts(chunk, self.tokenizer, self.template_kwargs)
            groups = sample_groups(
                self.sampler, params, chunk, prompts, jax.random.fold_in(key, start), self.task,
                self.tokenizer,
            )
            correct.append(groups.reward_BxG() >= 1.0)
        correct_BxG = np.concatenate(correct, axis=0)
        k = correct_BxG.shape[1]
        return {
            "eval/accuracy": float(correct_BxG.mean()),
            f"eval/pass@{k}": float(correct_BxG.any(axis=1).mean()),
        }
