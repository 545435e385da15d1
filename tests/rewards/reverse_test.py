"""Tests for golfjax/rewards/reverse.py."""

import pytest

from golfjax.feedback import make_critic
from golfjax.rewards import make_task, reverse


def _texts(problems):
    return {p.meta["text"] for p in problems}


def test_rl_split_held_out_disjoint_and_large():
    task = reverse.ReverseTask(**reverse.RL)
    train, test = task.load("train"), task.load("test")
    assert len(test) == 200 and len(train) == reverse.RL["num_train"]
    assert len(_texts(test)) == 200 and len(_texts(train)) == len(train)
    assert not _texts(train) & _texts(test)
    assert all(reverse.is_held_out(t) for t in _texts(test))
    assert not any(reverse.is_held_out(t) for t in _texts(train))
    for p in list(train) + list(test):
        text = p.meta["text"]
        assert len(text) == 5 and set(text) <= set(reverse.ALPHABET)
        assert p.question == f"Reverse {text}" and p.answer == p.solution == text[::-1]
        assert task.score(p, p.solution) == 1.0
    assert [p.id for p in test] == list(range(200))
    assert reverse.RL["min_len"] == reverse.RL["max_len"] == 5


@pytest.mark.parametrize("kwargs", [reverse.BASE_PLAIN, reverse.BASE_REFINE,
                                    {"min_len": 5, "max_len": 5, "num_train": 20_000, "num_test": 0}])
def test_no_phase_trains_on_the_held_out_set(kwargs):
    # The held-out set depends on the string alone, so the problems drawn under
    # other kwargs (the cold start's, a larger RL train split) never include an
    # RL held-out string.
    held = _texts(reverse.ReverseTask(**reverse.RL).load("test"))
    assert not held & _texts(reverse.ReverseTask(**kwargs).load("train"))


def test_deterministic_and_splits_independent():
    a = reverse.ReverseTask(**reverse.RL, seed=1)
    assert a.load("train") == reverse.ReverseTask(**reverse.RL, seed=1).load("train")
    assert a.load("test") != reverse.ReverseTask(**reverse.RL, seed=2).load("test")
    # Growing one split leaves the other unchanged.
    bigger = reverse.ReverseTask(**{**reverse.RL, "num_train": 6000}, seed=1)
    assert bigger.load("test") == a.load("test")
    assert bigger.load("train")[:5000] == a.load("train")


@pytest.mark.parametrize("response, reward", [
    ("tbxqk", 1.0),
    (" tbxqk.\n", 1.0),
    ("The answer is tbxqk.", 1.0),
    ("the answer is: tbxqk", 1.0),
    ("The answer is kqxbt. No, the answer is tbxqk", 1.0),
    ("tbxq", 0.0),
    ("tbxqkk", 0.0),
    ("kqxbt", 0.0),
    ("TBXQK", 0.0),
    ("", 0.0),
])
def test_verifier(response, reward):
    task = reverse.ReverseTask(min_len=5, max_len=5, num_train=1, num_test=0)
    problem = reverse.Problem(id=0, question="Reverse kqxbt", answer="tbxqk")
    assert task.score(problem, response) == reward
    assert task.is_success(problem, response) == (reward == 1.0)


def test_reveal_critic_discloses_the_reversed_string():
    task = make_task("reverse", **reverse.RL)
    problem = task.load("test")[0]
    critic = make_critic(None, task)  # The task's default: reveal.
    wrong, right = problem.meta["text"], problem.solution
    critiques = critic.critique([problem, problem], [wrong, right],
                                [task.score(problem, wrong), task.score(problem, right)])
    assert critiques == [f"Incorrect; the reference answer is {problem.meta['text'][::-1]}.",
                         "Correct."]


@pytest.mark.parametrize("kwargs, match", [
    ({"min_len": 0}, "min_len"),
    ({"min_len": 5, "max_len": 4}, "min_len"),
    ({"max_len": 17}, "max_len"),
    ({"num_test": -1}, "num_train and num_test"),
    ({"min_len": 1, "max_len": 1, "num_test": 20}, "found only"),
    ({"min_len": 1, "max_len": 1, "num_train": 30, "num_test": 0}, "found only"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reverse.ReverseTask(**kwargs)


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split"):
        reverse.ReverseTask(**reverse.RL).load("validation")
