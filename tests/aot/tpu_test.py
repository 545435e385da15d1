"""Programs compiled for a TPU slice on this CPU host (libtpu: `pip install -e '.[tpu-aot]'`).

The platform choices follow the devices a program is compiled for, not the
host: the train step's attention is splash's Mosaic kernel, and the sampler's
decode step scans its layers, reading little more than its roofline.
"""

import json
import os
import subprocess
import sys

import jax
import pytest

pytest.importorskip("libtpu", reason="compiling for TPU needs libtpu: pip install -e '.[tpu-aot]'")

from benchmarks import programs  # noqa: E402
from golfjax import sharding  # noqa: E402
from golfjax.aot import slices  # noqa: E402
from golfjax.config import TrainSection  # noqa: E402
from golfjax.losses import LossConfig  # noqa: E402
from golfjax.models import config as config_lib  # noqa: E402
from golfjax.models import hf  # noqa: E402
from golfjax.train import trainer as trainer_lib  # noqa: E402
from golfjax.train.state import OptimizerConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def v5p_8():
    return slices.parse("v5p-8").devices()


def test_slice_devices_are_tpu_chips(v5p_8):
    assert len(v5p_8) == 4 and {d.platform for d in v5p_8} == {"tpu"}
    assert jax.default_backend() == "cpu"
    # Part of a slice (an asynchronous run's rollout chips) is a mesh too.
    assert sharding.make_mesh(1, -1, 1, devices=v5p_8[1:]).devices.size == 3


@pytest.mark.slow
def test_train_step_for_tpu_runs_splash_on_a_cpu_host(v5p_8):
    # model.attention = "auto", traced on a CPU host for TPU devices.
    config = config_lib.PRESETS["tiny"].replace(compute_dtype="bfloat16", remat=True)
    trainer = trainer_lib.Trainer(config, TrainSection(loss="vespo"), LossConfig(), OptimizerConfig(),
                                  sharding.make_mesh(1, -1, 1, devices=v5p_8))
    batch = programs.abstract_batch(8, 128, 128, trainer.batch_shardings.prompt_tokens_NxP)
    compiled = trainer.jitted_step(batch).lower(
        trainer.abstract_state, batch, jax.random.PRNGKey(0)).compile()
    text = compiled.as_text()
    kernels = [line for line in text.splitlines() if "custom-call" in line and "splash_mha" in line]
    # Forward, and the backward's dq and dkv kernels.
    assert {k for k in ("fwd", "dq", "dkv") if any(f"splash_mha_{k}" in line for line in kernels)} == {
        "fwd", "dq", "dkv"}
    assert 'custom_call_target="tpu_custom_call"' in text


@pytest.mark.slow
def test_scanned_decode_step_reads_at_most_one_and_a_half_rooflines(v5p_8):
    # The decode step of 512 rows after 128-token prompts, 256 new tokens, on one v5p chip.
    config = config_lib.PRESETS["qwen2.5-0.5b"]
    _, stats = programs.decode_step_program(config, 512, 128, 256, device=v5p_8[0])
    assert stats["decode_layers"] == "scan"  # "auto" on a TPU device.
    assert stats["bytes_per_roofline"] <= 1.5, stats


@pytest.mark.slow
def test_cli_prints_the_table_and_names_what_does_not_fit(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "golfjax.aot", "--config=experiments/configs/golf.py:smoke",
             "--programs=eval decode", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)

    # The decode program: the cheapest of the run's programs to compile.
    ok = run("--topology=v5p-8", f"--json={tmp_path / 'aot.json'}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "every program fits a v5p chip's HBM" in ok.stdout
    assert "eval decode" in ok.stdout and "est. ms" in ok.stdout
    # A Qwen3-8B of 72 layers (15B parameters): its bf16 parameters and
    # optimizer moments (6 bytes a parameter), which the run keeps while it
    # samples, are over the 64 GiB of a v5e-4's four chips.
    (tmp_path / "config.json").write_text(
        json.dumps(hf.config_to_hf(config_lib.PRESETS["qwen3-8b"].replace(num_layers=72))))
    big = run("--topology=v5e-4", f"--config.model.hf_config={tmp_path / 'config.json'}")
    assert big.returncode == 1, big.stderr[-2000:]
    assert "does not fit" in big.stderr and "eval decode (" in big.stderr
    assert "more than a v5e chip's 16.0 GiB" in big.stderr
    bad = run("--topology=v5p-6")
    assert bad.returncode == 2 and "--topology='v5p-6'" in bad.stderr
