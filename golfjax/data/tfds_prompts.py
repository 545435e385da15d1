"""Prompt datasets as TFDS ArrayRecord files, built from local JSON Lines files.

`python -m golfjax.data.prepare` (golfjax/data/prepare.py) turns a train and a
test JSONL file of one source format into a TFDS dataset directory; a run reads
it with `tfds.data_source` (random access, no TensorFlow) through the grain
pipeline of golfjax/data/pipeline.py.

Source formats (one JSON object per line, chosen per dataset by `--format`):

- `gsm8k`: `{"question": str, "answer": str}`, the answer being the worked
  solution ending in `#### <final answer>` (or the final answer itself);
- `math`: `{"problem": str, "solution": str}` with the final answer in the
  solution's last `\\boxed{...}`, or in an optional `"answer": str`;
- `dapo`: `{"prompt": str | [{"role": "user", "content": str}],
  "reward_model": {"ground_truth": str | number}}` (DAPO-Math-17k, verl's
  layout); the id is `extra_info.index` when the record has no `id`.

GSM8K and MATH records are normalised exactly as the `math` task normalises
them from JSONL (golfjax/data/math_records.py: thousands commas dropped
from GSM8K answers, calculator annotations stripped, the final answer in
`\\boxed{}` in the reference solution). Every record becomes one example of the
normalised schema `FEATURES`; the example order is the file order
(`disable_shuffling`), so `index` is also the example's position in its split.

Validation happens before anything is written: a malformed record raises
ValueError naming the file, the record index (0-based, blank lines skipped),
its line and the missing or wrong field; an empty file raises too.

On disk (TFDS's layout; one dataset per directory):

    out_dir/golfjax_prompts/<format>/<version>/
      golfjax_prompts-train.array_record-00000-of-00001, ...-test...,
      dataset_info.json, features.json
"""

from __future__ import annotations

import dataclasses
import glob
import os
import tempfile
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from golfjax.data.jsonl import read_jsonl
from golfjax.data.math_records import read_math_record

NAME = "golfjax_prompts"
FORMATS = ("gsm8k", "math", "dapo")
SPLITS = ("train", "test")
# The fields each format's records must carry; the rest are optional.
REQUIRED_FIELDS = {
    "gsm8k": ("question", "answer"),
    "math": ("problem", "solution"),
    "dapo": ("prompt", "reward_model"),
}
# The fields `read_math_record` reads for each format; others are dropped first
# so that a record cannot switch formats (a GSM8K record with a stray "problem").
_PARSED_FIELDS = {
    "gsm8k": ("question", "answer", "solution"),
    "math": ("problem", "solution", "answer"),
}

FEATURES = tfds.features.FeaturesDict({
    # The record's position in its JSONL file (0-based, blank lines skipped).
    "index": np.int64,
    # The record's own id as text ("" when it has none).
    "id": tfds.features.Text(),
    # The problem statement: the user message, without any instruction suffix.
    "question": tfds.features.Text(),
    # The final answer the verifier compares against.
    "answer": tfds.features.Text(),
    # A reference solution ending in \boxed{answer} ("" when the source has none).
    "solution": tfds.features.Text(),
    # The source format, one of FORMATS.
    "format": tfds.features.Text(),
})


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    """One example of a prepared dataset, decoded (fields as in `FEATURES`)."""

    index: int
    id: str
    question: str
    answer: str
    solution: str
    format: str


def _record_id(record: Mapping[str, Any], field: str, where: str) -> str:
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: field {field!r} must be a string or an integer, got {value!r}")
    return str(value)


def _dapo_example(record: Mapping[str, Any], where: str) -> dict[str, str]:
    prompt = record["prompt"]
    if isinstance(prompt, list):
        roles = [m.get("role") if isinstance(m, dict) else None for m in prompt]
        if roles != ["user"]:
            raise ValueError(
                f"{where}: field 'prompt' must hold exactly one user message"
                f" ({{'role': 'user', 'content': ...}}), got roles {roles}")
        prompt = prompt[0].get("content")
        field = "prompt[0].content"
    else:
        field = "prompt"
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: field {field!r} must be a non-empty string, got {prompt!r}")
    reward_model = record["reward_model"]
    if not isinstance(reward_model, dict):
        raise ValueError(f"{where}: field 'reward_model' must be an object, got {reward_model!r}")
    if "ground_truth" not in reward_model:
        raise ValueError(f"{where}: missing field 'reward_model.ground_truth'")
    truth = reward_model["ground_truth"]
    if isinstance(truth, (int, float)) and not isinstance(truth, bool):
        truth = str(truth)
    if not isinstance(truth, str) or not truth.strip():
        raise ValueError(
            f"{where}: field 'reward_model.ground_truth' must be a non-empty string or a"
            f" number, got {reward_model['ground_truth']!r}")
    record_id = ""
    if "id" in record:
        record_id = _record_id(record, "id", where)
    elif isinstance(record.get("extra_info"), dict) and "index" in record["extra_info"]:
        record_id = _record_id(record["extra_info"], "index", where + " (extra_info)")
    return {"id": record_id, "question": prompt.strip(), "answer": truth.strip(), "solution": ""}


