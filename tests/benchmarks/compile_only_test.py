"""--compile-only of benchmarks/train_step.py and benchmarks/sampler.py, at tiny shapes."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(script, *flags):
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *flags],
                   cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), check=True,
                   timeout=600, capture_output=True)


def test_train_step_compile_only_takes_a_preset_and_any_shape(tmp_path):
    out = tmp_path / "train.json"
    _run("train_step.py", "--compile-only", "--configs=tiny_qwen3", "--rows=2",
         "--prompt=8", "--response=56", "--remat", "--attention=blockwise",
         f"--out={out}")
    report = json.loads(out.read_text())
    assert report["mode"] == "compile_only"
    (result,) = report["results"]
    assert (result["preset"], result["rows"], result["prompt"], result["response"]) == (
        "tiny_qwen3", 2, 8, 56)
    assert result["remat"] and result["attention"] == "blockwise"
    assert result["compiled_temp_bytes"] > 0 and result["compiled_bytes_accessed"] > 0


@pytest.mark.parametrize("decode_layers", [None, "scan"])
def test_sampler_compile_only_reports_the_decode_step_against_the_roofline(
        tmp_path, decode_layers):
    out = tmp_path / "sampler.json"
    flags = [] if decode_layers is None else [f"--decode-layers={decode_layers}"]
    _run("sampler.py", "--preset=tiny_qwen2", "--compile-only", "--batches=4",
         "--group=2", "--prompt-len=16", "--new-tokens=40", f"--out={out}", *flags)
    result = json.loads(out.read_text())["result"]
    assert (result["batch"], result["group"], result["prompt_len"]) == (4, 2, 16)
    assert result["decode_layers"] == (decode_layers or "unrolled")  # auto on CPU.
    step = result["decode_step_compiled"]
    assert step["slots"] == 56 and step["roofline_bytes"] > 0
    assert 1.0 <= step["bytes_per_roofline"] < 10.0
    compiled = result["programs_compiled"]
    assert compiled["decode_layers"] == result["decode_layers"]
    assert compiled["decode_loops"] == 2  # Steps 1-32, 33-39.
    assert compiled["prefill_compile_s"] > 0 and compiled["decode_compile_s"] > 0
    assert "tokens_per_s" not in result  # Nothing ran.
