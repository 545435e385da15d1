"""Tests for golfjax/data/jsonl.py."""

import pytest

from golfjax.data.jsonl import read_jsonl


def test_reads_records_with_line_numbers(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(path) == [(1, {"a": 1}), (3, {"a": 2})]


@pytest.mark.parametrize("content, message", [
    ("", "holds no records"),
    ('{"a": 1}\n{"a": \n', "x.jsonl:2: invalid JSON"),
    ('[1, 2]\n', "x.jsonl:1: expected a JSON object"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "x.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_jsonl(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no JSONL file"):
        read_jsonl(tmp_path / "missing.jsonl")