def normalize_record(record: Mapping[str, Any], fmt: str, index: int, where: str) -> dict[str, Any]:
    """One example of the `FEATURES` schema from a record of format `fmt`.

    Args:
      record: the decoded JSON object.
      fmt: one of `FORMATS`.
      index: the record's position in its file.
      where: "file, record i (line l)", prefixed to every error.

    Raises:
      ValueError: a field is missing or has the wrong type or content; the
        message starts with `where` and names the field.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    for field in REQUIRED_FIELDS[fmt]:
        if field not in record:
            raise ValueError(f"{where}: missing field {field!r} ({fmt} format)")
    if fmt == "dapo":
        example = _dapo_example(record, where)
    else:
        fields = {k: record[k] for k in _PARSED_FIELDS[fmt] if k in record}
        read = read_math_record(fields, where)
        record_id = _record_id(record, "id", where) if "id" in record else ""
        example = {"id": record_id, "question": read.question, "answer": read.answer,
                   "solution": read.solution}
    return {"index": index, "format": fmt, **example}


def read_examples(path: str | os.PathLike[str], fmt: str) -> list[dict[str, Any]]:
    """Every record of a JSONL file, normalised; raises on the first bad one."""
    path = os.fspath(path)
    return [normalize_record(record, fmt, i, f"{path}, record {i} (line {line})")
            for i, (line, record) in enumerate(read_jsonl(path))]


class GolfjaxPrompts(tfds.core.GeneratorBasedBuilder):
    """Prompt datasets from local JSONL files; the builder config is the format.

    Args:
      train_path, test_path: the JSONL files of the splits to build (at least
        one); only needed to build, not to read a built dataset.
      **kwargs: `tfds.core.DatasetBuilder` arguments (`data_dir`, `config`,
        `file_format`).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Normalised schema: index, id, question, answer, solution, format."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=fmt, description=f"{fmt}-style JSONL records")
                       for fmt in FORMATS]

    def __init__(self, *, train_path: str | os.PathLike[str] | None = None,
                 test_path: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        self._paths = {split: os.fspath(path) for split, path in
                       (("train", train_path), ("test", test_path)) if path is not None}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Prompt datasets from local JSONL files (GSM8K, MATH, DAPO formats).",
            features=FEATURES,
            # File order: `index` is then the example's position in its split.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict]]]:
        del dl_manager  # Local files only; nothing is downloaded.
        if not self._paths:
            raise ValueError(
                f"{NAME}: no JSONL file to build from; give train_path and/or test_path")
        fmt = self.builder_config.name
        # Every record of every split is validated before TFDS writes anything.
        examples = {split: read_examples(path, fmt) for split, path in self._paths.items()}
        return {split: self._generate_examples(split_examples)
                for split, split_examples in examples.items()}

    def _generate_examples(self, examples: Sequence[dict[str, Any]]) -> Iterator[tuple[int, dict]]:
        for example in examples:
            yield example["index"], example


def _prepared(data_dir: str) -> list[str]:
    """The `name/config:version` of every complete dataset under `data_dir`."""
    infos = glob.glob(os.path.join(glob.escape(data_dir), NAME, "*", "*", "dataset_info.json"))
    found = []
    for info in sorted(infos):
        version_dir = os.path.dirname(info)
        config_dir = os.path.dirname(version_dir)
        found.append(f"{NAME}/{os.path.basename(config_dir)}:{os.path.basename(version_dir)}")
    return found


def prepare(fmt: str, out_dir: str | os.PathLike[str], *,
            train_path: str | os.PathLike[str] | None = None,
            test_path: str | os.PathLike[str] | None = None) -> str:
    """Builds the dataset of `fmt`-format JSONL files into `out_dir` as ArrayRecord.

    Args:
      fmt: the source format, one of `FORMATS`.
      out_dir: the dataset directory (created if needed); it must not already
        hold a prepared dataset, so a directory always names one dataset.
      train_path, test_path: the JSONL files of the splits (at least one).

    Returns:
      The TFDS name of the dataset, e.g. "golfjax_prompts/gsm8k:1.0.0".

    Raises:
      ValueError: an unknown format, no input file, `out_dir` already holds a
        dataset, or a malformed record (naming file, record, line and field).
      FileNotFoundError: an input file is missing.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out_dir = os.fspath(out_dir)
    existing = _prepared(out_dir)
    if existing:
        raise ValueError(
            f"{out_dir} already holds the dataset {existing[0]}; prepare into a new directory"
            " (or delete it first)")
    builder = GolfjaxPrompts(data_dir=out_dir, config=fmt, file_format="array_record",
                             train_path=train_path, test_path=test_path)
    # TFDS wants a download directory even when nothing is downloaded; keep it
    # out of the dataset directory.
    with tempfile.TemporaryDirectory() as download_dir:
        builder.download_and_prepare(download_dir=download_dir)
    return f"{NAME}/{fmt}:{builder.version}"


def dataset_name(data_dir: str | os.PathLike[str]) -> str:
    """The TFDS name (`golfjax_prompts/<format>:<version>`) of the dataset in `data_dir`.

    Raises:
      FileNotFoundError: `data_dir` holds no prepared dataset.
      ValueError: it holds more than one.
    """
    data_dir = os.fspath(data_dir)
    found = _prepared(data_dir)
    if not found:
        raise FileNotFoundError(
            f"no prepared dataset in {data_dir} (expected {NAME}/<format>/<version>/"
            "dataset_info.json); build one with `python -m golfjax.data.prepare`")
    if len(found) > 1:
        raise ValueError(
            f"{data_dir} holds several datasets ({', '.join(found)}); keep one per directory")
    return found[0]


def splits(data_dir: str | os.PathLike[str]) -> tuple[str, ...]:
    """The split names of the dataset in `data_dir`, in `SPLITS` order."""
    builder = tfds.builder(dataset_name(data_dir), data_dir=os.fspath(data_dir))
    return tuple(s for s in SPLITS if s in builder.info.splits)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class PromptSplit(Sequence[PromptRecord]):
    """One split of a prepared dataset: random access through `tfds.data_source`.

    Records are read from the ArrayRecord files on access, so a process touches
    only the records it asks for (its shard); slices and iteration read in
    chunks, about twice as fast as record by record.
    """

    _CHUNK = 1024  # Records per bulk read when slicing or iterating.

    def __init__(self, data_dir: str | os.PathLike[str], split: str) -> None:
        self.data_dir = os.fspath(data_dir)
        self.name = dataset_name(self.data_dir)
        available = splits(self.data_dir)
        if split not in available:
            raise ValueError(
                f"{self.data_dir}: no {split!r} split; the dataset has {', '.join(available)}")
        self.split = split
        # download=False: a missing dataset must fail, not try to build one.
        self._source = tfds.data_source(self.name, split=split, data_dir=self.data_dir,
                                        download=False)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> PromptRecord:  # type: ignore[override]
        if isinstance(index, slice):
            return self._read(range(*index.indices(len(self))))  # type: ignore[return-value]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for the {n} records of {self.split}")
        return _decode(self._source[index % n])

    def __iter__(self) -> Iterator[PromptRecord]:
        for start in range(0, len(self), self._CHUNK):
            yield from self._read(range(start, min(start + self._CHUNK, len(self))))

    def _read(self, indices: range) -> list[PromptRecord]:
        records = []
        for start in range(0, len(indices), self._CHUNK):
            chunk = indices[start:start + self._CHUNK]
            records += [_decode(raw) for raw in self._source.__getitems__(list(chunk))]
        return records

    def __repr__(self) -> str:
        return f"PromptSplit({self.name}, split={self.split!r}, data_dir={self.data_dir!r})"


def _decode(raw: Mapping[str, Any]) -> PromptRecord:
    return PromptRecord(index=int(raw["index"]), id=_text(raw["id"]),
                        question=_text(raw["question"]), answer=_text(raw["answer"]),
                        solution=_text(raw["solution"]), format=_text(raw["format"]))
