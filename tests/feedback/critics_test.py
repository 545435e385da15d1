"""Tests for golfjax/feedback/critics.py and the registry in golfjax/feedback/__init__.py."""

import pytest

from golfjax import feedback
from golfjax.feedback import critics
from golfjax.rewards import arith, constraints
from golfjax.rewards.base import Problem

P = Problem(id=0, question="What is 2+2?", answer="4")


def test_answer_critic_reveal_and_simple():
    rows = ([P, P], ["The answer is 5.", "The answer is 4."], [0.0, 1.0])
    assert critics.AnswerCritic("reveal").critique(*rows) == [
        "Incorrect; the reference answer is 4.", "Correct."]
    assert critics.AnswerCritic("simple").critique(*rows) == ["Incorrect, try again.", "Correct."]
    with pytest.raises(ValueError, match="mode"):
        critics.AnswerCritic("hint")
    with pytest.raises(ValueError, match="1 problems, 2 responses and 2 rewards"):
        critics.AnswerCritic().critique([P], ["a", "b"], [0.0, 0.0])


def test_rule_critic_lists_unmet_constraints():
    task = constraints.ConstraintsTask(num_train=1, num_test=0)
    rules = [{"kind": "length", "min": 2, "max": 4}, {"kind": "contains", "char": "x"}]
    p = Problem(id=0, question="", answer="xx", meta={"constraints": rules})
    critic = feedback.make_critic(None, task)  # The task's default: rule.
    assert isinstance(critic, critics.RuleCritic)
    responses = ["abcdef", "ax", "zz"]
    rewards = [task.score(p, r) for r in responses]
    assert critic.critique([p] * 3, responses, rewards) == [
        "Incorrect: longer than 4 characters; missing required character 'x'.",
        "Correct.",
        "Incorrect: missing required character 'x'.",
    ]


def test_make_critic():
    task = arith.ArithTask(num_train=1, num_test=0)
    assert feedback.make_critic(None, task).mode == "reveal"
    assert feedback.make_critic("", task).mode == "reveal"
    assert feedback.make_critic("simple", task).mode == "simple"
    with pytest.raises(ValueError, match="needs a task with a rule checker.*'arith'"):
        feedback.make_critic("rule", task)
    with pytest.raises(ValueError, match="unknown critic 'oracle'"):
        feedback.make_critic("oracle", task)
    with pytest.raises(ValueError, match="takes no arguments"):
        feedback.make_critic("reveal", task, tokenizer=None)
