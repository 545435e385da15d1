"""benchmarks/accelerator.py --smoke: every check of the accelerator run, at tiny shapes."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_smoke_run_writes_every_figure(tmp_path):
    out = tmp_path / "accelerator.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "accelerator.py"),
                    "--smoke", f"--out={out}"], cwd=ROOT, env=env, check=True,
                   timeout=900)
    report = json.loads(out.read_text())
    assert report["smoke"] and report["jax"] and report["device_kind"]
    checks = report["checks"]
    assert set(checks) == {"train_16k", "train_4k", "train_1b", "train_1b_remat",
                           "sample_512", "sample_512_scan", "sample_512_scan_dsf"}
    for name, check in checks.items():
        assert "error" not in check, (name, check.get("error"))
    for name in ("train_16k", "train_4k", "train_1b", "train_1b_remat"):
        check = checks[name]
        assert check["compiled_temp_bytes"] > 0 and check["compiled_bytes_accessed"] > 0
        assert check["compile_s"] > 0 and check["fraction_of_peak"] > 0
        assert "mfu" in check  # None on a CPU: no spec peak.
    assert checks["sample_512_scan_dsf"]["command"].startswith(
        "XLA_FLAGS=--xla_gpu_enable_dynamic_slice_fusion=true ")
    for name, layers in (("sample_512", None), ("sample_512_scan", "scan"),
                         ("sample_512_scan_dsf", "scan")):
        sample = checks[name]
        assert 0 < sample["fraction_of_bandwidth_bound"]
        assert sample["first_call_seconds"] > 0
        assert sample["decode_step_compiled"]["bytes_per_roofline"] > 0
        hlo = tmp_path / f"accelerator.{name}.decode_step.hlo.txt"
        assert "ENTRY" in hlo.read_text()
        # auto: scanned on TPU only.
        assert sample["decode_layers"] == (layers or (
            "scan" if report["backend"] == "tpu" else "unrolled"))
