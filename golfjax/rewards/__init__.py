"""Tasks: problems, verifiers and the critic each uses (see base.py).

`TASKS` maps a config's task name to its class; `make_task(name, **kwargs)`
builds one with the class's keyword arguments.
"""

from __future__ import annotations

from typing import Any

from golfjax.rewards.arith import ArithTask
from golfjax.rewards.base import Problem, Task
from golfjax.rewards.reverse import ReverseTask
from golfjax.rewards.constraints import ConstraintsTask
from golfjax.rewards.math import MathTask

TASKS: dict[str, type[Task]] = {
    "arith": ArithTask,
    "constraints": ConstraintsTask,
    "math": MathTask,
    "reverse": ReverseTask,
}


def make_task(name: str, **kwargs: Any) -> Task:
    """`TASKS[name](**kwargs)`, or a ValueError listing the known task names."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)


__all__ = ["Problem", "Task", "TASKS", "make_task", "ArithTask", "ConstraintsTask", "MathTask",
           "ReverseTask"]
