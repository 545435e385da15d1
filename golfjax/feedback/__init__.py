"""Host-side GOLF feedback: critics, refinement prompts and injection.

`CRITICS` maps a config's critic name to a factory `(task, **kwargs) -> Critic`;
`make_critic(name, task, **kwargs)` builds one (`name` None or "" takes the
task's `default_critic`). The `judge` critic needs `generate_fn` and `tokenizer`
keyword arguments (see judge.py).
"""

from __future__ import annotations

from typing import Any, Callable

from golfjax.feedback.critics import AnswerCritic, Critic, RuleCritic
from golfjax.feedback.judge import JudgeParseError, ModelJudge
from golfjax.rewards.base import Task

CRITICS: dict[str, Callable[..., Critic]] = {
    "reveal": lambda task: AnswerCritic("reveal"),
    "simple": lambda task: AnswerCritic("simple"),
    "rule": lambda task: RuleCritic(task),
    "judge": lambda task, **kwargs: ModelJudge(**kwargs),
}


def make_critic(name: str | None, task: Task, **kwargs: Any) -> Critic:
    """The critic `name` for `task` (None or "": `task.default_critic`).

    Raises:
      ValueError: unknown name, keyword arguments for a critic that takes none, or
        a `rule` critic for a task without a rule checker.
    """
    name = name or task.default_critic
    if name not in CRITICS:
        raise ValueError(f"unknown critic {name!r}; expected one of {', '.join(sorted(CRITICS))}")
    if kwargs and name != "judge":
        raise ValueError(f"critic {name!r} takes no arguments, got {sorted(kwargs)}")
    return CRITICS[name](task, **kwargs)


__all__ = ["AnswerCritic", "CRITICS", "Critic", "JudgeParseError", "ModelJudge",
           "RuleCritic", "make_critic"]
