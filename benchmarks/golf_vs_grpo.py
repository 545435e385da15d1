"""GOLF vs GRPO on `reverse`: what each needs to reach a held-out accuracy, with a bootstrap interval.

    python benchmarks/golf_vs_grpo.py --seeds 3 --target 0.6 --out benchmarks/results/golf_vs_grpo.json

The issue's measurement (docs/algorithms.md#golf; the GOLF paper reports 2.2x
sample efficiency over scalar-reward RL):

1. `--seeds` RL runs of each method from the committed base policy
   (experiments/configs/reverse.py: `golf` and `grpo`, the same loop with the
   feedback off; seed `s` is the variant's option `seed=s`), each an ordinary
   run of `golfjax.train_loop.train` in its own work directory under `--root`,
   so an interrupted benchmark resumes where it stopped and finished runs are
   read back. Held-out accuracy (the config's 200 held-out strings, 2 samples
   each) is measured every `--eval_every` RL steps.
2. For each run, the first evaluation at or above `--target`, and two counters
   there: training prompts consumed and samples generated (GOLF's refinement
   samples included). A run that never reaches the target is censored at its
   budget (its counters at its last evaluation): it needed more than that.
3. Per method, the mean over seeds; the ratio GRPO / GOLF of the means (above
   1: GOLF needed less), and a 95% percentile bootstrap interval of it
   (`--draws` draws; each draw resamples the seeds of each method with
   replacement, independently). With every seed reaching the target the
   ratio and its interval are plain estimates. When seeds of only one method
   missed, their censored budgets make the ratio a bound (GRPO missed: a lower
   bound; GOLF missed: an upper bound) and the JSON says which; when both
   methods have misses the ratio is reported as undetermined.

Writes `--out` (JSON: settings, every run's curve and crossing, per-method
means, ratios, intervals, wall times, machine) and a PNG next to it (held-out
accuracy against samples generated and against prompts, every seed).
`--quick` shrinks everything to exercise the pipeline; its numbers mean
nothing.
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

from benchmarks import bootstrap  # noqa: E402

METHODS = ("golf", "grpo")
COUNTERS = ("samples", "prompts")


def config(method: str, seed: int, args: argparse.Namespace) -> Any:
    """experiments/configs/reverse.py:<method>,seed=<seed> with the benchmark's schedule."""
    from experiments.configs import reverse

    c = reverse.get_config(f"{method},seed={seed}")
    c.train.steps = args.rl_steps
    c.eval.every = args.eval_every
    c.checkpoint.every = args.rl_steps
    if args.eval_problems is not None:
        c.eval.num_problems = args.eval_problems
    if args.quick:
        c.train.prompts_per_step = 4
        c.sampling.group_size = 4
    return c


def crossing(records: list[dict[str, Any]], target: float) -> dict[str, float] | None:
    """Counters at the first evaluation with accuracy >= target (None: never)."""
    for r in records:
        if r.get("eval/accuracy", -1.0) >= target:
            return {
                "step": float(r["step"]),
                "accuracy": float(r["eval/accuracy"]),
                "prompts": float(r.get("samples/prompts_seen", 0.0)),
                "samples": float(r.get("samples/generated_total", 0.0)),
            }
    return None


