"""Critics: one natural-language critique per sampled response (GOLF step 2).

Critics are pluggable per task (docs/algorithms.md#golf-critics): an answer
critic that reveals the reference answer (`reveal`) or only says the attempt
is wrong (`simple`), a rule critic that lists a task's unmet constraints
(`rule`), and a model judge (judge.py). The registry (`CRITICS`,
`make_critic`) is in this package's `__init__`.

Every critic is batched, `critique(problems, responses, rewards) -> list[str]`
over N parallel rows, so a model judge can sample all its critiques at once. A
row whose reward is >= `success_reward` (1.0, the task's success) is a correct
attempt and gets `CORRECT`; refinement prompts only show failed attempts by
default, so only those critiques matter.
"""

from __future__ import annotations

import abc
from typing import Sequence

from golfjax.rewards.base import Problem, Task

CORRECT = "Correct."
TRY_AGAIN = "Incorrect, try again."


def check_rows(problems: Sequence[Problem], responses: Sequence[str],
               rewards: Sequence[float]) -> None:
    """Raises ValueError unless the three row lists have the same length."""
    if not len(problems) == len(responses) == len(rewards):
        raise ValueError(
            f"critique needs parallel rows: got {len(problems)} problems,"
            f" {len(responses)} responses and {len(rewards)} rewards")


class Critic(abc.ABC):
    """Writes a critique of each response (see the module docstring)."""

    success_reward: float = 1.0

    @abc.abstractmethod
    def critique(self, problems: Sequence[Problem], responses: Sequence[str],
                 rewards: Sequence[float]) -> list[str]:
        """One critique per row; `CORRECT` for rows with reward >= success_reward.

        Args:
          problems: the problem of each row (repeated G times for a group).
          responses: the decoded response texts.
          rewards: the task's reward of each response.
        """


class AnswerCritic(Critic):
    """The answer critic: `reveal` discloses the reference answer, `simple` does not.

    reveal: "Incorrect; the reference answer is X."  (X = `Problem.answer`)
    simple: "Incorrect, try again."
    """

    MODES = ("reveal", "simple")

    def __init__(self, mode: str = "reveal") -> None:
        if mode not in self.MODES:
            raise ValueError(f"AnswerCritic mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def critique(self, problems: Sequence[Problem], responses: Sequence[str],
                 rewards: Sequence[float]) -> list[str]:
        check_rows(problems, responses, rewards)
        out = []
        for problem, reward in zip(problems, rewards):
            if reward >= self.success_reward:
                out.append(CORRECT)
            elif self.mode == "reveal":
                out.append(f"Incorrect; the reference answer is {problem.answer}.")
            else:
                out.append(TRY_AGAIN)
        return out


class RuleCritic(Critic):
    """Lists the unmet constraints, e.g. "Incorrect: missing required character
    'x'; longer than 12 characters." (the task's `unmet_constraints` checker)."""

    def __init__(self, task: Task) -> None:
        if type(task).unmet_constraints is Task.unmet_constraints:
            raise ValueError(
                f"the 'rule' critic needs a task with a rule checker (unmet_constraints);"
                f" task {task.name!r} has none")
        self.task = task

    def critique(self, problems: Sequence[Problem], responses: Sequence[str],
                 rewards: Sequence[float]) -> list[str]:
        check_rows(problems, responses, rewards)
        out = []
        for problem, response, reward in zip(problems, responses, rewards):
            if reward >= self.success_reward:
                out.append(CORRECT)
                continue
            failures = self.task.unmet_constraints(problem, response)
            # A failed reward with no unmet rule (a partial reward of another
            # kind) still gets a critique rather than an empty string.
            out.append(f"Incorrect: {'; '.join(failures)}." if failures else TRY_AGAIN)
        return out
