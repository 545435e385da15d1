"""Every check of issue 18 on one accelerator, in one command, written as JSON.

    python benchmarks/accelerator.py --out benchmarks/results/accelerator.json

runs, each in its own process (a failure such as out-of-memory is recorded and
the run goes on), with a per-check time limit:

  train_16k      train step, qwen2.5-0.5b, bf16, remat, 2 rows x 16,384 tokens
  train_4k       train step, qwen2.5-0.5b, bf16, remat, 4 rows x 4,096 tokens
  train_1b       train step, llama3.2-1b, bf16, no remat, 16 rows x 1,024 tokens
  train_1b_remat the same with remat
  sample_512     sampler, qwen2.5-0.5b, 64 prompts x 8 samples (512 rows),
                 P 128, 512 new tokens (`decode_layers` auto: unrolled layers
                 on a GPU)
  sample_512_scan      the same with scanned layers (`--decode-layers scan`)
  sample_512_scan_dsf  scanned, with XLA's GPU dynamic-slice fusion on
                 (`--xla_gpu_enable_dynamic_slice_fusion`), which lets a
                 matmul read a layer's slice in place; the three give the
                 compile seconds and tokens/s behind "auto"'s choice

(sequences are P = 128 prompt slots plus the rest as response). Each train
check reports MFU (model FLOPs / step time / the device's dense bf16 peak,
`train_step.PEAK_FLOPS`), the step's compile seconds, its compiled temp bytes
and bytes accessed; the sampler check reports tokens/s, decode tokens/s, the
fraction of the memory-bandwidth bound (`sampler.BANDWIDTH`), the first
call's seconds (compiling prefill and decode) and the decode step's compiled
bytes accessed against `sampling.decode_bytes_per_step`, and writes that
step's optimised HLO next to the JSON (`<out>.<check>.decode_step.hlo.txt`),
so where a step's bytes go can be read after the machine is gone. The JSON
also holds the device, the JAX version, the date and the git commit.

--smoke runs the same seven checks at tiny shapes (the `tiny` preset, a few
tokens), so the whole path is exercised on a CPU in a few minutes.
The per-check limits, cut to what is left of `--budget-s` for the whole run,
keep it under 8 minutes on one H200.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (script, flags at full size, flags for --smoke)
CHECKS: dict[str, tuple[str, list[str], list[str]]] = {
    "train_16k": ("train_step.py",
                  ["--configs=qwen2.5-0.5b", "--rows=2", "--prompt=128",
                   "--response=16256", "--remat"],
                  ["--configs=tiny", "--rows=2", "--prompt=16", "--response=112",
                   "--remat"]),
    "train_4k": ("train_step.py",
                 ["--configs=qwen2.5-0.5b", "--rows=4", "--prompt=128",
                  "--response=3968", "--remat"],
                 ["--configs=tiny", "--rows=4", "--prompt=16", "--response=48",
                  "--remat"]),
    "train_1b": ("train_step.py",
                 ["--configs=llama3.2-1b", "--rows=16", "--prompt=128",
                  "--response=896"],
                 ["--configs=tiny", "--rows=4", "--prompt=8", "--response=24"]),
    "train_1b_remat": ("train_step.py",
                       ["--configs=llama3.2-1b", "--rows=16", "--prompt=128",
                        "--response=896", "--remat"],
                       ["--configs=tiny", "--rows=4", "--prompt=8", "--response=24",
                        "--remat"]),
    "sample_512": ("sampler.py",
                   ["--preset=qwen2.5-0.5b", "--batches=64", "--group=8",
                    "--prompt-len=128", "--new-tokens=512", "--repeats=2"],
                   ["--preset=tiny", "--batches=4", "--group=2", "--prompt-len=16",
                    "--new-tokens=16", "--repeats=1", "--mem-bandwidth-gbs=10"]),
    "sample_512_scan": ("sampler.py",
                        ["--preset=qwen2.5-0.5b", "--batches=64", "--group=8",
                         "--prompt-len=128", "--new-tokens=512", "--repeats=1",
                         "--decode-layers=scan"],
                        ["--preset=tiny", "--batches=4", "--group=2",
                         "--prompt-len=16", "--new-tokens=16", "--repeats=1",
                         "--mem-bandwidth-gbs=10", "--decode-layers=scan"]),
}
CHECKS["sample_512_scan_dsf"] = CHECKS["sample_512_scan"]
# Extra XLA flags of a check's process (appended to any already set).
CHECK_XLA_FLAGS = {"sample_512_scan_dsf": "--xla_gpu_enable_dynamic_slice_fusion=true"}
# A check is not started with less than this many seconds of the budget left.
MIN_CHECK_S = 15.0
TRAIN_FLAGS = ["--steps=3", "--warmup=1", "--breakdown-runs=1", "--peak-size=8192",
               "--peak-repeats=2"]
SMOKE_TRAIN_FLAGS = ["--steps=1", "--warmup=1", "--breakdown-runs=1",
                     "--peak-size=256", "--peak-repeats=1"]


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_check(name: str, smoke: bool, timeout_s: float, tmp: str,
              hlo_prefix: str | None = None) -> dict[str, Any]:
    """One check in a subprocess; its JSON, or the error and the output's tail.

    A sampler check also writes its decode step's optimised HLO to
    `{hlo_prefix}.{name}.decode_step.hlo.txt` when `hlo_prefix` is given.
    """
    script, full, small = CHECKS[name]
    out = os.path.join(tmp, f"{name}.json")
    flags = small if smoke else full
    if script == "train_step.py":
        flags = flags + (SMOKE_TRAIN_FLAGS if smoke else TRAIN_FLAGS)
    elif hlo_prefix:
        flags = flags + [f"--hlo-out={hlo_prefix}.{name}.decode_step.hlo.txt"]
    command = [sys.executable, os.path.join(ROOT, "benchmarks", script), *flags,
               f"--out={out}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    if name in CHECK_XLA_FLAGS:
        env["XLA_FLAGS"] = " ".join(
            f for f in (os.environ.get("XLA_FLAGS"), CHECK_XLA_FLAGS[name]) if f)
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, text=True,
                              capture_output=True, timeout=timeout_s)
        failed = proc.returncode != 0
        tail = (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        failed, tail = True, f"timed out after {timeout_s:.0f} s: {str(e.stdout)[-2000:]}"
    flags = [f"XLA_FLAGS={CHECK_XLA_FLAGS[name]}"] if name in CHECK_XLA_FLAGS else []
    record: dict[str, Any] = {"command": " ".join(flags + command[1:]),
                              "wall_s": time.perf_counter() - start}
    if failed or not os.path.exists(out):
        return dict(record, error=tail)
    with open(out) as f:
        report = json.load(f)
    if script == "train_step.py":
        result = report["results"][0]
        keep = ("preset", "rows", "prompt", "response", "remat", "compute_dtype",
                "compile_s", "step_median_s", "tokens_per_s", "model_flops_per_step",
                "achieved_flops_per_s", "mfu", "fraction_of_peak",
                "matmul_peak_flops_per_s", "compiled_temp_bytes",
                "compiled_bytes_accessed", "peak_rss_mib")
        return dict(record, **{k: result.get(k) for k in keep})
    result = report["result"]
    keep = ("batch", "group", "new_tokens", "prompt_len", "decode_layers",
            "first_call_seconds",
            "seconds", "tokens_per_s", "prefill_seconds", "decode_tokens_per_s",
            "bound_tokens_per_s", "fraction_of_bandwidth_bound",
            "bandwidth_bytes_per_s", "decode_step_compiled")
    return dict(record, **{k: result.get(k) for k in keep})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/accelerator.json")
    parser.add_argument("--checks", default=",".join(CHECKS))
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes: exercises every check on a CPU")
    parser.add_argument("--timeout-s", type=float, default=85.0,
                        help="limit per check (the sampler checks get 1.5x)")
    parser.add_argument("--budget-s", type=float, default=470.0,
                        help="limit of the whole run: each check's limit is cut "
                        "to what is left, and a check with under "
                        f"{MIN_CHECK_S:.0f} s left is skipped")
    args = parser.parse_args()
    names = args.checks.split(",")
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        parser.error(f"unknown checks {unknown}; known: {', '.join(CHECKS)}")
    import jax  # After argument parsing; the checks import it in their own processes.

    device = jax.devices()[0]
    report: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "commit": _git_commit(), "jax": jax.__version__,
        "backend": jax.default_backend(), "device_kind": device.device_kind,
        "device_count": jax.device_count(), "smoke": args.smoke, "checks": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            limit = args.timeout_s * (1.5 if name.startswith("sample") else 1.0)
            left = args.budget_s - (time.perf_counter() - start)
            if left < MIN_CHECK_S:
                result = {"error": f"skipped: {left:.0f} s left of --budget-s "
                                   f"{args.budget_s:.0f}"}
            else:
                result = run_check(name, args.smoke, min(limit, left), tmp,
                                   hlo_prefix=os.path.splitext(args.out)[0])
            report["checks"][name] = result
            summary = {k: v for k, v in result.items()
                       if k in ("wall_s", "mfu", "fraction_of_bandwidth_bound",
                                "decode_layers",
                                "compile_s", "first_call_seconds",
                                "compiled_temp_bytes", "error")}
            print(name, json.dumps(summary)[:600], flush=True)
    report["wall_s"] = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out} ({report['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
