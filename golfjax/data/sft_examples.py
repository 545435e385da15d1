"""Supervised cold-start examples: (prompt ids, response ids) from reference solutions.

A built-in task's model is trained from scratch, so before RL a supervised pass on
`Problem.solution` teaches it the answer format. With `refine_fraction > 0`, some
examples are refinement prompts (golfjax/feedback/refinement.py) built from
synthetic failed attempts and their critiques, with the reference solution as the
target, so that the model can use feedback before RL starts (for `arith` with
the `reveal` critic: copy the revealed answer), which is what lets GOLF's
refinements succeed in all-fail groups from the first step. It learns that only
from problems it cannot answer without the feedback (the config's
`cold_start.refine_task_kwargs`; docs/results.md, the cold-start probe).

A synthetic failed attempt is another problem's reference solution that the task
scores as wrong for this problem; it is generic across tasks and has the right
format, as a real early-RL attempt would.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from golfjax.feedback.critics import Critic
from golfjax.feedback.refinement import (DEFAULT_TEMPLATE, Attempt, RefinementTemplate,
                                         build_refinement_prompt)
from golfjax.rewards.base import Problem, Task
from golfjax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class SFTExample:
    """Prompt ids (chat template, generation prompt) and response ids ending in eos;
    the loss is on the response ids only."""

    prompt_tokens: list[int]
    response_tokens: list[int]


def encode_response(tokenizer: Tokenizer, text: str) -> list[int]:
    """`text`'s ids followed by eos, the token that ends a sampled response."""
    if tokenizer.eos_id is None:
        raise ValueError(f"tokenizer {tokenizer.path} has no eos; a response cannot end")
    return tokenizer.encode(text) + [tokenizer.eos_id]


def make_sft_example(problem: Problem, tokenizer: Tokenizer, *,
                     template_kwargs: Mapping[str, Any] | None = None) -> SFTExample:
    """The plain example: the rollout prompt of `problem` -> its reference solution."""
    if not problem.solution:
        raise ValueError(f"problem {problem.id} has no reference solution for the cold start")
    return SFTExample(tokenizer.encode_prompt(problem.question, template_kwargs),
                      encode_response(tokenizer, problem.solution))


def make_cold_start_examples(
        task: Task,
        problems: Sequence[Problem],
        tokenizer: Tokenizer,
        *,
        critic: Critic | None = None,
        refine_fraction: float = 0.0,
        max_attempts: int = 2,
        max_prompt_tokens: int = 512,
        template: RefinementTemplate = DEFAULT_TEMPLATE,
        template_kwargs: Mapping[str, Any] | None = None,
        seed: int = 0,
) -> list[SFTExample]:
    """One example per problem; a `refine_fraction` of them in refinement format.

    Args:
      task: scores synthetic attempts (only wrong ones are used).
      problems: the cold-start problems (e.g. the easy split), each with a solution.
      tokenizer: the policy's tokenizer.
      critic: writes the synthetic attempts' critiques; required if
        refine_fraction > 0 (use the critic the RL run will use).
      refine_fraction: the share of refinement-format examples, in [0, 1].
      max_attempts: synthetic failed attempts per refinement example (1 to this).
      max_prompt_tokens, template, template_kwargs: as for the RL refinement
        prompts, so the cold start sees the prompts RL will produce.
      seed: which problems become refinement examples and their attempts.
    """
    if not 0.0 <= refine_fraction <= 1.0:
        raise ValueError(f"refine_fraction must be in [0, 1], got {refine_fraction}")
    if refine_fraction > 0 and critic is None:
        raise ValueError("refine_fraction > 0 needs a critic for the synthetic attempts")
    if refine_fraction > 0 and len(problems) < 2:
        raise ValueError("refinement examples need >= 2 problems (attempts are borrowed)")
    rng = np.random.default_rng(seed)
    examples = []
    for problem in problems:
        plain = make_sft_example(problem, tokenizer, template_kwargs=template_kwargs)
        if rng.random() >= refine_fraction:
            examples.append(plain)
            continue
        responses = []
        for _ in range(int(rng.integers(1, max_attempts + 1))):
            other = problems[int(rng.integers(len(problems)))]
            if not task.is_success(problem, other.solution):
                responses.append(other.solution)
        if not responses:  # Every borrowed attempt happened to be right.
            examples.append(plain)
            continue
        rewards = [task.score(problem, r) for r in responses]
        critiques = critic.critique([problem] * len(responses), responses, rewards)
        attempts = [Attempt(r, w, c) for r, w, c in zip(responses, rewards, critiques)]
        refined = build_refinement_prompt(
            problem, attempts, tokenizer, max_prompt_tokens=max_prompt_tokens,
            template=template, template_kwargs=template_kwargs)
        examples.append(SFTExample(refined.tokens, plain.response_tokens))
    return examples
