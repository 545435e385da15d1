"""Tests for golfjax/rewards/arith.py."""

import pytest

from golfjax.rewards import arith


def test_problems_answers_and_solutions():
    task = arith.ArithTask(min_digits=3, max_digits=3, ops="+-*", num_train=200, num_test=50)
    train, test = task.load("train"), task.load("test")
    assert len(train) == 200 and len(test) == 50
    assert [p.id for p in train] == list(range(200))
    assert not {p.question for p in train} & {p.question for p in test}
    for p in list(train) + list(test):
        a, op, b = p.meta["a"], p.meta["op"], p.meta["b"]
        assert 100 <= a <= 999 and 100 <= b <= 999
        assert p.question == f"What is {a}{op}{b}?"
        assert int(p.answer) == eval(f"{a}{op}{b}") >= 0  # Subtraction keeps a >= b.
        assert task.score(p, p.solution) == 1.0


def test_deterministic_and_test_split_stable():
    a = arith.ArithTask(num_train=20, num_test=10, seed=3)
    b = arith.ArithTask(num_train=40, num_test=10, seed=3)
    assert a.load("test") == b.load("test")
    assert arith.ArithTask(num_train=20, num_test=10, seed=3).load("train") == a.load("train")
    assert arith.ArithTask(num_train=20, num_test=10, seed=4).load("train") != a.load("train")


@pytest.mark.parametrize("response, expected", [
    ("The answer is 936.", "936"),
    ("the answer is: 1,036", "1036"),
    ("I think the answer is 12. No, the answer is 936", "936"),
    ("so \\boxed{936}", "936"),
    ("The answer is -5.", "-5"),
    ("936", None),
    ("The answer is unclear.", None),
])
def test_extract_answer(response, expected):
    assert arith.extract_answer(response) == expected


def test_score():
    task = arith.ArithTask(num_train=1, num_test=0)
    p = task.load("train")[0]
    assert task.score(p, f"The answer is {p.answer}.") == 1.0
    assert task.score(p, f"The answer is {int(p.answer) + 1}.") == 0.0
    assert task.score(p, p.answer) == 0.0  # No recognised format.
    assert task.is_success(p, p.solution)


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_digits"):
        arith.ArithTask(min_digits=3, max_digits=2)
    with pytest.raises(ValueError, match="ops"):
        arith.ArithTask(ops="/")
    with pytest.raises(ValueError, match="distinct problems"):
        arith.ArithTask(min_digits=1, max_digits=1, num_train=500, num_test=0)
    with pytest.raises(ValueError, match="carry must be one of"):
        arith.ArithTask(carry="all")
    with pytest.raises(ValueError, match="sums only"):
        arith.ArithTask(ops="+-", carry="none")
    with pytest.raises(ValueError, match="unknown split"):
        arith.ArithTask(num_train=1, num_test=1).load("valid")


def test_has_carry():
    assert not arith.has_carry(23, 45) and not arith.has_carry(0, 0) and not arith.has_carry(5, 4)
    assert arith.has_carry(7, 8) and arith.has_carry(15, 5) and arith.has_carry(150, 50)
    assert arith.has_carry(999, 1) and not arith.has_carry(1000, 999)


@pytest.mark.parametrize("carry, count", [("none", 55), ("some", 45)])
def test_carry_splits_the_one_digit_sums(carry, count):
    # Of the 100 one-digit sums, 55 have a + b <= 9 (no carry) and 45 carry.
    task = arith.ArithTask(min_digits=1, max_digits=1, carry=carry, num_train=count - 5, num_test=5)
    problems = list(task.load("train")) + list(task.load("test"))
    assert len({p.question for p in problems}) == count
    assert all((p.meta["a"] + p.meta["b"] >= 10) == (carry == "some") for p in problems)
    with pytest.raises(ValueError, match=f"carry='{carry}'"):
        arith.ArithTask(min_digits=1, max_digits=1, carry=carry, num_train=count + 1, num_test=0)


def test_the_golf_regime_splits_sums_by_carry():
    # The cold start's plain sums never carry; the RL sums always do; the
    # refinement batches' sums (for the copy) never carry and include longer ones.
    cold = arith.ArithTask(**arith.COLD_START).load("train")
    refine = arith.ArithTask(**arith.COLD_START_REFINE).load("train")
    rl_task = arith.ArithTask(**arith.RL)
    rl = list(rl_task.load("train")) + list(rl_task.load("test"))
    assert len(cold) == 55 and len(rl) == 45  # Every 1-digit sum, once.
    assert not any(arith.has_carry(p.meta["a"], p.meta["b"]) for p in list(cold) + list(refine))
    assert all(arith.has_carry(p.meta["a"], p.meta["b"]) for p in rl)
    assert max(max(p.meta["a"], p.meta["b"]) for p in refine) >= 100
    assert not {p.question for p in rl} & {p.question for p in list(cold) + list(refine)}
