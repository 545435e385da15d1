"""Tests for golfjax/rewards/math.py (math-verify rewards, JSONL records)."""

import json

import pytest

from golfjax.rewards import math as math_task


@pytest.fixture(scope="module")
def task():
    return math_task.MathTask(math_task.SAMPLE_PATH)


def test_sample_file_loads_all_formats(task):
    problems = task.load("train")
    assert len(problems) == 8
    answers = [p.answer for p in problems]
    assert answers == ["72", "15", "1550", "\\frac{3}{4}", "4", "5\\sqrt{2}", "180", "56"]
    assert problems[0].meta == {"source_id": "gsm-1"}
    assert "<<" not in problems[0].solution  # Calculator annotations removed.
    assert all(p.question.endswith(math_task.PROMPT_SUFFIX) for p in problems)
    # Every cold-start solution earns reward 1.
    assert [task.score(p, p.solution) for p in problems] == [1.0] * 8


def test_score_uses_last_boxed_and_equivalence(task):
    half = task.load("train")[3]  # 3/4
    assert task.score(half, "\\boxed{0.75}") == 1.0
    assert task.score(half, "It is \\boxed{3/4}.") == 1.0
    assert task.score(half, "\\boxed{3/4} no wait \\boxed{1/2}") == 0.0
    assert task.score(half, "3/4") == 0.0  # No \boxed{}.
    assert task.score(task.load("train")[2], "\\boxed{1,550}") == 1.0


@pytest.mark.parametrize("text, expected", [
    ("a \\boxed{\\frac{1}{2}} b", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{1} then \\boxed{2", "1"),  # Truncated last box.
    ("none", None),
])
def test_last_boxed(text, expected):
    assert math_task.last_boxed(text) == expected


@pytest.mark.parametrize("record, message", [
    ({"question": "q"}, "record 1 \\(line 2\\): missing field 'answer'"),
    ({"problem": "p"}, "record 1 \\(line 2\\): missing field 'solution'"),
    ({"problem": "p", "solution": "no box"}, "record 1 \\(line 2\\): field 'solution' has no"),
    ({"text": "t"}, "record 1 \\(line 2\\): missing field 'question'"),
    ({"question": "q", "answer": 3}, "record 1 \\(line 2\\): field 'answer' must be a non-empty string"),
    ({"question": "q", "answer": "steps ####  "}, "record 1 \\(line 2\\): field 'answer' has nothing after '####'"),
])
def test_malformed_records_name_file_index_and_field(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    good = {"question": "1+1?", "answer": "2"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl, " + message):
        math_task.MathTask(path)


def test_empty_file_and_missing_split(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        math_task.MathTask(path)
    with pytest.raises(ValueError, match="no 'test' split"):
        math_task.MathTask(math_task.SAMPLE_PATH).load("test")
