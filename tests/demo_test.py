"""`make demo`'s entry point runs and writes its learning curve."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_smoke_variant_writes_the_plot(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, "-m", "golfjax.demo", "--smoke", "--workdir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for label in ("GOLF:", "GRPO:", "GRPO, groups of 16:", "GOLF against GRPO:", "GOLF against GRPO, groups of 16:"):
        assert label in result.stdout, result.stdout[-3000:]
    png = tmp_path / "accuracy.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_reads_golf_against_a_baseline_at_equal_samples():
    from golfjax import demo

    # Baseline interpolated at GOLF's 100 and 300 samples: 0.15 and 0.35; GOLF's
    # start (0 samples) and its point beyond the baseline's range are not compared.
    golf = ([0, 100, 300, 500], [0.1, 0.2, 0.3, 0.9])
    baseline = ([0, 200, 400], [0.1, 0.2, 0.5])
    assert demo.compare(golf, baseline) == {"points": 2, "ahead": 1, "mean_gap": pytest.approx(0.0)}
