"""Tests for golfjax/data/prepare.py: the CLI, and the README's dataset commands end to end."""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from golfjax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _env(**extra: str) -> dict[str, str]:
    # One CPU device, as a user's machine has; conftest.py's 8-device flag must
    # not leak into the child.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


def _prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "golfjax.data.prepare", *args], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _gsm8k(i: int) -> dict:
    return {"id": f"s{i}", "question": f"Tom has {i} apples and buys {i + 2} more. How many now?",
            "answer": f"{i}+{i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2}\n#### {2 * i + 2}"}


def test_cli_writes_a_dataset_and_prints_its_splits(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", [_gsm8k(0), _gsm8k(1)])
    test = _write_jsonl(tmp_path / "test.jsonl", [_gsm8k(2)])
    out = tmp_path / "ds"
    result = _prepare("--format=gsm8k", f"--train={train}", f"--test={test}", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"golfjax_prompts/gsm8k:1.0.0 in {out}: train 2, test 1" in result.stdout
    # A second build into the same directory is refused, not merged.
    again = _prepare("--format=gsm8k", f"--train={train}", f"--out_dir={out}")
    assert again.returncode == 1
    assert "already holds the dataset golfjax_prompts/gsm8k:1.0.0" in again.stderr


def test_cli_reports_a_malformed_record_without_a_traceback(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", [_gsm8k(0), {"question": "no answer"}])
    result = _prepare("--format=gsm8k", f"--train={train}", f"--out_dir={tmp_path / 'ds'}")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"prepare: {train}, record 1 (line 2): missing field 'answer' (gsm8k format)")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ds" / "golfjax_prompts" / "gsm8k" / "1.0.0").exists()
    usage = _prepare("--format=gsm8k", f"--out_dir={tmp_path / 'ds'}")
    assert usage.returncode != 0 and "give --train and/or --test" in usage.stderr


def test_run_configs_point_dataset_tasks_at_a_dataset():
    def task_section(**task):
        return config_lib.build(config_lib.RunConfig, {"task": task}).task

    section = task_section(name="math", dataset="ds", kwargs={"prompt_suffix": ""})
    assert section.task_kwargs() == {"prompt_suffix": "", "dataset": "ds"}
    assert task_section(name="math").task_kwargs() == {}
    with pytest.raises(ValueError, match="config.task.dataset='ds' but task 'arith' makes its own"):
        task_section(name="arith", dataset="ds")
    with pytest.raises(ValueError, match="config.task.dataset: set twice, as task.dataset and task.kwargs.dataset"):
        task_section(name="math", dataset="ds", kwargs={"dataset": "other"})


def _readme_commands() -> list[list[str]]:
    section = README.read_text().split("### Datasets (TFDS + grain)", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.DOTALL).group(1)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _final_params(workdir) -> dict:
    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")["params"]


def _data_state(workdir, step: int) -> dict:
    return json.loads((workdir / "checkpoints" / str(step) / "data" / "metadata").read_text())


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}/{key}").items()}
    return {prefix: np.asarray(tree)}


@pytest.mark.slow
def test_readme_commands_prepare_train_and_resume_exactly(tmp_path):
    # The README's two commands, on a small GSM8K file, with overrides that make
    # the run small; then the run is cut back to its step-2 checkpoint (as if
    # it had died there, mid-epoch) and rerun, and must end bit-identical.
    records = [_gsm8k(i) for i in range(14)]
    records[5]["question"] = "Count the words. " + "word " * 250  # > 1024 tokens: dropped.
    paths = {
        "gsm8k/train.jsonl": _write_jsonl(tmp_path / "train.jsonl", records),
        "gsm8k/test.jsonl": _write_jsonl(tmp_path / "test.jsonl", records[:4]),
        "/tmp/gsm8k_prompts": tmp_path / "gsm8k_prompts",
        "/tmp/grpo_gsm8k": tmp_path / "whole",
    }
    prepare, train, *others = _readme_commands()  # The others: more runs on the same prompts.
    assert prepare[:3] == ["python", "-m", "golfjax.data.prepare"]
    for command in [train] + others:
        assert command[:3] == ["python", "-m", "experiments.main"]
        assert "--config.task.dataset=/tmp/gsm8k_prompts" in command

    def local(command):
        args = [sys.executable] + command[1:]
        for old, new in paths.items():
            args = [a.replace(old, str(new)) for a in args]
        return args

    result = subprocess.run(local(prepare), cwd=ROOT, env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train 14, test 4" in result.stdout

    # 13 kept prompts in batches of 4: 3 batches an epoch, so step 2 is mid-epoch
    # and step 4 is in the second epoch. The entropy bonus makes every update
    # move the parameters (the random model earns no reward). One optimizer
    # step per rollout (the math variant's default is 4, as GOLF's scripts),
    # so that every step is a rollout boundary with its own checkpoint; prompt
    # buckets up to 1,024 tokens (GOLF's reach 8,192), so one prompt is dropped.
    small = ["--config.train.steps=4", "--config.train.prompts_per_step=4",
             "--config.schedule.minibatches=1", "--config.sampling.prompt_buckets=(64,128,256,512,1024)",
             "--config.sampling.group_size=2", "--config.sampling.max_new_tokens=8",
             "--config.train.entropy_coef=0.01", "--config.eval.every=100",
             "--config.eval.num_problems=4", "--config.eval.samples=2",
             "--config.checkpoint.every=1", "--config.checkpoint.keep=10"]
    # The second run reuses the first one's compiled programs.
    env = _env(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    whole = subprocess.run(local(train) + small, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "kept 13 of 14 prompts, dropped 1 longer than 1024 tokens" in whole.stderr

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole", resumed_dir)
    for step in (3, 4):
        shutil.rmtree(resumed_dir / "checkpoints" / str(step))
    paths["/tmp/grpo_gsm8k"] = resumed_dir
    resumed = subprocess.run(local(train) + small, cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step 3/4" in resumed.stdout and "step 1/4" not in resumed.stdout

    # The grain pipeline's position is what the checkpoints hold.
    state = _data_state(tmp_path / "whole", 2)["rl"]
    assert state == {"grain": {"next_index": 2}, "num_problems": 14, "num_shards": 1,
                     "batch_size": 4, "seed": 1, "max_prompt_tokens": 1024}
    assert _data_state(resumed_dir, 4) == _data_state(tmp_path / "whole", 4)
    flat_whole = _flatten(_final_params(tmp_path / "whole"))
    flat_resumed = _flatten(_final_params(resumed_dir))
    assert flat_whole.keys() == flat_resumed.keys()
    for key in flat_whole:
        np.testing.assert_array_equal(flat_resumed[key], flat_whole[key], err_msg=key)

    def records_of(workdir):
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("perf/")}
                for line in lines]

    assert records_of(resumed_dir) == records_of(tmp_path / "whole")
    assert records_of(resumed_dir)[-1]["step"] == 4
    assert records_of(resumed_dir)[-1]["grad_norm"] > 0
