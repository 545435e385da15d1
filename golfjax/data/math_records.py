"""GSM8K, MATH and plain math records read as (question, answer, solution).

Record formats (one JSON object; the format is told by its fields):

- GSM8K: `{"question": str, "answer": str}` where `answer` is the worked
  solution ending in `#### <final answer>`. The final answer is the text after
  the last `####` (thousands commas removed); the solution is the worked
  solution without calculator annotations (`<<48/2=24>>`), then
  "The final answer is \\boxed{<final>}."
- MATH: `{"problem": str, "solution": str}` with the final answer in the
  solution's last `\\boxed{...}`; an optional `"answer": str` overrides it
  (and is appended to a solution that has no `\\boxed{}`).
- Plain: `{"question": str, "answer": str}` where `answer` (no `####`) is the
  final answer itself; an optional `"solution": str` is the cold-start target.

Both the `math` task (golfjax/rewards/math.py, from JSONL) and the TFDS
prompt datasets (golfjax/data/tfds_prompts.py, at build time) read records
through `read_math_record`, so a record means the same in either; this module
imports neither of them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

_CALCULATOR = re.compile(r"<<[^<>]*>>")


@dataclasses.dataclass(frozen=True)
class MathRecord:
    """A record's problem statement (stripped), final answer, and reference
    solution ending in `\\boxed{answer}`."""

    question: str
    answer: str
    solution: str


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` in `text` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth, i = 0, start + len("\\boxed")
        for i in range(start + len("\\boxed"), len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start + len("\\boxed{"):i].strip()
        # Unclosed (e.g. a truncated response): look at an earlier one.
        start = text.rfind("\\boxed{", 0, start)
    return None


def _field(record: Mapping[str, Any], name: str, where: str) -> str:
    if name not in record:
        raise ValueError(f"{where}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
    return value


def read_math_record(record: Mapping[str, Any], where: str) -> MathRecord:
    """The `MathRecord` of a decoded JSON object (formats in the module docstring).

    Raises:
      ValueError: a field is missing, empty or not a string, or a MATH
        solution has no `\\boxed{}` answer; the message starts with `where`
        ("file, record i (line l)") and names the field.
    """
    if "problem" in record:  # MATH
        question = _field(record, "problem", where)
        solution = _field(record, "solution", where)
        if "answer" in record:
            answer = _field(record, "answer", where)
            if last_boxed(solution) is None:
                # The cold-start target must end in the format the reward reads.
                solution += f"\nThe final answer is \\boxed{{{answer}}}."
        else:
            answer = last_boxed(solution)
            if not answer:
                raise ValueError(
                    f"{where}: field 'solution' has no \\boxed{{...}} answer and there is"
                    " no 'answer' field")
    elif "question" in record:  # GSM8K or plain
        question = _field(record, "question", where)
        raw = _field(record, "answer", where)
        if "####" in raw:
            rationale, _, final = raw.rpartition("####")
            answer = final.strip().replace(",", "")
            if not answer:
                raise ValueError(f"{where}: field 'answer' has nothing after '####'")
            steps = _CALCULATOR.sub("", rationale).strip()
            solution = f"{steps}\nThe final answer is \\boxed{{{answer}}}.".lstrip()
        else:
            answer = raw.strip()
            solution = (_field(record, "solution", where) if "solution" in record
                        else f"The final answer is \\boxed{{{answer}}}.")
    else:
        raise ValueError(
            f"{where}: missing field 'question' (GSM8K/plain format) or 'problem'"
            " (MATH format)")
    return MathRecord(question=question.strip(), answer=answer, solution=solution)