def curve(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    evals = [r for r in records if "eval/accuracy" in r]
    return {
        "step": [float(r["step"]) for r in evals],
        "prompts": [float(r.get("samples/prompts_seen", 0.0)) for r in evals],
        "samples": [float(r.get("samples/generated_total", 0.0)) for r in evals],
        "accuracy": [float(r["eval/accuracy"]) for r in evals],
    }


def needed(run: dict[str, Any], counter: str) -> tuple[float, bool]:
    """What a run needed of `counter` to reach the target, and whether it is censored
    (never reached: its budget, the counter at its last evaluation)."""
    if run["crossing"] is not None:
        return run["crossing"][counter], False
    return run["curve"][counter][-1], True


def bootstrap_ratio(grpo: np.ndarray, golf: np.ndarray, draws: int, seed: int) -> dict[str, Any]:
    """Ratio of means GRPO / GOLF and its 95% percentile interval; each draw
    resamples each method's seeds with replacement, independently (a draw
    whose GOLF mean is 0, the target met before RL, has no ratio)."""
    return bootstrap.ratio_of_means(grpo, golf, draws, np.random.default_rng(seed))


def summarise(runs: dict[str, list[dict[str, Any]]], draws: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Per-method means (censored seeds at their budget), GRPO / GOLF ratios and intervals."""
    for method in METHODS:
        if not runs.get(method):
            raise ValueError(f"summarise: no runs of method {method!r}")
    out: dict[str, Any] = {}
    for method in METHODS:
        out[method] = {
            "seeds": len(runs[method]),
            "seeds_reached": sum(r["crossing"] is not None for r in runs[method]),
            "final_accuracy_mean": float(np.mean([r["curve"]["accuracy"][-1] for r in runs[method]])),
        }
        for counter in COUNTERS:
            values = [needed(r, counter)[0] for r in runs[method]]
            out[method][f"{counter}_per_seed"] = values
            out[method][f"{counter}_mean"] = float(np.mean(values))
    missed = {m: out[m]["seeds_reached"] < out[m]["seeds"] for m in METHODS}
    if not any(missed.values()):
        kind, note = "estimate", "every seed reached the target; a ratio above 1 means GOLF needed less"
    elif missed["grpo"] and not missed["golf"]:
        kind, note = "lower_bound", ("GRPO seeds missed the target and count at their budget:"
                                     " the ratio and its interval bound GRPO / GOLF from below")
    elif missed["golf"] and not missed["grpo"]:
        kind, note = "upper_bound", ("GOLF seeds missed the target and count at their budget:"
                                     " the ratio and its interval bound GRPO / GOLF from above")
    else:
        kind, note = "undetermined", ("seeds of both methods missed the target: the ratio of"
                                      " censored means is neither an estimate nor a bound")
    out["ratio_grpo_over_golf"] = {
        counter: {
            "kind": kind,
            **bootstrap_ratio(np.array(out["grpo"][f"{counter}_per_seed"]),
                              np.array(out["golf"][f"{counter}_per_seed"]), draws, seed),
        }
        for counter in COUNTERS
    }
    if kind == "undetermined":
        for counter in COUNTERS:
            out["ratio_grpo_over_golf"][counter].update(ratio=None, ci95=[None, None])
    out["note"] = note
    return out


def plot(runs: dict[str, list[dict[str, Any]]], target: float, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = {"golf": "tab:blue", "grpo": "tab:orange"}
    for ax, counter, label in ((axes[0], "samples", "samples generated"),
                               (axes[1], "prompts", "training prompts consumed")):
        for method in METHODS:
            for i, run in enumerate(runs[method]):
                ax.plot(run["curve"][counter], run["curve"]["accuracy"], color=colors[method],
                        alpha=0.8, marker=".", label=method.upper() if i == 0 else None)
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:g}")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/golf_vs_grpo.json")
    parser.add_argument("--root", default="workdirs/golf_vs_grpo", help="work directories of every run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rl_steps", type=int, default=60, help="RL steps of every run")
    parser.add_argument("--eval_every", type=int, default=5)
    parser.add_argument("--eval_problems", type=int, default=None,
                        help="held-out strings evaluated (default: the config's 200)")
    parser.add_argument("--target", type=float, default=0.6, help="held-out accuracy to reach")
    parser.add_argument("--draws", type=int, default=10_000, help="bootstrap draws")
    parser.add_argument("--quick", action="store_true", help="to exercise the pipeline; numbers mean nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.rl_steps, args.eval_every, args.seeds = 2, 1, min(args.seeds, 2)
        args.eval_problems = args.eval_problems or 8
    for name in ("seeds", "rl_steps", "eval_every", "draws"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 0.0 < args.target <= 1.0:
        parser.error(f"--target must be in (0, 1], got {args.target}")

    from golfjax import metrics as metrics_lib
    from golfjax import train_loop

    started = time.monotonic()
    load_before = list(os.getloadavg())
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for seed in range(args.seeds):
        for method in METHODS:
            workdir = os.path.join(args.root, f"{method}_seed{seed}")
            t0 = time.monotonic()
            train_loop.train(config(method, seed, args), workdir)
            records = metrics_lib.read_metrics(workdir)
            run = {
                "seed": seed,
                "workdir": os.path.relpath(workdir),
                "seconds": time.monotonic() - t0,
                "curve": curve(records),
                "crossing": crossing(records, args.target),
            }
            runs[method].append(run)
            print(f"{method} seed {seed}: accuracy {run['curve']['accuracy'][0]:.3f} ->"
                  f" {run['curve']['accuracy'][-1]:.3f}, target reached at {run['crossing']}"
                  f" ({run['seconds']:.0f} s)", flush=True)

    summary = summarise(runs, args.draws)
    result = {
        "command": " ".join(["benchmarks/golf_vs_grpo.py"] + (argv if argv is not None else sys.argv[1:])),
        "settings": vars(args),
        "runs": runs,
        "summary": summary,
        "seconds": time.monotonic() - started,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": list(os.getloadavg())},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    plot(runs, args.target, os.path.splitext(args.out)[0] + ".png",
         f"GOLF vs GRPO on reverse from the committed base policy ({args.seeds} seeds each)")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
