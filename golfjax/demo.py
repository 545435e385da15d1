"""`make demo`: GOLF and the GRPO baseline on `reverse`, from the same base policy.

    python -m golfjax.demo [--workdir workdirs/demo] [--seed 0] [--variant golf]

Runs experiments/configs/reverse.py:golf and its GRPO twin (the same run with
the feedback loop off) from the committed base policy, a small model that
reverses strings of 1-5 letters and can copy a revealed answer, on strings of
6-7 letters, which it gets wrong. Both are evaluated on the same 200 held-out
strings that no phase trains on; `accuracy.png` draws both held-out curves
against training samples generated. `--variant smoke` runs two steps of each.
The work directory is the runs' identity: running the demo again resumes (or
just replots) them; delete it to start over.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.join("workdirs", "demo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="golf", choices=("golf", "smoke"),
                        help="a GOLF variant of experiments/configs/reverse.py")
    args = parser.parse_args(argv)

    from experiments.configs import reverse as reverse_config
    from golfjax import metrics as metrics_lib
    from golfjax import plotting
    from golfjax import train_loop

    golf = reverse_config.get_config(f"{args.variant},seed={args.seed}")
    grpo = reverse_config.get_config(f"{args.variant},seed={args.seed}")
    grpo.golf.enabled = False
    print(f"GOLF vs GRPO on {golf.task.name}: {golf.train.steps} RL steps each from the"
          f" committed base policy, {golf.train.prompts_per_step} prompts x"
          f" {golf.sampling.group_size} samples per step; held-out accuracy on"
          f" {golf.eval.num_problems} strings never trained on, every {golf.eval.every} steps;"
          f" work directory {args.workdir}", flush=True)
    curves, finals = {}, {}
    for label, config in (("GOLF", golf), ("GRPO", grpo)):
        workdir = os.path.join(args.workdir, label.lower())
        started = time.monotonic()
        train_loop.train(config, workdir)
        curves[label] = plotting.eval_curve(metrics_lib.read_metrics(workdir))
        accuracy = curves[label][1]
        finals[label] = (accuracy[0], accuracy[-1])
        print(f"{label}: held-out accuracy {accuracy[0]:.3f} -> {accuracy[-1]:.3f}"
              f" ({' '.join(f'{a:.2f}' for a in accuracy)}) in {time.monotonic() - started:.0f} s",
              flush=True)
    path = os.path.join(args.workdir, "accuracy.png")
    plotting.plot_curves(curves, path, title=f"GOLF vs GRPO on {golf.task.name} (seed {args.seed})")
    for label, (first, last) in finals.items():
        print(f"{label}: held-out accuracy {first:.3f} at the base policy, {last:.3f} after"
              f" {golf.train.steps} steps ({100 * (last - first):+.1f} points)")
    print(f"curves: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
