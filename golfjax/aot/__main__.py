"""`python -m golfjax.aot`: compile a run for a TPU slice and say whether it fits.

    python -m golfjax.aot --config=experiments/configs/golf.py:qwen3_8b_math --topology=v5p-64
    python -m golfjax.aot --config=experiments/configs/vespo.py:qwen3_8b_math --topology=v5p-64 \
        --json=aot.json --config.train.micro_batches=32

`--config` is experiments/main.py's (a file, its variant, `--config.KEY=VALUE`
overrides); `--topology` a slice (`v5p-64`, `v5e-16`, `v6e-8`, `v5p:2x4x4`),
`--num_slices` for a Multislice. golfjax/aot/__init__.py says what the table
holds. Exits 1 naming every program that does not fit, 2 on a config or
slice it cannot compile (a bad key, a run the slice cannot hold, no libtpu). Needs libtpu (`pip install -e '.[tpu-aot]'`); the host may
be any machine, and JAX runs on its CPU meanwhile.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and variant, e.g. experiments/configs/golf.py:qwen3_8b_math.",
    lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "The TPU slice: v5p-64, v5e-16, v6e-8, v5p:2x4x4, ...")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices (> 1: Multislice).")
_ONLY = flags.DEFINE_list("programs", [], "Compile only programs whose name contains one of these "
                          "(e.g. train,decode); default all.")
_JSON = flags.DEFINE_string("json", None, "Also write the reports to this JSON file.")
flags.mark_flags_as_required(["config", "topology"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import jax

    # The host compiles; it runs nothing on an accelerator of its own (libtpu
    # would otherwise look for a local TPU).
    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    from golfjax import aot
    from golfjax import config as config_lib
    from golfjax.aot import plan, slices

    try:
        tpu = slices.parse(_TOPOLOGY.value, _NUM_SLICES.value)
        cfg = config_lib.build(config_lib.RunConfig, _CONFIG.value)
        config = plan.model_config(cfg)
        chip = tpu.chip
        print(f"golfjax.aot: {_config_arg()} on {tpu.describe()}")
        print(f"  model: {config.num_params / 1e9:.2f}B parameters ({config.param_dtype}),"
              f" {config.num_layers} layers; mesh (data, fsdp, tensor) {_mesh(cfg, tpu.chips)}"
              + (f", and {cfg.schedule.rollout_devices} chips sampling" if cfg.schedule.rollout_devices else ""))
        print(f"  chip: {chip.hbm_bytes / slices.GIB:.0f} GiB HBM, {chip.hbm_bytes_per_s / 1e9:.0f} GB/s,"
              f" {chip.peak_flops / 1e12:.0f} TFLOP/s bf16 (public figures)", flush=True)
        reports = aot.compile_run(cfg, tpu, only=_ONLY.value, on_report=lambda r: print(
            f"  compiled {r.program.name} in {r.compile_s:.0f} s", flush=True))
    except (ValueError, slices.NoTopology) as e:  # Before any compile.
        print(f"golfjax.aot: {e}", file=sys.stderr)
        sys.exit(2)
    print()
    print(aot.table(reports, chip))
    if _JSON.value:
        with open(_JSON.value, "w", encoding="utf-8") as f:
            json.dump({"config": _config_arg(), "topology": tpu.describe(), "chip": chip.name,
                       "reports": [r.to_dict(chip) for r in reports]}, f, indent=1)
    bad = aot.misfits(reports, chip)
    if bad:
        print("\ngolfjax.aot: does not fit:\n" + "\n".join(f"  {line}" for line in bad), file=sys.stderr)
        sys.exit(1)
    print(f"\ngolfjax.aot: every program fits a {chip.name} chip's HBM.")


def _mesh(cfg: Any, chips: int) -> tuple[int, ...]:
    """The learner's mesh sizes on `chips` chips (-1 resolved)."""
    sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    known = math.prod(s for s in sizes if s != -1)
    devices = chips - (cfg.schedule.rollout_devices if cfg.schedule.async_rollout else 0)
    return tuple(devices // known if s == -1 else s for s in sizes)


def _config_arg() -> str:
    """`--config`'s file and variant, and its overrides, as given."""
    flag = flags.FLAGS["config"]
    overrides = config_flags.get_override_values(flag)
    return " ".join([config_flags.get_config_filename(flag)]
                    + [f"--config.{key}={value}" for key, value in sorted(_flat(overrides).items())])


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


if __name__ == "__main__":
    app.run(main)
