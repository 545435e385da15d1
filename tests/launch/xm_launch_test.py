"""launch/xm_launch.py: the README's launch commands, the dry run, and an XManager local launch."""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from launch import xm_launch

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _readme_commands() -> list[list[str]]:
    """The argv of every command in the README's launch section."""
    section = README.read_text().split("## Launching: XManager, Cloud TPU, multi-host")[1]
    section = section.split("\n## ")[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip():
                commands.append(shlex.split(command))
    return commands


def _run(argv: list[str], env: dict[str, str] | None = None,
         timeout: int = 120) -> subprocess.CompletedProcess:
    assert argv[:3] == ["python", "-m", "launch.xm_launch"], argv
    return subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_readme_has_the_launch_commands():
    commands = _readme_commands()
    assert sum("--dry_run" in c for c in commands) == 5
    assert sum("--dry_run" not in c for c in commands) == 1


def test_readme_dry_runs_print_every_job_spec():
    plans = [json.loads(_run(c).stdout) for c in _readme_commands() if "--dry_run" in c]
    local, v5e, v5p, golf_qwen, vespo_qwen = plans
    assert local["executor"] == "local" and [u["id"] for u in local["work_units"]] == [1, 2, 3]
    assert local["work_units"][2]["argv"][-2:] == ["--workdir=/tmp/golf_sweep/3", "--config.seed=2"]
    assert (v5e["tpu"]["accelerator_type"], v5e["tpu"]["hosts"]) == ("v5litepod-16", 4)
    assert (v5p["tpu"]["topology"], v5p["tpu"]["chips"], v5p["tpu"]["hosts"]) == ("2x2x4", 16, 4)
    for plan in (v5e, v5p):
        assert len(plan["work_units"]) == 3
        assert all("--multihost=on" in u["argv"] for u in plan["work_units"])
        assert "queued-resources create golf-arith-1 " in plan["work_units"][0]["script"]
    # Qwen2.5-Math-1.5B: every unit loads the checkpoint, its tokenizer and the prompts.
    for plan, config in ((golf_qwen, "golf.py:math"), (vespo_qwen, "vespo.py:vespo,n=16,task=math")):
        assert [u["overrides"]["seed"] for u in plan["work_units"]] == [0, 1, 2]
        for unit in plan["work_units"]:
            assert f"--config=experiments/configs/{config}" in unit["argv"]
            assert "--config.model.hf_path=/gcs/my-bucket/Qwen2.5-Math-1.5B" in unit["argv"]
            assert "--config.task.tokenizer=/gcs/my-bucket/Qwen2.5-Math-1.5B" in unit["argv"]
            assert "--config.task.dataset=/gcs/my-bucket/math_prompts" in unit["argv"]


def test_bad_flags_fail_before_anything_runs():
    result = _run(["python", "-m", "launch.xm_launch", "--config=experiments/configs/golf.py:smoke",
                   "--workdir_root=/tmp/x", "--executor=tpu", "--dry_run"])
    assert result.returncode != 0 and "--executor=tpu needs --tpu_type" in result.stderr


def test_aot_failure_creates_no_tpu(tmp_path):
    # golfjax.aot refuses the run (an unknown preset) before compiling: the
    # launcher stops before the plan's first step, which would create the TPU.
    result = _run(["python", "-m", "launch.xm_launch", "--config=experiments/configs/golf.py:arith,seed=1",
                   "--workdir_root=/gcs/b/golf", "--executor=tpu", "--tpu_type=v5p-8", "--zone=z", "--aot",
                   "--set=model.preset=no-such-model"], timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "model.preset" in result.stderr and "--aot: golfjax.aot failed for" in result.stderr
    assert "no TPU was created" in result.stderr and '"work_units"' not in result.stdout
    local = _run(["python", "-m", "launch.xm_launch", "--config=experiments/configs/golf.py:smoke",
                  f"--workdir_root={tmp_path}", "--aot", "--dry_run"])
    assert local.returncode != 0 and "--aot compiles for --tpu_type" in local.stderr


@pytest.mark.skipif(xm_launch.xm is not None, reason="xmanager is installed: the launch runs instead")
def test_launch_without_xmanager_says_how_to_install_it(tmp_path):
    result = _run(["python", "-m", "launch.xm_launch", "--config=experiments/configs/golf.py:smoke",
                   f"--workdir_root={tmp_path}"])
    assert result.returncode != 0 and "pip install -e '.[launch]'" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(xm_launch.xm is None, reason="needs xmanager: pip install -e '.[launch]' "
                    "(not in the test install: it takes minutes to install)")
def test_readme_local_launch_runs_every_work_unit(tmp_path):
    [argv] = [c for c in _readme_commands() if "--dry_run" not in c]
    argv = [f"--workdir_root={tmp_path / 'sweep'}" if a.startswith("--workdir_root=") else a for a in argv]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    # XManager keeps its experiment database under HOME.
    env |= {"JAX_PLATFORMS": "cpu", "HOME": str(tmp_path / "home")}
    result = _run(argv, env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for wid in (1, 2, 3):
        records = [json.loads(line) for line in
                   (tmp_path / "sweep" / str(wid) / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["step"] == 4  # 2 cold-start + 2 GOLF steps
    assert (tmp_path / "home" / ".xmanager" / "experiments.sqlite3").is_file()
