"""Tests for golfjax/rewards/__init__.py (the task registry)."""

import pytest

from golfjax import rewards


def test_make_task():
    task = rewards.make_task("arith", num_train=3, num_test=1)
    assert isinstance(task, rewards.ArithTask) and len(task.load("train")) == 3
    assert set(rewards.TASKS) == {"arith", "constraints", "math", "reverse"}
    with pytest.raises(ValueError, match="unknown task 'chess'; expected one of arith"):
        rewards.make_task("chess")
