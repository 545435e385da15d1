"""Tests for experiments/configs/common.py's task settings."""

import pytest

from experiments.configs import golf as golf_config
from golfjax import feedback
from golfjax.data import sft_examples
from golfjax.data.char_tokenizer import make_task_tokenizer
from golfjax.feedback import refinement
from golfjax.rewards import arith


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_task_tokenizer(tmp_path_factory.mktemp("tok"))


def _bucket(length, buckets):
    return next(b for b in buckets if b >= length)


def test_arith_refinement_prompts_fit_the_112_bucket(tok):
    """golf.py:arith pads its refinement prompts to 112, not 128: every one the
    regime can build (GOLF's, from any failed responses, and the cold start's)
    fits, and none lost its attempt to the token budget."""
    c = golf_config.get_config("arith")
    buckets = c.sampling.prompt_buckets
    template = refinement.TEMPLATES[c.golf.template]
    budget = c.golf.max_refinement_prompt_tokens
    g = c.sampling.group_size

    task = arith.ArithTask(**c.task.kwargs)
    problems = task.load("train") + task.load("test")
    critic = feedback.make_critic(c.golf.critic or None, task)
    # The longest failed responses the sampler can return: max_new_tokens
    # characters, one token each for the character-level tokenizer.
    responses = ["The answer is 1234567"[: c.sampling.max_new_tokens]] * (len(problems) * g)
    rows = [p for p in problems for _ in range(g)]
    prompts = refinement.build_refinement_prompts(
        problems, responses, [0.0] * len(rows), critic.critique(rows, responses, [0.0] * len(rows)), tok,
        group_size=g, max_prompt_tokens=budget, template=template, on_overflow="flag")
    assert all(p.num_attempts == 1 for p in prompts)
    golf_longest = max(len(p.tokens) for p in prompts)

    refine_task = arith.ArithTask(**{**c.task.kwargs, **c.cold_start.task_kwargs,
                                     **c.cold_start.refine_task_kwargs})
    examples = sft_examples.make_cold_start_examples(
        refine_task, refine_task.load("train"), tok, critic=feedback.make_critic(None, refine_task),
        refine_fraction=1.0, max_prompt_tokens=budget, template=template, seed=0)
    cold_longest = max(len(e.prompt_tokens) for e in examples)

    assert 100 < cold_longest <= 112 and 90 < golf_longest <= 112
    assert _bucket(cold_longest, buckets) == _bucket(golf_longest, buckets) == 112
