"""Tests for golfjax/feedback/judge.py (the model judge, with a fake generate_fn)."""

import pytest

from golfjax import feedback
from golfjax.data.char_tokenizer import make_task_tokenizer
from golfjax.feedback import judge
from golfjax.rewards import arith
from golfjax.rewards.base import Problem

P = Problem(id=3, question="What is 2+2?", answer="4")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_task_tokenizer(tmp_path_factory.mktemp("tok"))


class FakeModel:
    """Records the prompts it gets and answers from a list."""

    def __init__(self, tok, outputs):
        self.tok, self.outputs, self.prompts = tok, outputs, []

    def __call__(self, prompts):
        self.prompts += prompts
        return self.outputs[:len(prompts)]


@pytest.mark.parametrize("output, expected", [
    ("Critique: 2+2 is 4, not 5.\nVerdict: incorrect", ("2+2 is 4, not 5.", "incorrect")),
    ("<think>Verdict: correct</think>**Critique:** off by one. **Verdict:** Incorrect",
     ("off by one.", "incorrect")),
    ("Critique: fine\nVerdict: [correct]", ("fine", "correct")),
    ("The answer is wrong.", None),
    ("Critique:\nVerdict: incorrect", None),  # Empty critique.
    ("Critique: truncated output with no verdict", None),
])
def test_parse_judgement(output, expected):
    assert judge.parse_judgement(output) == expected


def test_judge_critiques_failed_rows_in_one_call(tok):
    fake = FakeModel(tok, ["Critique: 2+2 is 4.\nVerdict: incorrect"] * 2)
    critic = feedback.make_critic("judge", arith.ArithTask(num_train=1, num_test=0),
                                  generate_fn=fake, tokenizer=tok)
    out = critic.critique([P] * 3, ["The answer is 5.<|end|>", "The answer is 4.", "5"],
                          [0.0, 1.0, 0.0])
    assert out == ["2+2 is 4.", "Correct.", "2+2 is 4."]
    assert len(fake.prompts) == 2  # Only the failed rows, in one batch.
    text = tok.decode(fake.prompts[0], skip_special_tokens=False)
    assert text.startswith("<|user|>You are checking") and text.endswith("<|end|><|assistant|>")
    assert "Reference answer: 4" in text and "The answer is 5.\n" in text
    assert text.count("<|end|>") == 1  # The response's control string was removed.


def test_parse_error_raises_with_row_or_falls_back(tok):
    rows = ([P] * 3, ["a", "b", "c"], [1.0, 0.0, 0.0])
    bad = FakeModel(tok, ["Critique: ok\nVerdict: incorrect", "I refuse."])
    with pytest.raises(judge.JudgeParseError, match="row 2 does not parse.*'I refuse.'"):
        judge.ModelJudge(bad, tok).critique(*rows)
    lenient = judge.ModelJudge(bad, tok, on_parse_error="fallback")
    assert lenient.critique(*rows) == ["Correct.", "ok", judge.FALLBACK_CRITIQUE]
    assert lenient.num_parse_errors == 1
    with pytest.raises(ValueError, match="on_parse_error"):
        judge.ModelJudge(bad, tok, on_parse_error="ignore")


def test_long_response_keeps_its_end_within_budget(tok):
    fake = FakeModel(tok, ["Critique: x\nVerdict: incorrect"])
    critic = judge.ModelJudge(fake, tok, max_prompt_tokens=400)
    critic.critique([P], ["blah " * 200 + "The answer is 5."], [0.0])
    assert len(fake.prompts[0]) <= 400
    text = tok.decode(fake.prompts[0])
    assert "[...]" in text and "The answer is 5." in text
