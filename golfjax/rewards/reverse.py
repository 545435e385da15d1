"""`reverse`: write a string of letters backwards, a skill that transfers across problems.

Problems read "Reverse kqxbt"; the reference answer and solution are "tbxqk".

Why a task of its own (docs/algorithms.md, GOLF; issue 19): RL is measured on
held-out problems from the same distribution as the training ones, never trained
on, at least 200 of them, where what is learnt on the training problems (how to
walk a string backwards) transfers to the held-out ones. `arith`'s regime
held out 10 entries of the one-digit addition table, where nothing transfers.

Verifier. The final answer is the text after the LAST "answer is"
(case-insensitive) when the phrase is present, otherwise the whole response;
surrounding whitespace and one trailing period are dropped. The response scores
1 iff that equals the answer exactly, else 0.

Held-out split. Whether a string is held out depends on the string alone: the
CRC-32 of its text, modulo 1000, below `HELD_OUT_PER_MILLE`. So every instance
of the task, whatever its length range (the cold start's 1-9 letters, the RL's
5), agrees on which problems are held out, and no phase can train
on one by drawing it under other kwargs. "test" holds `num_test` held-out
strings, "train" `num_train` others, each drawn without repeats from its own
seeded stream (so growing one split never changes the other).

Difficulty knob: `min_len`/`max_len`, the string length (uniform), over the
lowercase letters.

The regime (experiments/configs/reverse.py; the base policy is made by
tools/make_base_policy.py): a supervised cold start on short strings
(`BASE_PLAIN`: the format and the easy cases) and the copy of a revealed answer
in refinement format on strings of 1-9 letters (`BASE_REFINE`, drawn from the
training side of the split only: a copy learnt on one length range does not
carry to another, and short copies are learnt first); then RL on strings of 5
letters (`RL`), the longest the base policy was taught plainly and the one it
gets right least often (the cold start trained on other 5-letter strings, never
on a held-out one). GOLF's `reveal` critique shows the reversed string; a
refinement that copies it is injected into a failing group. Strings longer
than any taught (e.g. 6-7 letters) make a poor RL task for this base policy:
it gets none right, and a longer walk is not learnt from a few hundred
injected refinements.
"""

from __future__ import annotations

import re
import string
import zlib
from typing import Any, Sequence

import numpy as np

from golfjax.rewards.base import Problem, Task

ALPHABET = string.ascii_lowercase
MAX_LEN = 16
# Share of all strings (per mille) that are held out, whatever the task's kwargs.
HELD_OUT_PER_MILLE = 100

# Keyword arguments of the regime's phases (module docstring).
RL: dict[str, Any] = {"min_len": 5, "max_len": 5, "num_train": 5000, "num_test": 200}
BASE_PLAIN: dict[str, Any] = {"min_len": 1, "max_len": 5, "num_train": 5000, "num_test": 0}
BASE_REFINE: dict[str, Any] = {"min_len": 1, "max_len": 9, "num_train": 5000, "num_test": 0}
# The sparse-reward regime: one letter longer than any the base policy was
# taught plainly (module docstring).
SPARSE: dict[str, Any] = {"min_len": 6, "max_len": 6, "num_train": 5000, "num_test": 200}

_ANSWER_IS = re.compile(r"answer\s+is\s*:?", re.IGNORECASE)


def question(text: str) -> str:
    """The user message asking to reverse `text`."""
    return f"Reverse {text}"


def extract_answer(response: str) -> str:
    """The final answer of `response` (see the module docstring)."""
    parts = _ANSWER_IS.split(response)
    answer = parts[-1].strip()
    return answer[:-1].rstrip() if answer.endswith(".") else answer


def is_held_out(text: str) -> bool:
    """Whether `text` belongs to the held-out set (the same for every instance)."""
    return zlib.crc32(text.encode()) % 1000 < HELD_OUT_PER_MILLE


class ReverseTask(Task):
    """Reverse a string of lowercase letters (module docstring).

    Args:
      min_len, max_len: string length bounds, 1 <= min_len <= max_len <= MAX_LEN.
      num_train, num_test: problems per split (distinct strings; disjoint).
      seed: the problems are a deterministic function of all arguments.

    Raises:
      ValueError: bad bounds, or fewer distinct strings exist than asked.
    """

    name = "reverse"
    default_critic = "reveal"
    success_threshold = 0.125

    def __init__(self, *, min_len: int = 6, max_len: int = 7, num_train: int = 5000,
                 num_test: int = 200, seed: int = 0) -> None:
        if not 1 <= min_len <= max_len <= MAX_LEN:
            raise ValueError(
                f"reverse: need 1 <= min_len <= max_len <= {MAX_LEN}, got min_len={min_len},"
                f" max_len={max_len}")
        if num_train < 0 or num_test < 0:
            raise ValueError(
                f"reverse: num_train and num_test must be >= 0, got {num_train}, {num_test}")
        self.min_len, self.max_len = min_len, max_len
        self.num_train, self.num_test, self.seed = num_train, num_test, seed
        self._splits = {
            "test": self._problems(self._draw(num_test, held_out=True, stream=0)),
            "train": self._problems(self._draw(num_train, held_out=False, stream=1)),
        }

    def _draw(self, wanted: int, *, held_out: bool, stream: int) -> list[str]:
        rng = np.random.default_rng([self.seed, self.min_len, self.max_len, stream])
        seen: set[str] = set()
        out: list[str] = []
        # Rejection sampling of distinct strings; a budget of draws turns an
        # impossible request (e.g. 500 distinct 1-letter strings) into an error.
        for _ in range(50 * wanted + 1000):
            if len(out) == wanted:
                break
            length = int(rng.integers(self.min_len, self.max_len + 1))
            text = "".join(ALPHABET[i] for i in rng.integers(len(ALPHABET), size=length))
            if is_held_out(text) == held_out and text not in seen:
                seen.add(text)
                out.append(text)
        if len(out) < wanted:
            split = "test" if held_out else "train"
            raise ValueError(
                f"reverse: found only {len(out)} distinct {split} strings of length"
                f" {self.min_len}-{self.max_len}; asked for {wanted}")
        return out

    @staticmethod
    def _problems(texts: Sequence[str]) -> list[Problem]:
        return [Problem(id=i, question=question(t), answer=t[::-1], solution=t[::-1],
                        meta={"text": t}) for i, t in enumerate(texts)]

    def load(self, split: str) -> Sequence[Problem]:
        if split not in self._splits:
            raise ValueError(f"reverse: unknown split {split!r}; expected 'train' or 'test'")
        return self._splits[split]

    def score(self, problem: Problem, response: str) -> float:
        return float(extract_answer(response) == problem.answer)
