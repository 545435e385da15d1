"""Tests for golfjax/data/tfds_prompts.py (and the math task reading its datasets)."""

import json

import pytest

from golfjax.data import tfds_prompts
from golfjax.rewards import math as math_task

# Three records of each format, with the normalised example each must become.
RECORDS = {
    "gsm8k": [
        ({"id": "g1", "question": " A shop sells 1,200 pens and 300 more. How many? ",
          "answer": "1,200+300 = <<1200+300=1500>>1,500\n#### 1,500"},
         {"id": "g1", "question": "A shop sells 1,200 pens and 300 more. How many?",
          "answer": "1500", "solution": "1,200+300 = 1,500\nThe final answer is \\boxed{1500}."}),
        ({"question": "What is 2 + 2?", "answer": "4"},  # Plain: the answer itself.
         {"id": "", "question": "What is 2 + 2?", "answer": "4",
          "solution": "The final answer is \\boxed{4}."}),
        ({"id": 7, "question": "Ünïcode: what is 3 * 3?", "answer": "3*3=9\n#### 9"},
         {"id": "7", "question": "Ünïcode: what is 3 * 3?", "answer": "9",
          "solution": "3*3=9\nThe final answer is \\boxed{9}."}),
    ],
    "math": [
        ({"id": "m1", "problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?",
          "solution": "It is $\\boxed{\\frac{3}{4}}$."},
         {"id": "m1", "question": "What is $\\frac{1}{2}+\\frac{1}{4}$?",
          "answer": "\\frac{3}{4}", "solution": "It is $\\boxed{\\frac{3}{4}}$."}),
        ({"problem": "Solve $x+1=3$.", "solution": "Subtract 1.", "answer": "2"},
         {"id": "", "question": "Solve $x+1=3$.", "answer": "2",
          "solution": "Subtract 1.\nThe final answer is \\boxed{2}."}),
        ({"problem": "Nested?", "solution": "\\boxed{\\sqrt{\\frac{1}{4}}}"},
         {"id": "", "question": "Nested?", "answer": "\\sqrt{\\frac{1}{4}}",
          "solution": "\\boxed{\\sqrt{\\frac{1}{4}}}"}),
    ],
    "dapo": [
        ({"prompt": [{"role": "user", "content": "Find 5 + 6."}],
          "reward_model": {"ground_truth": "11", "style": "rule"},
          "extra_info": {"index": "a1b2"}, "data_source": "math_dapo"},
         {"id": "a1b2", "question": "Find 5 + 6.", "answer": "11", "solution": ""}),
        ({"id": "d2", "prompt": "Find 10 / 4.", "reward_model": {"ground_truth": 2.5}},
         {"id": "d2", "question": "Find 10 / 4.", "answer": "2.5", "solution": ""}),
        ({"prompt": [{"role": "user", "content": "Find 2^10."}],
          "reward_model": {"ground_truth": " 1024 "}},
         {"id": "", "question": "Find 2^10.", "answer": "1024", "solution": ""}),
    ],
}


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _prepare(tmp_path, fmt, train, test=None):
    train_path = _write_jsonl(tmp_path / f"{fmt}_train.jsonl", train)
    test_path = _write_jsonl(tmp_path / f"{fmt}_test.jsonl", test) if test else None
    out_dir = tmp_path / f"{fmt}_dataset"
    name = tfds_prompts.prepare(fmt, out_dir, train_path=train_path, test_path=test_path)
    return out_dir, name


@pytest.mark.parametrize("fmt", tfds_prompts.FORMATS)
def test_every_record_round_trips(tmp_path, fmt):
    records = [r for r, _ in RECORDS[fmt]]
    expected = [e for _, e in RECORDS[fmt]]
    # The test split: the same records in reverse, so the splits differ.
    out_dir, name = _prepare(tmp_path, fmt, records, records[::-1])
    assert name == f"golfjax_prompts/{fmt}:1.0.0"
    assert tfds_prompts.dataset_name(out_dir) == name
    assert tfds_prompts.splits(out_dir) == ("train", "test")
    train = tfds_prompts.PromptSplit(out_dir, "train")
    assert len(train) == 3
    for i, want in enumerate(expected):
        assert train[i] == tfds_prompts.PromptRecord(index=i, format=fmt, **want)
    test = tfds_prompts.PromptSplit(out_dir, "test")
    assert [r.question for r in test] == [e["question"] for e in expected[::-1]]
    assert [r.index for r in test] == [0, 1, 2]  # Positions in the test file.
    assert train[-1] == train[2] and train[1:] == [train[1], train[2]]
    with pytest.raises(IndexError, match="index 3 out of range"):
        train[3]


def test_more_than_a_hundred_records_survive(tmp_path):
    # tfds 4.9.10's Parquet writer drops rows after the first 100; ArrayRecord must not.
    records = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(250)]
    out_dir, _ = _prepare(tmp_path, "gsm8k", records)
    train = tfds_prompts.PromptSplit(out_dir, "train")
    assert len(train) == 250
    assert [int(r.answer) for r in train] == [i + 1 for i in range(250)]
    assert tfds_prompts.splits(out_dir) == ("train",)
    with pytest.raises(ValueError, match="no 'test' split; the dataset has train"):
        tfds_prompts.PromptSplit(out_dir, "test")


