"""The papers' runs compiled for the TPU slices README.md names: docs/results.md's AOT tables.

    python benchmarks/aot_presets.py --out benchmarks/results/aot_presets.json

runs `golfjax.aot` (golfjax/aot/) on each paper preset and its slice, one
after the other, and prints each table, then the same as docs/results.md
holds it, in Markdown (`--only golf.py:qwen3_8b_math` for one). Each preset's programs take several
minutes to compile on a 2-core CPU. Exits 1 if a program does not fit.

`PRESETS` is the list README.md's commands follow (tests/readme_test.py),
and the one tests/aot/presets_test.py checks for their slices.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (config, slice): each preset on the slice whose HBM is about the paper's
# GPUs' (32 GPUs: a v5p-64's 32 chips), or, for VESPO's fully asynchronous
# run, the largest slice golfjax's single-process asynchronous rollout can use.
PRESETS = (
    ("experiments/configs/golf.py:qwen3_8b_math", "v5p-64"),
    ("experiments/configs/golf.py:qwen3_4b_if", "v5p-64"),
    ("experiments/configs/vespo.py:qwen3_8b_math", "v5p-64"),
    ("experiments/configs/vespo.py:qwen3_8b_math,async=1", "v5p-8"),
    ("experiments/configs/vespo.py:qwen3_30b_a3b_math", "v5p-64"),
)


def load_config(config: str):
    """The RunConfig of `FILE:VARIANT`, as experiments/main.py builds it."""
    import importlib.util

    from golfjax import config as config_lib

    path, _, variant = config.partition(":")
    spec = importlib.util.spec_from_file_location("preset_config", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return config_lib.build(config_lib.RunConfig, module.get_config(variant or None))


def markdown(result: dict) -> str:
    """One preset's reports as docs/results.md's table (GiB per device)."""
    gib = 2**30
    lines = ["| program | shapes | args | temp | out | held | total | of HBM | est. TFLOP | est. GB"
             " | est. time | compile s |", "|---" * 12 + "|"]
    for r in result["reports"]:
        seconds = r["est_seconds"]
        lines.append(
            f"| {r['program']} | {r['shapes']} | {r['argument_bytes'] / gib:.2f} | {r['temp_bytes'] / gib:.2f}"
            f" | {(r['output_bytes'] - r['alias_bytes']) / gib:.2f} | {r['held_bytes'] / gib:.2f}"
            f" | {r['total_bytes'] / gib:.2f} | {'' if r['fits'] else 'DOES NOT FIT '}"
            f"{100 * r['total_bytes'] / result['hbm_bytes']:.0f}% | {r['est_flops'] / 1e12:.3g}"
            f" | {r['est_bytes'] / 1e9:.3g} | {seconds:.3g} s | {r['compile_s']:.0f} |")
    return "\n".join(lines)


def _commit() -> str:
    result = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="Write every report to this JSON file.")
    parser.add_argument("--only", action="append", default=[], help="A preset's FILE:VARIANT (repeatable).")
    args = parser.parse_args()
    import jax

    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    from golfjax import aot
    from golfjax.aot import slices

    results, failed = [], False
    for config, topology in PRESETS:
        if args.only and not any(config.endswith(name) for name in args.only):
            continue
        tpu = slices.parse(topology)
        print(f"## {config} on {tpu.describe()}", flush=True)
        reports = aot.compile_run(load_config(config), tpu, on_report=lambda r: print(
            f"  compiled {r.program.name} in {r.compile_s:.0f} s", flush=True))
        print(aot.table(reports, tpu.chip), flush=True)
        bad = aot.misfits(reports, tpu.chip)
        failed |= bool(bad)
        for line in bad:
            print(f"DOES NOT FIT: {line}", flush=True)
        results.append({"config": config, "topology": topology, "chip": tpu.chip.name,
                        "hbm_bytes": tpu.chip.hbm_bytes, "reports": [r.to_dict(tpu.chip) for r in reports]})
        print(markdown(results[-1]), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"date": datetime.date.today().isoformat(), "commit": _commit(),
                       "jax": jax.__version__, "host": platform.platform(), "cpus": os.cpu_count(),
                       "load_average": os.getloadavg(), "presets": results}, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
