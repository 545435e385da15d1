"""Tests for golfjax/rewards/constraints.py."""

import json

import pytest

from golfjax.rewards import constraints
from golfjax.rewards.base import Problem


def test_reference_solutions_satisfy_every_constraint():
    task = constraints.ConstraintsTask(num_constraints=5, num_train=300, num_test=30)
    assert task.default_critic == "rule" and task.success_threshold == 0.25
    for p in list(task.load("train")) + list(task.load("test")):
        assert len(p.meta["constraints"]) == 5
        assert p.meta["constraints"][0]["kind"] == "length"
        json.dumps(p.meta)  # JSON-serialisable.
        assert task.unmet_constraints(p, p.solution) == []
        assert task.score(p, "  " + p.solution + "\n") == 1.0
    questions = {p.question for p in task.load("train")}
    assert len(questions) == 300 and not questions & {p.question for p in task.load("test")}


def test_unmet_lists_each_violation():
    rules = [
        {"kind": "length", "min": 3, "max": 5},
        {"kind": "contains", "char": "x"},
        {"kind": "excludes", "char": "q"},
        {"kind": "order", "first": "a", "second": "b"},
        {"kind": "starts", "char": "a"},
        {"kind": "ends", "char": "z"},
    ]
    assert constraints.unmet(rules, "axbz") == []
    assert constraints.unmet(rules, "bqaqqq") == [
        "longer than 5 characters",
        "missing required character 'x'",
        "contains forbidden character 'q'",
        "'a' does not appear before 'b'",
        "does not start with 'a'",
        "does not end with 'z'",
    ]
    assert constraints.unmet(rules[:1], "ab") == ["shorter than 3 characters"]
    # "order" needs both characters.
    assert constraints.unmet(rules[3:4], "a") == ["'a' does not appear before 'b'"]
    with pytest.raises(ValueError, match="constraint 0 has unknown kind 'shape'"):
        constraints.unmet([{"kind": "shape"}], "a")


def test_score_and_question():
    task = constraints.ConstraintsTask(num_train=1, num_test=0)
    rules = [{"kind": "length", "min": 2, "max": 4}, {"kind": "contains", "char": "c"}]
    p = Problem(id=0, question="", answer="cc", meta={"constraints": rules})
    assert task.score(p, "abc") == 1.0
    assert task.score(p, "ab") == 0.0
    q = task.load("train")[0].question
    assert q.startswith("Write a string that: has ") and q.endswith(".")
    with pytest.raises(ValueError, match="problem 7 has no meta"):
        task.score(Problem(id=7, question="", answer=""), "a")
