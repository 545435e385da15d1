"""`arith`: multi-digit integer arithmetic, the built-in sparse-reward task.

Problems read "What is 347+589?"; the reference answer is "936" and the
reference solution, used by the supervised cold start, is "The answer is 936."
(short on purpose: the model is tiny, character-level and runs on CPU).

Verifier. The final answer is the integer after the LAST "answer is"
(case-insensitive; commas between digits and a trailing period allowed), or,
when that phrase is absent, the content of the last `\\boxed{...}`. A response
with neither scores 0; otherwise it scores 1 iff the integer equals the answer.

Difficulty knobs: `min_digits`/`max_digits` (digits per operand, each
operand's count drawn uniformly), `ops` ("+", "-", "*"; subtraction keeps the
larger operand first so answers are non-negative) and, for sums, `carry`
("none": no column carries, e.g. 23+45; "some": at least one does, e.g. 7+8;
"any": either), the classic step in difficulty of column addition.

Intended regime, where GOLF should shine (docs/algorithms.md#golf), split by the
`carry` knob. The supervised cold start teaches two things: the answer format
on easy problems (`COLD_START`: the 55 one-digit sums that do not carry) and
the use of feedback (`COLD_START_REFINE`: refinement-format examples, see
golfjax/data/sft_examples.py, over carry-free sums of 1-3 digits, most of whose
answers the model cannot compute and so must copy from the `reveal` critique). RL
then runs on the 45 one-digit sums that carry (`RL`: 35 to train on, 10 held
out), which the cold-started model gets wrong: most groups are all-fail and
scalar-reward RL has little signal, while the SAME policy, shown the revealed
answer, can write it, and those verified refinements are injected into the
all-fail groups. docs/results.md#golf-vs-grpo measures both phases. The class
defaults (3-digit sums) are harder still.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from golfjax.rewards.base import Problem, Task

OPS = ("+", "-", "*")
CARRY = ("any", "none", "some")

# Keyword arguments of the phases of the intended regime (module docstring).
COLD_START: dict[str, Any] = {
    "min_digits": 1, "max_digits": 1, "ops": "+", "carry": "none", "num_train": 55, "num_test": 0}
COLD_START_REFINE: dict[str, Any] = {
    "min_digits": 1, "max_digits": 3, "ops": "+", "carry": "none", "num_train": 3000, "num_test": 0}
RL: dict[str, Any] = {
    "min_digits": 1, "max_digits": 1, "ops": "+", "carry": "some", "num_train": 35, "num_test": 10}

_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*(-?\d(?:,?\d)*)", re.IGNORECASE)
_BOXED_INT = re.compile(r"\\boxed\{\s*(-?\d(?:,?\d)*)\s*\}")


def extract_answer(response: str) -> str | None:
    """The final integer of `response` as a string (commas removed), or None.

    See the module docstring for the accepted formats.
    """
    for pattern in (_ANSWER_IS, _BOXED_INT):
        matches = pattern.findall(response)
        if matches:
            return matches[-1].replace(",", "")
    return None


def format_solution(answer: str) -> str:
    """The reference response for `answer` (the cold start's target)."""
    return f"The answer is {answer}."


def _draw_operand(rng: np.random.Generator, digits: int) -> int:
    # A d-digit number; "1-digit" includes 0.
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return int(rng.integers(low, 10 ** digits))


def has_carry(a: int, b: int) -> bool:
    """Whether the column addition of a + b (both >= 0) carries in any column."""
    while a or b:
        # The first carrying column has no carry coming in: its digits alone decide.
        if a % 10 + b % 10 >= 10:
            return True
        a, b = a // 10, b // 10
    return False


def _compute(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


class ArithTask(Task):
    """Integer arithmetic with a difficulty knob (see the module docstring).

    Args:
      min_digits, max_digits: digits per operand, inclusive bounds, 1 <= min <= max.
      ops: the operations to draw from uniformly, a string over "+-*".
      carry: "any", "none" (no column of a sum carries) or "some" (one at least);
        "none" and "some" need ops "+".
      num_train, num_test: problems per split; the splits are disjoint.
      seed: the problems are a deterministic function of all arguments.

    Raises:
      ValueError: bad bounds or ops, or fewer distinct problems exist than asked.
    """

    name = "arith"
    default_critic = "reveal"
    success_threshold = 0.125

    def __init__(self, *, min_digits: int = 3, max_digits: int = 3,
                 ops: str | Sequence[str] = "+", carry: str = "any",
                 num_train: int = 2000, num_test: int = 200, seed: int = 0) -> None:
        if not 1 <= min_digits <= max_digits:
            raise ValueError(
                f"arith: need 1 <= min_digits <= max_digits, got {min_digits},"
                f" {max_digits}")
        ops = tuple(ops)
        if not ops or any(op not in OPS for op in ops):
            raise ValueError(f"arith: ops must be a non-empty subset of {OPS}, got {ops}")
        if carry not in CARRY:
            raise ValueError(f"arith: carry must be one of {CARRY}, got {carry!r}")
        if carry != "any" and ops != ("+",):
            raise ValueError(f"arith: carry={carry!r} is defined for sums only (ops '+'), got ops {ops}")
        if num_train < 0 or num_test < 0:
            raise ValueError(
                f"arith: num_train and num_test must be >= 0, got {num_train}, {num_test}")
        self.min_digits, self.max_digits, self.ops = min_digits, max_digits, ops
        self.carry = carry
        self.num_train, self.num_test, self.seed = num_train, num_test, seed
        self._splits = self._generate()

    def _generate(self) -> dict[str, list[Problem]]:
        rng = np.random.default_rng([self.seed, self.min_digits, self.max_digits])
        wanted = self.num_train + self.num_test
        seen: set[tuple[int, str, int]] = set()
        triples: list[tuple[int, str, int]] = []
        # Rejection sampling of distinct problems; a budget of draws turns an
        # impossible request (e.g. 500 distinct 1-digit sums) into an error.
        for _ in range(50 * wanted + 1000):
            if len(triples) == wanted:
                break
            op = self.ops[int(rng.integers(len(self.ops)))]
            da, db = rng.integers(self.min_digits, self.max_digits + 1, size=2)
            a, b = _draw_operand(rng, int(da)), _draw_operand(rng, int(db))
            if op == "-" and b > a:
                a, b = b, a
            if self.carry != "any" and has_carry(a, b) != (self.carry == "some"):
                continue
            if (a, op, b) not in seen:
                seen.add((a, op, b))
                triples.append((a, op, b))
        if len(triples) < wanted:
            raise ValueError(
                f"arith: found only {len(triples)} distinct problems with"
                f" {self.min_digits}-{self.max_digits} digits, ops {self.ops} and"
                f" carry={self.carry!r};"
                f" asked for num_train + num_test = {wanted}")
        # Test problems are drawn first so that growing num_train keeps the
        # test split unchanged.
        test, train = triples[:self.num_test], triples[self.num_test:]
        return {"train": self._problems(train), "test": self._problems(test)}

    @staticmethod
    def _problems(triples: list[tuple[int, str, int]]) -> list[Problem]:
        problems = []
        for i, (a, op, b) in enumerate(triples):
            answer = str(_compute(a, op, b))
            problems.append(Problem(
                id=i, question=f"What is {a}{op}{b}?", answer=answer,
                solution=format_solution(answer), meta={"a": a, "op": op, "b": b}))
        return problems

    def load(self, split: str) -> Sequence[Problem]:
        if split not in self._splits:
            raise ValueError(f"arith: unknown split {split!r}; expected 'train' or 'test'")
        return self._splits[split]

    def score(self, problem: Problem, response: str) -> float:
        return float(extract_answer(response) == problem.answer)
