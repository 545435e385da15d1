"""`make demo`: GOLF on the built-in `arith` task, on whatever backend is present.

    python -m golfjax.demo [--workdir workdirs/demo] [--variant arith]

Runs experiments/configs/golf.py:arith (a 450-step supervised cold start that
teaches the answer format and the use of a revealed answer, then 30 GOLF steps
on the 1-digit sums that carry, where the cold-started model fails), prints
progress, and writes `accuracy.png`: held-out accuracy versus training samples
generated. `--variant smoke` is the short version (docs/results.md has
measured run times). The work directory is the run's
identity: running the demo again resumes (or just replots) it; delete the
directory to start over.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.join("workdirs", "demo"))
    parser.add_argument("--variant", default="arith", help="a variant of experiments/configs/golf.py")
    args = parser.parse_args(argv)

    from experiments.configs import golf as golf_config
    from golfjax import metrics as metrics_lib
    from golfjax import plotting
    from golfjax import train_loop

    config = golf_config.get_config(args.variant)
    print(f"GOLF on {config.task.name}: {config.cold_start.steps} cold-start steps, then"
          f" {config.train.steps} RL steps; work directory {args.workdir}")
    last = train_loop.train(config, args.workdir)
    curve = plotting.eval_curve(metrics_lib.read_metrics(args.workdir))
    path = os.path.join(args.workdir, "accuracy.png")
    plotting.plot_curves({"GOLF": curve}, path, title=f"GOLF on {config.task.name}")
    print(f"held-out accuracy {last.get('eval/accuracy', float('nan')):.3f}"
          f" after {int(last.get('samples/generated', 0))} samples; curve: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
