"""`constraints`: write a short string that satisfies several checkable rules.

A stand-in for instruction following with a rule critic that lists the unmet
constraints (docs/algorithms.md#golf-critics). Example question:

    Write a string that: has 4 to 9 characters; contains
    'c'; does not contain 'h'; has 'a' before 'e'; starts with 'b'.

The response is the string itself, surrounding whitespace stripped. Reward 1 iff
every constraint holds, else 0. Default critic `rule` (it lists the unmet
constraints); success threshold 0.25 (docs/algorithms.md#golf-injection:
instruction following).

Constraint kinds (stored in `Problem.meta["constraints"]`, JSON-serialisable):

- `{"kind": "length", "min": m, "max": n}`: m <= len <= n;
- `{"kind": "contains", "char": c}` / `{"kind": "excludes", "char": c}`;
- `{"kind": "order", "first": a, "second": b}`: both occur and the first `a`
  comes before the first `b`;
- `{"kind": "starts", "char": c}` / `{"kind": "ends", "char": c}`.

Generation guarantees satisfiability: a random target string is drawn first and
every constraint is one it satisfies; it is the reference solution for the cold
start. Difficulty knobs: `num_constraints`, the alphabet and the length range.
"""

from __future__ import annotations

import string
from typing import Any, Mapping, Sequence

import numpy as np

from golfjax.rewards.base import Problem, Task

Constraint = Mapping[str, Any]
KINDS = ("length", "contains", "excludes", "order", "starts", "ends")


def unmet(constraints: Sequence[Constraint], text: str) -> list[str]:
    """One phrase per constraint that `text` violates, in the given order.

    Raises:
      ValueError: a constraint of unknown kind (naming its position).
    """
    failures = []
    for i, c in enumerate(constraints):
        kind = c.get("kind")
        if kind == "length":
            if len(text) < c["min"]:
                failures.append(f"shorter than {c['min']} characters")
            elif len(text) > c["max"]:
                failures.append(f"longer than {c['max']} characters")
        elif kind == "contains":
            if c["char"] not in text:
                failures.append(f"missing required character '{c['char']}'")
        elif kind == "excludes":
            if c["char"] in text:
                failures.append(f"contains forbidden character '{c['char']}'")
        elif kind == "order":
            a, b = c["first"], c["second"]
            if a not in text or b not in text or text.index(a) > text.index(b):
                failures.append(f"'{a}' does not appear before '{b}'")
        elif kind == "starts":
            if not text.startswith(c["char"]):
                failures.append(f"does not start with '{c['char']}'")
        elif kind == "ends":
            if not text.endswith(c["char"]):
                failures.append(f"does not end with '{c['char']}'")
        else:
            raise ValueError(f"constraint {i} has unknown kind {kind!r}; expected one of {KINDS}")
    return failures


def describe(c: Constraint) -> str:
    """The constraint as the question states it."""
    kind = c["kind"]
    if kind == "length":
        return f"has {c['min']} to {c['max']} characters"
    if kind == "contains":
        return f"contains '{c['char']}'"
    if kind == "excludes":
        return f"does not contain '{c['char']}'"
    if kind == "order":
        return f"has '{c['first']}' before '{c['second']}'"
    if kind == "starts":
        return f"starts with '{c['char']}'"
    if kind == "ends":
        return f"ends with '{c['char']}'"
    raise ValueError(f"unknown constraint kind {kind!r}; expected one of {KINDS}")


def _draw_constraints(rng: np.random.Generator, target: str, alphabet: str,
                      num: int, min_len: int, max_len: int) -> list[dict[str, Any]]:
    """`num` distinct constraints, all satisfied by `target`."""
    present = sorted(set(target))
    absent = sorted(set(alphabet) - set(target))
    first_pos = {ch: target.index(ch) for ch in present}
    pool: list[dict[str, Any]] = [
        {"kind": "starts", "char": target[0]},
        {"kind": "ends", "char": target[-1]},
    ]
    pool += [{"kind": "contains", "char": ch} for ch in present]
    pool += [{"kind": "excludes", "char": ch} for ch in absent]
    pool += [{"kind": "order", "first": a, "second": b}
             for a in present for b in present if first_pos[a] < first_pos[b]]
    # The length rule always applies (it keeps answers short); the others are
    # a random subset, then sorted by kind so questions read consistently.
    lo = int(rng.integers(min_len, len(target) + 1))
    hi = int(rng.integers(len(target), max_len + 1))
    chosen = [pool[i] for i in rng.permutation(len(pool))[:max(num - 1, 0)]]
    chosen.sort(key=lambda c: KINDS.index(c["kind"]))
    return [{"kind": "length", "min": lo, "max": hi}] + chosen


