"""`make demo`: GOLF and two GRPO baselines in the sparse-reward regime, from one base policy.

    python -m golfjax.demo [--workdir workdirs/demo] [--seed 0] [--steps 8] [--smoke]

Runs experiments/configs/reverse.py's sparse regime from its committed base
policy (a small model that reverses strings of up to 5 letters, gets a few
6-letter ones right and can copy a revealed answer) on 6-letter strings,
where most groups of 8 samples fail entirely: GOLF (`sparse_golf`), GRPO
(`sparse_grpo`, the feedback loop off) and GRPO with groups of 16
(`sparse_grpo_g16`, GOLF's samples per prompt). Every run gets the same budget
of samples generated (GRPO, with half of GOLF's samples a step, takes twice
the steps). All are evaluated on the same 200 held-out strings that no phase
trains on; `accuracy.png` draws the three held-out curves against samples
generated (GOLF's refinements counted), and the last lines say where GOLF
stood against each baseline at equal samples.

The default, 8 GOLF steps (3,072 samples a run), is meant to fit the demo's
10 minutes on an idle 2-core CPU; that far the three curves have not left the
base policy beyond the evaluation's noise. In longer runs (benchmarks/golf_vs_grpo.py, docs/results.md#sparse)
GOLF was behind both baselines per sample; `--steps 40` draws that part of
the curves. `--smoke` runs two steps of each. The work directory is the
runs' identity: running the demo again resumes (or lengthens, or just
replots) them; delete it to start over.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

# (label, variant of experiments/configs/reverse.py, steps as a multiple of GOLF's)
RUNS = (("GOLF", "sparse_golf", 1), ("GRPO", "sparse_grpo", 2), ("GRPO, groups of 16", "sparse_grpo_g16", 1))
# GOLF's RL steps by default: 3,072 samples generated per run; the whole demo
# took 7.5 minutes of CPU time (docs/results.md#sparse-demo), so it should fit
# the demo's 10 minutes on an idle 2-core CPU (estimated, not measured idle).
STEPS = 8


def compare(golf: tuple[list[float], list[float]], baseline: tuple[list[float], list[float]]) -> dict[str, float]:
    """GOLF's held-out accuracy against a baseline's at GOLF's evaluations
    within both curves' range of samples (the baseline's curve interpolated
    linearly in samples): how many points GOLF was ahead, and the mean gap."""
    xs, ys = np.asarray(golf[0]), np.asarray(golf[1])
    inside = (xs > 0) & (xs <= max(baseline[0]))
    gaps = ys[inside] - np.interp(xs[inside], baseline[0], baseline[1])
    return {"points": int(inside.sum()), "ahead": int((gaps > 0).sum()),
            "mean_gap": float(gaps.mean()) if gaps.size else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.join("workdirs", "demo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=STEPS,
                        help="GOLF's RL steps (the baselines get the same samples); evaluated at the start,"
                             " half-way and at the end")
    parser.add_argument("--smoke", action="store_true", help="two steps of each run, to exercise the pipeline")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.steps % 2:
        parser.error(f"--steps must be a positive even number, got {args.steps}")

    from experiments.configs import reverse as reverse_config
    from golfjax import metrics as metrics_lib
    from golfjax import plotting
    from golfjax import train_loop

    configs = {}
    for label, variant, factor in RUNS:
        c = reverse_config.get_config(f"{variant},seed={args.seed}")
        c.train.steps, c.eval.every = args.steps, args.steps // 2
        if args.smoke:
            reverse_config.smoke(c)
        c.train.steps *= factor
        c.eval.every *= factor
        c.checkpoint.every = c.train.steps
        configs[label] = c
    golf = configs["GOLF"]
    print(f"GOLF vs GRPO on {golf.task.name} (6-letter strings): {golf.train.prompts_per_step} prompts a step,"
          f" {golf.train.steps} GOLF steps and the same samples for each baseline, from the committed base"
          f" policy; held-out accuracy on {golf.eval.num_problems} strings never trained on;"
          f" work directory {args.workdir}", flush=True)
    curves = {}
    for label, config in configs.items():
        workdir = os.path.join(args.workdir, label.split(",")[0].lower() + ("16" if "16" in label else ""))
        started = time.monotonic()
        train_loop.train(config, workdir)
        curves[label] = plotting.eval_curve(metrics_lib.read_metrics(workdir))
        samples, accuracy = curves[label]
        print(f"{label}: held-out accuracy {accuracy[0]:.3f} -> {accuracy[-1]:.3f} after {samples[-1]:.0f}"
              f" samples ({' '.join(f'{a:.2f}' for a in accuracy)}) in {time.monotonic() - started:.0f} s",
              flush=True)
    path = os.path.join(args.workdir, "accuracy.png")
    plotting.plot_curves(curves, path, title=f"GOLF vs GRPO on 6-letter reverse (seed {args.seed})")
    for label in list(configs)[1:]:
        c = compare(curves["GOLF"], curves[label])
        print(f"GOLF against {label}: ahead at {c['ahead']} of {c['points']} evaluations at equal samples,"
              f" by {100 * c['mean_gap']:+.1f} points on average")
    print(f"curves: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
