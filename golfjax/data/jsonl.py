"""Reading task records from local JSON Lines files.

One JSON object per line; blank lines are skipped. Every error names the file
and the 1-based line, so a broken record in a 100k-line dataset is found at once.
"""

from __future__ import annotations

import json
import os
from typing import Any


def read_jsonl(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """The records of `path` as (line number, object) pairs, in file order.

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: a line is not valid JSON or not a JSON object, or the file
        holds no record at all.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no JSONL file at {path}")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_number}: invalid JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}:{line_number}: expected a JSON object, got"
                    f" {type(record).__name__}")
            records.append((line_number, record))
    if not records:
        raise ValueError(f"{path}: the file holds no records")
    return records