class ConstraintsTask(Task):
    """Random constraint sets over a small alphabet (see the module docstring).

    Args:
      num_constraints: rules per problem, the length rule included (>= 1).
      alphabet: the characters targets are drawn from.
      min_length, max_length: the target length range (and the bounds of the
        length rule).
      num_train, num_test, seed: split sizes; problems are a deterministic
        function of all arguments, and the two splits have distinct questions.
    """

    name = "constraints"
    default_critic = "rule"
    success_threshold = 0.25

    def __init__(self, *, num_constraints: int = 4,
                 alphabet: str = string.ascii_lowercase[:10],
                 min_length: int = 3, max_length: int = 10,
                 num_train: int = 2000, num_test: int = 200, seed: int = 0) -> None:
        if num_constraints < 1:
            raise ValueError(f"constraints: num_constraints must be >= 1, got {num_constraints}")
        if not 1 <= min_length <= max_length:
            raise ValueError(
                f"constraints: need 1 <= min_length <= max_length, got {min_length}, {max_length}")
        if len(set(alphabet)) < 2 or any(ch.isspace() for ch in alphabet):
            raise ValueError(
                f"constraints: alphabet needs >= 2 distinct non-space characters, got {alphabet!r}")
        self.num_constraints, self.alphabet = num_constraints, "".join(sorted(set(alphabet)))
        self.min_length, self.max_length = min_length, max_length
        self.num_train, self.num_test, self.seed = num_train, num_test, seed
        self._splits = self._generate()

    def _generate(self) -> dict[str, list[Problem]]:
        rng = np.random.default_rng([self.seed, self.num_constraints])
        wanted = self.num_train + self.num_test
        seen: set[str] = set()
        problems: list[Problem] = []
        for _ in range(50 * wanted + 1000):
            if len(problems) == wanted:
                break
            length = int(rng.integers(self.min_length, self.max_length + 1))
            target = "".join(rng.choice(list(self.alphabet), size=length))
            constraints = _draw_constraints(rng, target, self.alphabet, self.num_constraints,
                                            self.min_length, self.max_length)
            question = ("Write a string that: "
                        + "; ".join(describe(c) for c in constraints) + ".")
            if question in seen:
                continue
            seen.add(question)
            problems.append(Problem(id=0, question=question, answer=target,
                                    solution=target, meta={"constraints": constraints}))
        if len(problems) < wanted:
            raise ValueError(
                f"constraints: found only {len(problems)} distinct problems; asked for"
                f" num_train + num_test = {wanted}")
        # Test first, so growing num_train keeps the test split unchanged.
        test, train = problems[:self.num_test], problems[self.num_test:]
        renumber = lambda ps: [Problem(id=i, question=p.question, answer=p.answer,  # noqa: E731
                                       solution=p.solution, meta=p.meta)
                               for i, p in enumerate(ps)]
        return {"train": renumber(train), "test": renumber(test)}

    def load(self, split: str) -> Sequence[Problem]:
        if split not in self._splits:
            raise ValueError(
                f"constraints: unknown split {split!r}; expected 'train' or 'test'")
        return self._splits[split]

    def unmet_constraints(self, problem: Problem, response: str) -> list[str]:
        if "constraints" not in problem.meta:
            raise ValueError(
                f"constraints: problem {problem.id} has no meta['constraints']")
        return unmet(problem.meta["constraints"], response.strip())

    def score(self, problem: Problem, response: str) -> float:
        return float(not self.unmet_constraints(problem, response))
