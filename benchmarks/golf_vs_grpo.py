"""GOLF vs GRPO: what each needs to reach a fixed held-out accuracy on `arith`.

    .venv/bin/python benchmarks/golf_vs_grpo.py --out benchmarks/results/golf_vs_grpo.json

The issue's measurement (docs/algorithms.md#golf; the paper reports 2.2x sample
efficiency over scalar-reward RL):

1. One supervised cold start (experiments/configs/golf.py:arith's cold-start
   section: the answer format on carry-free 1-digit sums, and the copy of a
   revealed answer in refinement-format batches), run once and
   exported as a Hugging Face checkpoint (`golfjax.export`), so every RL run
   starts from the SAME weights.
2. From it, `--seeds` RL runs of each method on the 1-digit sums that carry: GOLF
   (experiments/configs/golf.py:arith) and the GRPO baseline
   (experiments/configs/grpo.py:arith, the same loop with feedback off). Each is
   an ordinary run of `golfjax.train_loop.train` in its own work directory under
   `--root`, so an interrupted benchmark resumes where it stopped.
3. Held-out accuracy (mean over `eval.samples` samples of `eval.num_problems`
   test problems) is logged every `--eval_every` RL steps. For each run the
   script finds the first evaluation at or above `--target` and reads two
   counters there: training prompts consumed, and samples generated (GOLF's
   refinement samples included). A method's figure is the mean over the seeds
   that reached the target; the ratio GRPO / GOLF > 1 means GOLF needed fewer.
   Runs that never reach the target are counted and reported, not dropped
   silently; when some seeds of a method miss, the ratio is over the seeds that
   reached it and the JSON says so.

Writes `--out` (JSON: settings, every run's curve, crossings, means, ratios,
wall times) and a PNG next to it (accuracy vs samples generated and vs prompts,
every seed). `--quick` shrinks everything to exercise the pipeline in a few
minutes; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.configs import common  # noqa: E402
from golfjax import export as export_lib  # noqa: E402
from golfjax import metrics as metrics_lib  # noqa: E402
from golfjax import train_loop  # noqa: E402

METHODS = ("golf", "grpo")


def _config(method: str, seed: int, args: argparse.Namespace, policy: str) -> Any:
    c = common.feedback_config(f"arith,seed={seed}", golf=method == "golf")
    c.model.hf_path = policy
    c.cold_start.steps = 0
    c.train.steps = args.grpo_steps if method == "grpo" else args.rl_steps
    c.eval.every = args.eval_every
    c.eval.num_problems = args.eval_problems
    c.checkpoint.every = args.eval_every
    if args.quick:
        c.train.prompts_per_step = 4
        c.sampling.group_size = 4
        c.eval.samples = 2
    return c


def cold_start(args: argparse.Namespace) -> tuple[str, dict[str, float], float]:
    """Runs (or finds) the shared cold start; returns its HF export and eval."""
    workdir = os.path.join(args.root, "cold_start")
    policy = os.path.join(args.root, "cold_start_policy")
    c = common.feedback_config("arith", golf=False)
    c.train.steps = 0  # Cold start only; its last step is evaluated on the RL task.
    c.eval.num_problems = args.eval_problems
    if args.cold_steps is not None:
        c.cold_start.steps = args.cold_steps
    c.checkpoint.every = max(1, c.cold_start.steps)
    started = time.monotonic()
    last = train_loop.train(c, workdir)
    if not os.path.exists(os.path.join(policy, "config.json")):
        export_lib.export(workdir, policy)
    evals = [r for r in metrics_lib.read_metrics(workdir) if "eval/accuracy" in r]
    return policy, evals[-1] if evals else last, time.monotonic() - started


def crossing(records: list[dict[str, Any]], target: float) -> dict[str, float] | None:
    """Counters at the first evaluation with accuracy >= target (None: never)."""
    for r in records:
        if r.get("eval/accuracy", -1.0) >= target:
            return {
                "step": float(r["step"]),
                "accuracy": float(r["eval/accuracy"]),
                "prompts": float(r.get("samples/prompts_seen", 0.0)),
                "samples": float(r.get("samples/generated", 0.0)),
            }
    return None


def curve(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    evals = [r for r in records if "eval/accuracy" in r]
    return {
        "step": [float(r["step"]) for r in evals],
        "prompts": [float(r.get("samples/prompts_seen", 0.0)) for r in evals],
        "samples": [float(r.get("samples/generated", 0.0)) for r in evals],
        "accuracy": [float(r["eval/accuracy"]) for r in evals],
    }


def summarise(runs: dict[str, list[dict[str, Any]]], seeds: int) -> dict[str, Any]:
    """Means over the seeds that reached the target, and GRPO / GOLF ratios."""
    out: dict[str, Any] = {}
    for method in METHODS:
        reached = [r["crossing"] for r in runs[method] if r["crossing"] is not None]
        out[method] = {
            "seeds_reached": len(reached),
            "seeds": seeds,
            "prompts_mean": float(np.mean([c["prompts"] for c in reached])) if reached else None,
            "samples_mean": float(np.mean([c["samples"] for c in reached])) if reached else None,
            "final_accuracy_mean": float(np.mean([r["curve"]["accuracy"][-1] for r in runs[method]])),
        }
    ratios: dict[str, Any] = {}
    for counter in ("prompts", "samples"):
        golf, grpo = out["golf"][f"{counter}_mean"], out["grpo"][f"{counter}_mean"]
        ratios[counter] = grpo / golf if golf and grpo else None
    out["ratio_grpo_over_golf"] = ratios
    # No GRPO seed reached the target within its budget: GRPO needs more than
    # its smallest run's budget, so the ratio is at least budget / GOLF's mean.
    if not out["grpo"]["seeds_reached"] and out["golf"]["seeds_reached"]:
        out["ratio_grpo_over_golf_at_least"] = {
            counter: min(r["curve"][counter][-1] for r in runs["grpo"]) / out["golf"][f"{counter}_mean"]
            for counter in ("prompts", "samples")
        }
    out["note"] = (
        "means over the seeds that reached the target; a ratio > 1 means GOLF needed less"
        if all(out[m]["seeds_reached"] == seeds for m in METHODS)
        else "NOT every seed reached the target: means and ratios are over the seeds that did"
    )
    return out


def plot(runs: dict[str, list[dict[str, Any]]], target: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = {"golf": "tab:blue", "grpo": "tab:orange"}
    for ax, counter, label in ((axes[0], "samples", "samples generated"), (axes[1], "prompts", "training prompts consumed")):
        for method in METHODS:
            for i, run in enumerate(runs[method]):
                ax.plot(run["curve"][counter], run["curve"]["accuracy"], color=colors[method],
                        alpha=0.8, marker=".", label=method.upper() if i == 0 else None)
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:g}")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy")
    axes[0].legend()
    fig.suptitle("GOLF vs GRPO on arith, from one cold-start checkpoint (one line per seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/golf_vs_grpo.json")
    parser.add_argument("--root", default="workdirs/golf_vs_grpo", help="work directories of every run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rl_steps", type=int, default=None, help="default: the arith config's")
    parser.add_argument("--grpo_steps", type=int, default=None,
                        help="RL steps of the GRPO runs (default: --rl_steps); a longer budget"
                             " bounds how much more GRPO needs when it misses the target")
    parser.add_argument("--eval_every", type=int, default=5)
    parser.add_argument("--eval_problems", type=int, default=None, help="default: the arith config's")
    parser.add_argument("--cold_steps", type=int, default=None, help="default: the arith config's")
    parser.add_argument("--target", type=float, default=0.3, help="held-out accuracy to reach")
    parser.add_argument("--quick", action="store_true", help="a few minutes, to exercise the pipeline")
    args = parser.parse_args(argv)
    base = common.task_config("arith")
    if args.quick:
        args.cold_steps = 4 if args.cold_steps is None else args.cold_steps
        args.rl_steps = 2 if args.rl_steps is None else args.rl_steps
        args.eval_every = 1
        args.eval_problems = 8 if args.eval_problems is None else args.eval_problems
        args.seeds = min(args.seeds, 2)
    args.rl_steps = args.rl_steps or base.train.steps
    args.grpo_steps = args.grpo_steps or args.rl_steps
    args.eval_problems = args.eval_problems or base.eval.num_problems

    started = time.monotonic()
    policy, cold_eval, cold_seconds = cold_start(args)
    print(f"cold start: held-out accuracy {cold_eval.get('eval/accuracy', float('nan')):.3f}"
          f" ({cold_seconds:.0f} s); policy {policy}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for seed in range(args.seeds):
        for method in METHODS:
            workdir = os.path.join(args.root, f"{method}_seed{seed}")
            t0 = time.monotonic()
            train_loop.train(_config(method, seed, args, policy), workdir)
            records = metrics_lib.read_metrics(workdir)
            run = {
                "seed": seed,
                "workdir": os.path.relpath(workdir),
                "seconds": time.monotonic() - t0,
                "curve": curve(records),
                "crossing": crossing(records, args.target),
            }
            runs[method].append(run)
            print(f"{method} seed {seed}: final accuracy {run['curve']['accuracy'][-1]:.3f},"
                  f" target reached at {run['crossing']}", flush=True)

    result = {
        "settings": {k: v for k, v in vars(args).items()},
        "cold_start": {"eval": cold_eval, "seconds": cold_seconds},
        "runs": runs,
        "summary": summarise(runs, args.seeds),
        "seconds": time.monotonic() - started,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg": list(os.getloadavg())},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    plot(runs, args.target, os.path.splitext(args.out)[0] + ".png")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
