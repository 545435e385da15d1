"""The task interface: problems, verification and the critic a task uses.

Host-side only (plain Python, never inside jit). A task supplies:

- `load(split)`: its problems for "train" or "test" (held-out);
- `score(problem, response)`: the verifier's reward in [0, 1] for one
  response text (the ORIGINAL task's reward is also what refinements are
  scored against);
- `default_critic`: the name of the critic GOLF uses for it (see
  golfjax/feedback/critics.py), and `success_threshold`, the fraction of a
  group below which GOLF injects refinements (docs/algorithms.md#golf-injection:
  math 0.125, instruction following 0.25, chat 0.375).

A `Problem.question` is the user message content; chat templating is the
tokenizer's job, so the same problem renders correctly for any model.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Problem:
    """One prompt of a task.

    Attributes:
      id: unique within the task's split; stable across runs (data order and
        resume exactness rely on it).
      question: the user message shown to the policy.
      answer: the reference final answer the verifier checks against (and the
        `reveal` answer critic discloses).
      solution: a reference response for the supervised cold start ("" when
        the task has none).
      meta: task-specific data the verifier or critic needs (e.g. the
        constraints of a constraint task); JSON-serialisable.
    """

    id: int
    question: str
    answer: str
    solution: str = ""
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Task(abc.ABC):
    """A verifiable task: its problems, its reward and its critic."""

    name: str = ""
    default_critic: str = "reveal"
    success_threshold: float = 0.125

    @abc.abstractmethod
    def load(self, split: str) -> Sequence[Problem]:
        """The problems of `split` ("train" or "test"), in a fixed order."""

    @abc.abstractmethod
    def score(self, problem: Problem, response: str) -> float:
        """The verifier's reward in [0, 1] for `response` to `problem`."""

    def is_success(self, problem: Problem, response: str) -> bool:
        """Whether `response` fully solves `problem` (reward 1)."""
        return self.score(problem, response) >= 1.0

    def unmet_constraints(self, problem: Problem, response: str) -> list[str]:
        """The checks `response` fails, one short phrase each ([] when all hold).

        Only rule-checked tasks (e.g. `constraints`) implement it; the `rule`
        critic (golfjax/feedback/critics.py) turns the list into a critique.
        """
        raise NotImplementedError(
            f"task {self.name!r} has no rule checker, so the 'rule' critic cannot"
            " be used with it; use 'reveal', 'simple' or 'judge'"
        )
