"""`math`: GSM8K / MATH-style problems from local JSONL files, checked by math-verify.

Records: one JSON object per line, in the GSM8K, MATH or plain format of
golfjax/data/math_records.py (the format is told per record by its fields).

Any record may carry an `"id"`, kept in `Problem.meta["source_id"]`;
`Problem.id` is the record's position in its file. A malformed record raises
ValueError naming the file, the record index, the line and the field.

Prepared datasets: `MathTask(dataset=DIR)` reads its splits from a TFDS
directory built by `python -m golfjax.data.prepare` (GSM8K, MATH or
DAPO-style records, normalised at build time; golfjax/data/tfds_prompts.py),
record by record on access; a record without a reference solution gets
"The final answer is \\boxed{<answer>}." as its cold-start target.

Reward: the content of the LAST `\\boxed{...}` of the response (nested braces
allowed) is compared with the gold answer by the `math-verify` library
(`parse` then `verify`, symbolic equivalence: "0.5" matches "\\frac{1}{2}").
No `\\boxed{}` scores 0. Default critic `reveal`; success threshold 0.125
(docs/algorithms.md#golf-injection: math, only all-fail groups get injections).

`SAMPLE_PATH` is a handful of hand-written problems (all three formats), used by
the tests and for smoke runs; real datasets are read from a local path.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from golfjax.data.jsonl import read_jsonl
from golfjax.data.math_records import last_boxed, read_math_record
from golfjax.rewards.base import Problem, Task

if TYPE_CHECKING:
    from golfjax.data.tfds_prompts import PromptRecord, PromptSplit

SAMPLE_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data",
                           "testdata", "math_sample.jsonl")
PROMPT_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def parse_record(record: dict[str, Any], index: int, where: str,
                 prompt_suffix: str = PROMPT_SUFFIX) -> Problem:
    """One `Problem` from a record (`math_records.read_math_record`).

    Args:
      record: the decoded JSON object.
      index: its position in the file, used as `Problem.id`.
      where: "file, record i (line l)", prefixed to every error.
      prompt_suffix: appended to the question (the answer-format instruction).
    """
    read = read_math_record(record, where)
    meta = {"source_id": record["id"]} if "id" in record else {}
    return Problem(id=index, question=read.question + prompt_suffix, answer=read.answer,
                   solution=read.solution, meta=meta)


def load_problems(path: str | os.PathLike[str],
                  prompt_suffix: str = PROMPT_SUFFIX) -> list[Problem]:
    """All problems of a JSONL file; raises on the first malformed record."""
    return [parse_record(record, i, f"{os.fspath(path)}, record {i} (line {line})",
                         prompt_suffix)
            for i, (line, record) in enumerate(read_jsonl(path))]


def problem_from_record(record: PromptRecord, prompt_suffix: str = PROMPT_SUFFIX) -> Problem:
    """The `Problem` of one prepared-dataset record (golfjax/data/tfds_prompts.py)."""
    solution = record.solution or f"The final answer is \\boxed{{{record.answer}}}."
    meta = {"source_id": record.id} if record.id else {}
    return Problem(id=record.index, question=record.question + prompt_suffix,
                   answer=record.answer, solution=solution, meta=meta)


class DatasetProblems(Sequence[Problem]):
    """One split of a prepared dataset as problems, each read when accessed."""

    def __init__(self, records: PromptSplit, prompt_suffix: str) -> None:
        self.records = records
        self.prompt_suffix = prompt_suffix

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Problem:  # type: ignore[override]
        if isinstance(index, slice):  # One bulk read.
            records = self.records[index]
            return [problem_from_record(r, self.prompt_suffix) for r in records]  # type: ignore
        return problem_from_record(self.records[index], self.prompt_suffix)

    def __iter__(self) -> Iterator[Problem]:
        return (problem_from_record(r, self.prompt_suffix) for r in self.records)

    def __repr__(self) -> str:
        return f"DatasetProblems({self.records!r})"


class MathTask(Task):
    """Math word problems with `\\boxed{}` answers (see the module docstring).

    Args:
      train_path: JSONL file of the train split; None (and no dataset) means
        the shipped sample, `SAMPLE_PATH`.
      test_path: JSONL file of the test split; None means `load("test")` raises.
      dataset: a dataset directory built by `python -m golfjax.data.prepare`,
        instead of `train_path`/`test_path`; its splits are read record by
        record on access.
      prompt_suffix: appended to every question.
      timeout_seconds: math-verify's parse/verify time limit. It uses SIGALRM,
        which only works in the main thread, so in other threads (e.g. an
        asynchronous rollout worker) checks run without a limit.

    Both files are read at construction, so a bad path or record fails at once;
    a dataset was validated when it was built, and an empty split fails here.
    """

    name = "math"
    default_critic = "reveal"
    success_threshold = 0.125

    def __init__(self, train_path: str | os.PathLike[str] | None = None,
                 test_path: str | os.PathLike[str] | None = None, *,
                 dataset: str | os.PathLike[str] = "",
                 prompt_suffix: str = PROMPT_SUFFIX, timeout_seconds: int = 5) -> None:
        self.timeout_seconds = timeout_seconds
        self._splits: dict[str, Sequence[Problem]] = {}
        if dataset:
            if train_path is not None or test_path is not None:
                raise ValueError(
                    f"math: dataset={os.fspath(dataset)!r} and train_path/test_path both given;"
                    " give one source of problems")
            # Lazy: TFDS takes about a second to import, and only datasets need it.
            from golfjax.data import tfds_prompts

            for split in tfds_prompts.splits(dataset):
                records = tfds_prompts.PromptSplit(dataset, split)
                if not len(records):
                    raise ValueError(f"math: the {split!r} split of {os.fspath(dataset)} is empty")
                self._splits[split] = DatasetProblems(records, prompt_suffix)
            if "train" not in self._splits:
                raise ValueError(f"math: the dataset in {os.fspath(dataset)} has no 'train' split")
        else:
            self._splits["train"] = load_problems(
                SAMPLE_PATH if train_path is None else train_path, prompt_suffix)
            if test_path is not None:
                self._splits["test"] = load_problems(test_path, prompt_suffix)
        self._gold_cache: dict[str, Any] = {}

    def load(self, split: str) -> Sequence[Problem]:
        if split not in self._splits:
            raise ValueError(
                f"math: no {split!r} split; expected 'train' or 'test' (test needs test_path,"
                " or a dataset prepared with --test)")
        return self._splits[split]

    def _timeout(self) -> int | None:
        main = threading.current_thread() is threading.main_thread()
        return self.timeout_seconds if main else None

    def _gold(self, answer: str) -> Any:
        import math_verify  # Lazy: it pulls in sympy (~1 s) only when math is used.

        if answer not in self._gold_cache:
            self._gold_cache[answer] = math_verify.parse(
                "\\boxed{" + answer + "}", parsing_timeout=self._timeout())
        return self._gold_cache[answer]

    def score(self, problem: Problem, response: str) -> float:
        predicted = last_boxed(response)
        if not predicted:
            return 0.0
        import math_verify

        gold = self._gold(problem.answer)
        target = math_verify.parse("\\boxed{" + predicted + "}",
                                   parsing_timeout=self._timeout())
        return float(math_verify.verify(gold, target, timeout_seconds=self._timeout()))