@pytest.mark.parametrize("fmt, record, message", [
    ("gsm8k", {"question": "q"}, "missing field 'answer' \\(gsm8k format\\)"),
    ("gsm8k", {"problem": "p", "solution": "\\boxed{1}"}, "missing field 'question'"),
    ("gsm8k", {"question": "q", "answer": 3}, "field 'answer' must be a non-empty string"),
    ("gsm8k", {"question": "q", "answer": "x ####"}, "field 'answer' has nothing after '####'"),
    ("gsm8k", {"question": "q", "answer": "1", "id": [1]}, "field 'id' must be a string or an integer"),
    ("math", {"problem": "p"}, "missing field 'solution' \\(math format\\)"),
    ("math", {"problem": "p", "solution": "no box"}, "field 'solution' has no \\\\boxed"),
    ("math", {"problem": "", "solution": "\\boxed{1}"}, "field 'problem' must be a non-empty string"),
    ("dapo", {"prompt": "p"}, "missing field 'reward_model' \\(dapo format\\)"),
    ("dapo", {"prompt": "p", "reward_model": {}}, "missing field 'reward_model.ground_truth'"),
    ("dapo", {"prompt": "p", "reward_model": "1"}, "field 'reward_model' must be an object"),
    ("dapo", {"prompt": "p", "reward_model": {"ground_truth": ["1"]}},
     "field 'reward_model.ground_truth' must be a non-empty string or a number"),
    ("dapo", {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
              "reward_model": {"ground_truth": "1"}},
     "field 'prompt' must hold exactly one user message .* got roles \\['system', 'user'\\]"),
    ("dapo", {"prompt": [{"role": "user", "content": 5}], "reward_model": {"ground_truth": "1"}},
     "field 'prompt\\[0\\].content' must be a non-empty string"),
])
def test_malformed_record_names_file_index_line_and_field(tmp_path, fmt, record, message):
    good = RECORDS[fmt][0][0]
    # Record 2 sits on line 4: blank lines are skipped, not counted as records.
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(good) + "\n" + json.dumps(record) + "\n")
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match="bad.jsonl, record 2 \\(line 4\\): " + message):
        tfds_prompts.prepare(fmt, out_dir, train_path=path)
    # Validation comes first: nothing was written.
    with pytest.raises(FileNotFoundError, match="no prepared dataset"):
        tfds_prompts.dataset_name(out_dir)


def test_a_bad_test_split_stops_the_train_split_too(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", [{"question": "q", "answer": "1"}])
    test = _write_jsonl(tmp_path / "test.jsonl", [{"question": "q"}])
    with pytest.raises(ValueError, match="test.jsonl, record 0 \\(line 1\\): missing field 'answer'"):
        tfds_prompts.prepare("gsm8k", tmp_path / "out", train_path=train, test_path=test)
    with pytest.raises(FileNotFoundError):
        tfds_prompts.dataset_name(tmp_path / "out")


def test_empty_or_missing_input_fails_before_building(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.jsonl: the file holds no records"):
        tfds_prompts.prepare("gsm8k", tmp_path / "out", train_path=tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="no JSONL file"):
        tfds_prompts.prepare("gsm8k", tmp_path / "out", train_path=tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="no JSONL file to build from"):
        tfds_prompts.prepare("gsm8k", tmp_path / "out")
    with pytest.raises(ValueError, match="unknown format 'gsm9k'; expected one of gsm8k, math, dapo"):
        tfds_prompts.prepare("gsm9k", tmp_path / "out", train_path=tmp_path / "empty.jsonl")


def test_a_directory_holds_one_dataset(tmp_path):
    out_dir, name = _prepare(tmp_path, "gsm8k", [RECORDS["gsm8k"][0][0]])
    train = _write_jsonl(tmp_path / "m.jsonl", [RECORDS["math"][0][0]])
    with pytest.raises(ValueError, match=f"already holds the dataset {name}"):
        tfds_prompts.prepare("math", out_dir, train_path=train)
    with pytest.raises(FileNotFoundError, match="no prepared dataset in"):
        tfds_prompts.dataset_name(tmp_path / "nothing")


def test_math_task_reads_a_prepared_dataset(tmp_path):
    train = [r for fmt in ("gsm8k",) for r, _ in RECORDS[fmt]]
    out_dir, _ = _prepare(tmp_path, "gsm8k", train, train[:2])
    task = math_task.MathTask(dataset=str(out_dir))
    problems = task.load("train")
    assert len(problems) == 3 and len(task.load("test")) == 2
    first = problems[0]
    assert first.id == 0 and first.meta == {"source_id": "g1"}
    assert first.question == RECORDS["gsm8k"][0][1]["question"] + math_task.PROMPT_SUFFIX
    assert first.answer == "1500"
    assert problems[1].meta == {}
    # The JSONL path gives the same problems (up to the id's type in meta).
    from_jsonl = math_task.MathTask(_write_jsonl(tmp_path / "same.jsonl", train)).load("train")
    assert [(p.question, p.answer, p.solution) for p in problems] == [
        (p.question, p.answer, p.solution) for p in from_jsonl]
    assert [task.score(p, p.solution) for p in problems] == [1.0, 1.0, 1.0]


def test_math_task_dapo_dataset_gets_boxed_cold_start_targets(tmp_path):
    out_dir, _ = _prepare(tmp_path, "dapo", [r for r, _ in RECORDS["dapo"]])
    task = math_task.MathTask(dataset=out_dir, prompt_suffix="")
    problems = list(task.load("train"))
    assert [p.question for p in problems] == ["Find 5 + 6.", "Find 10 / 4.", "Find 2^10."]
    assert problems[0].solution == "The final answer is \\boxed{11}."
    assert [task.score(p, p.solution) for p in problems] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="no 'test' split"):
        task.load("test")


def test_math_task_takes_one_source(tmp_path):
    out_dir, _ = _prepare(tmp_path, "gsm8k", [RECORDS["gsm8k"][0][0]])
    with pytest.raises(ValueError, match="dataset=.* and train_path/test_path both given"):
        math_task.MathTask(math_task.SAMPLE_PATH, dataset=out_dir)
