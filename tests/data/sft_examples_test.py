"""Tests for golfjax/data/sft_examples.py."""

import pytest

from golfjax import feedback
from golfjax.data import sft_examples
from golfjax.data.char_tokenizer import make_task_tokenizer
from golfjax.feedback.refinement import COMPACT_TEMPLATE
from golfjax.rewards import arith
from golfjax.rewards.base import Problem


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_task_tokenizer(tmp_path_factory.mktemp("tok"))


def test_plain_examples(tok):
    task = arith.ArithTask(**{**arith.COLD_START, "num_train": 5})
    examples = sft_examples.make_cold_start_examples(task, task.load("train"), tok)
    p = task.load("train")[0]
    assert tok.decode(examples[0].prompt_tokens, skip_special_tokens=False) == (
        f"<|user|>{p.question}<|end|><|assistant|>")
    assert examples[0].response_tokens == tok.encode(p.solution) + [tok.eos_id]


def test_refinement_examples_reveal_the_answer(tok):
    task = arith.ArithTask(**{**arith.COLD_START, "num_train": 50})
    critic = feedback.make_critic(None, task)
    examples = sft_examples.make_cold_start_examples(
        task, task.load("train"), tok, critic=critic, refine_fraction=0.5,
        template=COMPACT_TEMPLATE, max_prompt_tokens=256, seed=1)
    refined = [(e, p) for e, p in zip(examples, task.load("train"))
               if "\nAttempts:\n" in tok.decode(e.prompt_tokens)]
    assert 10 <= len(refined) <= 40
    for e, p in refined:
        text = tok.decode(e.prompt_tokens)
        assert f"the reference answer is {p.answer}." in text and len(e.prompt_tokens) <= 256
        assert tok.decode(e.response_tokens) == p.solution
    with pytest.raises(ValueError, match="needs a critic"):
        sft_examples.make_cold_start_examples(task, task.load("train"), tok, refine_fraction=0.5)


def test_refinement_example_without_a_wrong_attempt_falls_back_to_plain(tok):
    # Every problem has the same answer, so no borrowed attempt is ever wrong:
    # a refinement prompt would show no attempts, so the plain example is used.
    task = arith.ArithTask(min_digits=1, max_digits=1, num_train=0, num_test=0)
    same = [Problem(id=f"p{i}", question=f"What is {i}+{9 - i}?", answer="9",
                    solution=arith.format_solution("9")) for i in range(6)]
    critic = feedback.make_critic(None, task)
    examples = sft_examples.make_cold_start_examples(
        task, same, tok, critic=critic, refine_fraction=1.0,
        template=COMPACT_TEMPLATE, seed=0)
    assert examples == [sft_examples.make_sft_example(p, tok) for p in same]
