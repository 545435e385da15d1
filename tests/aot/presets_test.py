"""The papers' presets still run on the TPU slices README.md names (libtpu: `.[tpu-aot]`).

Compiling one preset's programs at full shapes takes 20 to 60 minutes on a
2-core CPU, too long for CI, so CI checks, in a second a preset, what needs
no compile: the config is valid for its slice (`config.validate`), the run's
programs build on the slice's devices (its meshes and shardings: 3 chips
cannot split Qwen3-8B's embedding), and what the run keeps on a chip beside
each program, with that program's parameters, leaves room on the chip.
The full-shape fit, XLA's memory analysis included, is docs/results.md#aot's
table (`python benchmarks/aot_presets.py`); GOLFJAX_AOT_FULL=1 also compiles
each preset's binding program here, at its full shapes (minutes each).
"""

import os

import pytest

pytest.importorskip("libtpu", reason="compiling for TPU needs libtpu: pip install -e '.[tpu-aot]'")

from benchmarks import aot_presets  # noqa: E402
from golfjax import aot  # noqa: E402
from golfjax import config as config_lib  # noqa: E402
from golfjax.aot import plan, slices  # noqa: E402

# The program holding the most HBM per chip in each preset's full table.
BINDING = {
    "experiments/configs/golf.py:qwen3_8b_math": "rollout + refinement decode",
    "experiments/configs/golf.py:qwen3_4b_if": "rollout + refinement decode",
    "experiments/configs/vespo.py:qwen3_8b_math": "log-probs",
    # The asynchronous schedule rescores nothing (sampler log-probs): its
    # largest program was the rollout decode, 74 GiB (docs/results.md#aot).
    "experiments/configs/vespo.py:qwen3_8b_math,async=1": "rollout decode",
    # Of the programs compiled so far (train, decode: docs/results.md#aot-qwen3-30b-a3b).
    "experiments/configs/vespo.py:qwen3_30b_a3b_math": "train step",
}
_IDS = lambda x: x.split("/")[-1]  # noqa: E731


def _binding(config, topology):
    cfg = aot_presets.load_config(config)
    tpu = slices.parse(topology)
    config_lib.validate(cfg, tpu.chips, tpu.hosts)
    programs = plan.programs(cfg, tpu.devices())
    [binding] = [p for p in programs if p.name == BINDING[config]]
    return cfg, tpu, programs, binding


def test_every_preset_names_its_binding_program():
    assert set(BINDING) == {config for config, _ in aot_presets.PRESETS}


@pytest.mark.parametrize("config, topology", aot_presets.PRESETS, ids=_IDS)
def test_preset_builds_on_its_slice_and_what_it_holds_leaves_room(config, topology):
    cfg, tpu, programs, _ = _binding(config, topology)
    chips = tpu.chips - (cfg.schedule.rollout_devices if cfg.schedule.async_rollout else 0)
    params = plan.model_config(cfg).num_params * 2 / chips  # bf16 compute copy, fsdp over the chips.
    for p in programs:
        assert sum(p.held.values()) + params < tpu.chip.hbm_bytes, (p.name, p.held)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GOLFJAX_AOT_FULL"), reason="full shapes: GOLFJAX_AOT_FULL=1 (minutes)")
@pytest.mark.parametrize("config, topology", aot_presets.PRESETS, ids=_IDS)
def test_preset_binding_program_fits_its_chip_at_full_shapes(config, topology):
    _, tpu, _, binding = _binding(config, topology)
    report = aot.compile_program(binding)
    assert not aot.misfits([report], tpu.chip), aot.misfits([report], tpu.chip)
