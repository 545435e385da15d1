"""Staleness sweep: VESPO and its baselines at several optimizer steps per rollout, and fully async.

    .venv/bin/python benchmarks/staleness_sweep.py            # the default sweep
    .venv/bin/python benchmarks/staleness_sweep.py --quick    # a few minutes

Every run goes through `golfjax.train_loop.train` (the code path of
`python -m experiments.main`) with experiments/configs/vespo.py on the built-in
`arith` task, in this process, on one device:

1. One supervised cold start (`--cold-start-steps` steps of the config's cold
   start on the training sums), exported as a Hugging Face checkpoint to
   `<workdir>/cold_start_<steps>_hf`: every run below starts from exactly this policy
   (`init=` option of the config, no cold start of its own).
2. For each loss in `--losses`, staleness (optimizer steps per rollout) in `--ns` and seed in `--seeds`:
   `vespo.py:<loss>,n=<staleness>,seed=<s>,init=<dir>` for `--steps` optimizer steps of
   RL on one-digit sums. A step is one mini-batch of 4 prompts x 8 samples, so
   every run generates the same `steps x 32` samples and takes the same number
   of optimizer steps; the staleness only sets how stale each step's data is
   (one rollout of that many mini-batches every that many steps). The seed changes the rollouts and
   the data order, not the starting policy.
3. For each loss in `--async-losses` (default: `--losses`): the same with fully
   asynchronous rollout (a worker thread samples with a snapshot synced every
   step, sampler log-probs, rollouts more than 4 steps behind dropped), seed 0.

Held-out accuracy (20 problems x 8 samples) is measured every `--eval-every`
steps. The sweep writes `<out>.json` (per run: config, accuracy curve, and per
step the gradient norm, training reward, entropy, W statistics and clip
fraction, wall time; a per-(loss, staleness) summary over seeds) and `<out>.png`
(held-out accuracy, training reward and gradient norm over training, a row per
loss, a line per staleness, async dashed). A persistent compilation cache under the
work directory lets runs after the first reuse compiled programs; a run whose
work directory is complete is read back, not rerun.

`--regime golf` runs the same sweep on GOLF's batches (originals, verified
refinements injected into failed groups, and the refinement groups) in
golf.py:arith's sparse-reward regime (experiments/configs/vespo.py option
`golf=1`): its 450-step cold start, then RL on the 1-digit sums that carry,
where plain RL has no signal but GOLF learns within 64 steps (docs/results.md,
GOLF vs GRPO), so staleness can be seen to help or hurt learning that happens.

Scale: the default is 64 steps, staleness in {1, 4, 16, 64}, four losses, 2
seeds and four async runs (36 runs; docs/results.md has their run times);
`--quick` runs 8 steps of staleness in {1, 8} for vespo and ppo_clip, one
seed, and one async run, from a 40-step cold start: a check of the pipeline,
too short to measure anything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # Run as a script from anywhere: experiments/ is top level.
    sys.path.insert(0, REPO)


REGIMES = {"arith": "", "golf": ",golf=1"}  # --regime: the option it adds to every run.


def cold_start(args: argparse.Namespace, workdir: str) -> tuple[str, float]:
    """Runs the shared cold start; returns (HF checkpoint dir, its held-out accuracy)."""
    from experiments.configs import vespo as vespo_config
    from golfjax import export
    from golfjax import metrics as metrics_lib
    from golfjax import train_loop

    c = vespo_config.get_config("vespo,n=1" + REGIMES[args.regime])
    steps = args.cold_start_steps or c.cold_start.steps
    hf_dir = os.path.join(workdir, f"cold_start_{args.regime}_{steps}_hf")
    run_dir = os.path.join(workdir, f"cold_start_{args.regime}_{steps}")
    c.cold_start.steps = steps
    c.cold_start.refine_first_steps = min(c.cold_start.refine_first_steps, steps)
    c.train.steps = 1  # The train loop needs one RL step; the export is the step before it.
    c.checkpoint.every = steps
    c.eval.every = 1000
    c.eval.num_problems = args.eval_problems
    if not os.path.exists(os.path.join(hf_dir, "config.json")):
        started = time.monotonic()
        train_loop.train(c, run_dir)
        export.export(run_dir, hf_dir, step=steps)
        print(f"cold start: {steps} steps in {time.monotonic() - started:.0f}s -> {hf_dir}", flush=True)
    records = metrics_lib.read_metrics(run_dir)
    accuracy = next(r["eval/accuracy"] for r in records if r["step"] == steps and "eval/accuracy" in r)
    return hf_dir, accuracy


def run_one(args: argparse.Namespace, workdir: str, init: str, loss: str, n: int, seed: int,
            asynchronous: bool) -> dict[str, Any]:
    """One run of the sweep; returns its curves and per-step statistics."""
    from experiments.configs import vespo as vespo_config
    from golfjax import config as config_lib
    from golfjax import metrics as metrics_lib
    from golfjax import train_loop

    c = vespo_config.get_config(
        f"{loss},n={n},seed={seed},init={init},async={int(asynchronous)}" + REGIMES[args.regime])
    c.train.steps = args.steps
    c.eval.every = args.eval_every
    c.eval.num_problems = args.eval_problems
    c.checkpoint.every = args.steps
    config = config_lib.to_dict(config_lib.build(config_lib.RunConfig, c))
    # The directory names the run and the config, so a changed config never
    # reads back another config's results.
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    name = (f"{loss}_async" if asynchronous else f"{loss}_n{n}") + f"_seed{seed}"
    run_dir = os.path.join(workdir, f"{name}_{digest}")
    total = c.train.steps
    records = metrics_lib.read_metrics(run_dir)
    timing = os.path.join(run_dir, "sweep_wall_s.json")
    if not records or records[-1]["step"] != total:
        started = time.monotonic()
        train_loop.train(c, run_dir)
        records = metrics_lib.read_metrics(run_dir)
        with open(timing, "w") as f:  # Read back with the run's results.
            json.dump(time.monotonic() - started, f)
    wall_s = None  # Unknown for a run completed by an older version of this script.
    if os.path.exists(timing):
        with open(timing) as f:
            wall_s = json.load(f)
    rl = [r for r in records if r["step"] >= 1]
    evals = [r for r in records if "eval/accuracy" in r]

    def column(key: str) -> list[float]:
        return [float(r[key]) if isinstance(r.get(key), (int, float)) else float("nan") for r in rl]

    result = {
        "name": name,
        "loss": loss,
        "staleness": n,
        "async": asynchronous,
        "seed": seed,
        "config": config,
        "wall_s": wall_s,
        "eval_step": [r["step"] for r in evals],
        "eval_samples": [r.get("samples/generated", 0) for r in evals],
        "eval_accuracy": [r["eval/accuracy"] for r in evals],
        "eval_pass@4": [r.get("eval/pass@4") for r in evals],
        "step": [r["step"] for r in rl],
        "grad_norm": column("grad_norm"),
        "reward": column("reward/mean"),
        "reward_mean": statistics.fmean(column("reward/mean")),
        # GOLF's regime: the rollout's own reward, before refinements are injected.
        "reward_pre_injection": column("reward_pre_injection/mean"),
        "injection_rate": column("golf/injection_rate"),
        "entropy": column("entropy"),
        "staleness_per_step": column("schedule/staleness"),
        "log_w_abs_max": column("schedule/log_w_abs_max"),
        "log_w_pos_mean": column("schedule/log_w_pos_mean"),
        "log_w_neg_mean": column("schedule/log_w_neg_mean"),
        "phi_pos_mean": column("vespo/phi_pos_mean"),
        "phi_neg_mean": column("vespo/phi_neg_mean"),
        "ess": column("schedule/ess"),
        "clip_frac": column("loss/clip_frac"),
        "dropped_rollouts": sum(column("schedule/dropped_rollouts")),
        "samples_generated": rl[-1]["samples/generated"],
        "skipped_nonfinite": sum(column("train/skipped_nonfinite")),
    }
    print(
        f"{name}: accuracy {result['eval_accuracy'][0]:.3f} -> {result['eval_accuracy'][-1]:.3f},"
        f" max grad norm {max(result['grad_norm']):.3g}, {wall_s or float('nan'):.0f}s",
        flush=True,
    )
    return result


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (loss, staleness or async): means over seeds of the headline numbers."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        regime = "async" if run["async"] else f"staleness={run['staleness']}"
        groups.setdefault((run["loss"], regime), []).append(run)
    rows = []
    for (loss, regime), members in groups.items():
        def mean(values: list[float]) -> float:
            finite = [v for v in values if v == v]
            return statistics.fmean(finite) if finite else float("nan")

        quarter = max(1, len(members[0]["grad_norm"]) // 4)
        rows.append({
            "loss": loss,
            "regime": regime,
            "seeds": len(members),
            "accuracy_start": mean([m["eval_accuracy"][0] for m in members]),
            "accuracy_final": mean([m["eval_accuracy"][-1] for m in members]),
            "accuracy_final_per_seed": [m["eval_accuracy"][-1] for m in members],
            "accuracy_best": mean([max(m["eval_accuracy"]) for m in members]),
            # Every evaluation after the start: steadier than the last one alone.
            "accuracy_mean_during": mean([mean(m["eval_accuracy"][1:]) for m in members]),
            "accuracy_mean_during_per_seed": [mean(m["eval_accuracy"][1:]) for m in members],
            "reward_first_quarter": mean([mean(m["reward"][:quarter]) for m in members]),
            "reward_last_quarter": mean([mean(m["reward"][-quarter:]) for m in members]),
            "grad_norm_max": max(max(m["grad_norm"]) for m in members),
            "grad_norm_last_quarter": mean([mean(m["grad_norm"][-quarter:]) for m in members]),
            "log_w_abs_max": max(max(m["log_w_abs_max"]) for m in members),
            "ess_min": min(min(m["ess"]) for m in members),
            "dropped_rollouts": sum(m["dropped_rollouts"] for m in members),
            "skipped_nonfinite": sum(m["skipped_nonfinite"] for m in members),
        })
    return rows


def plot(runs: list[dict[str, Any]], path: str, title: str = "arith") -> None:
    """Accuracy, training reward and gradient norm: a row per loss, a line per staleness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    losses = list(dict.fromkeys(r["loss"] for r in runs))
    ns = sorted({r["staleness"] for r in runs if not r["async"]})
    colors = dict(zip(ns, plt.cm.viridis(np.linspace(0, 0.85, len(ns)))))
    fig, axes = plt.subplots(len(losses), 3, figsize=(14, 2.6 * len(losses)), squeeze=False)

    def smooth(x: Any, width: int = 8) -> Any:
        return np.convolve(x, np.ones(width) / width, mode="valid") if len(x) >= width else x

    for row, loss in enumerate(losses):
        for regime in ns + ["async"]:
            members = [r for r in runs if r["loss"] == loss and
                       (r["async"] if regime == "async" else not r["async"] and r["staleness"] == regime)]
            if not members:
                continue
            style = {"color": "black", "linestyle": "--"} if regime == "async" else {"color": colors[regime]}
            label = "async" if regime == "async" else f"staleness={regime}"
            length = min(len(m["eval_accuracy"]) for m in members)
            accuracy = np.mean([m["eval_accuracy"][:length] for m in members], axis=0)
            axes[row, 0].plot(members[0]["eval_step"][:length], accuracy, marker="o", markersize=3,
                              label=label, **style)
            length = min(len(m["grad_norm"]) for m in members)
            steps = members[0]["step"][:length]
            reward = smooth(np.mean([m["reward"][:length] for m in members], axis=0))
            axes[row, 1].plot(steps[len(steps) - len(reward):], reward, label=label, linewidth=1, **style)
            grad_norm = np.mean([m["grad_norm"][:length] for m in members], axis=0)
            axes[row, 2].plot(steps, grad_norm, label=label, linewidth=1, **style)
        axes[row, 0].set_ylabel(f"{loss}\nheld-out accuracy")
        axes[row, 1].set_ylabel("training reward\n(8-step mean)")
        axes[row, 2].set_ylabel("gradient norm")
        axes[row, 2].set_yscale("symlog", linthresh=1e-2)
        for ax in axes[row]:
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    for col in range(3):
        axes[-1, col].set_xlabel("optimizer step (same samples per step)")
    fig.suptitle(f"{title}, same cold start and samples; mean over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=sorted(REGIMES), default="arith",
                        help="arith: RL on all 1-digit sums (experiments/configs/vespo.py);"
                        " golf: GOLF's batches in golf.py:arith's sparse-reward regime"
                        " (the vespo.py option golf=1)")
    parser.add_argument("--out", default=None,
                        help="writes OUT.json and OUT.png (default:"
                        " benchmarks/results/staleness_sweep[_golf])")
    parser.add_argument("--workdir", default=None,
                        help="default: workdirs/staleness_sweep[_golf]")
    parser.add_argument("--steps", type=int, default=64, help="optimizer steps per run")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--ns", default="1,4,16,64", help="staleness values")
    parser.add_argument("--losses", default="vespo,ppo_clip,gspo,sapo")
    parser.add_argument("--async-losses", default=None,
                        help="losses of the fully-async runs (default: --losses)")
    parser.add_argument("--cold-start-steps", type=int, default=None,
                        help="default: the regime's (80 for arith, 450 for golf)")
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--eval-problems", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="a few minutes (see the docstring)")
    args = parser.parse_args(argv)
    suffix = "" if args.regime == "arith" else f"_{args.regime}"
    args.out = args.out or f"benchmarks/results/staleness_sweep{suffix}"
    args.workdir = args.workdir or os.path.join("workdirs", f"staleness_sweep{suffix}")
    if args.quick:
        args.steps, args.seeds, args.ns, args.losses = 8, 1, "1,8", "vespo,ppo_clip"
        args.async_losses = args.async_losses or "vespo"
        args.cold_start_steps, args.eval_every = 40, 4
    ns = [int(n) for n in args.ns.split(",") if n]
    losses = [loss for loss in args.losses.split(",") if loss]
    async_losses = [loss for loss in (args.async_losses if args.async_losses is not None
                                      else args.losses).split(",") if loss]
    bad = [n for n in ns if args.steps % n]
    if bad:
        parser.error(f"--steps={args.steps} is not a multiple of staleness {bad}")
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    import jax

    # Every run rebuilds its jitted programs; the cache makes recompiling them a read.
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    started = time.monotonic()
    load_before = os.getloadavg()
    init, cold_accuracy = cold_start(args, workdir)
    runs = []
    for loss in losses:
        for n in ns:
            for seed in range(args.seeds):
                runs.append(run_one(args, workdir, init, loss, n, seed, asynchronous=False))
    for loss in async_losses:
        runs.append(run_one(args, workdir, init, loss, 1, 0, asynchronous=True))
    summary = summarise(runs)
    result = {
        "command": " ".join(["benchmarks/staleness_sweep.py"] + (argv if argv is not None else sys.argv[1:])),
        "args": vars(args),
        "cold_start_accuracy": cold_accuracy,
        "summary": summary,
        "runs": runs,
        "wall_s": time.monotonic() - started,
        # What the runs took when they ran (this invocation may have read them back).
        "runs_wall_s": sum(run["wall_s"] or 0.0 for run in runs),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()],
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    }
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    plot(runs, args.out + ".png", "arith" if args.regime == "arith" else "GOLF on arith")
    print(f"\ncold-start accuracy {cold_accuracy:.3f}; {len(runs)} runs in {result['wall_s']:.0f}s")
    print(f"{'loss':10} {'regime':7} {'acc start':>9} {'acc final':>9} {'acc mean':>8} {'rew 1st/4':>9}"
          f" {'rew last/4':>10} {'max |g|':>8} {'max|logW|':>9} {'min ESS':>8}")
    for row in summary:
        print(f"{row['loss']:10} {row['regime']:7} {row['accuracy_start']:9.3f} {row['accuracy_final']:9.3f}"
              f" {row['accuracy_mean_during']:8.3f} {row['reward_first_quarter']:9.3f} {row['reward_last_quarter']:10.3f}"
              f" {row['grad_norm_max']:8.3g} {row['log_w_abs_max']:9.3g} {row['ess_min']:8.3f}")
    print(f"wrote {args.out}.json and {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
