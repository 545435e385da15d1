"""Staleness sweep: VESPO and its baselines at several optimizer steps per rollout, and fully async.

    python benchmarks/staleness_sweep.py            # the default sweep (`reverse`)
    python benchmarks/staleness_sweep.py --quick    # a pipeline check

Every run goes through `golfjax.train_loop.train` (the code path of
`python -m experiments.main`) in this process, on one device. The staleness is
`schedule.minibatches`: optimizer steps per rollout, each step one mini-batch
of the config's prompts x group, so every run generates the same samples and
takes the same number of optimizer steps whatever the staleness, which only
sets how stale each step's data is.

`--regime reverse` (the default; issue 19's regime): every run starts from the
committed base policy of experiments/configs/reverse.py and trains its `grpo`
variant (scalar reward, no feedback: 8 prompts x 8 samples per optimizer
step, AdamW at lr 1e-4 with a 5-step warmup, strings of 5 letters) with the
swept loss in place of the config's: the library's loss defaults (each loss
aggregates as its reference does, golfjax/losses/config.py) and GRPO
advantages, as in the VESPO experiment (experiments/configs/vespo.py). Held-out
accuracy: the config's 200 held-out strings, 2 samples each, every
`--eval-every` steps. The seed changes the rollouts and the data order, not
the starting policy.

`--regime arith` and `--regime golf` are the older sweeps on one-digit sums
(experiments/configs/vespo.py: `arith`, and `golf=1`, GOLF's batches in
golf.py:arith's sparse-reward regime), each from one supervised cold start run
first and exported as a Hugging Face checkpoint (`init=` option of the config).

For each loss in `--losses`, staleness in `--ns` and seed in `range(--seeds)`,
one run; then for each loss in `--async-losses` (default: `--losses`) and seed
in `range(--async-seeds)` (default: `--seeds`) one run with fully asynchronous
rollout in the schedule's default regime (VESPO's released fully-async
script: weights synced every 4 steps, production throttled by
staleness_threshold 1.0, partial rollouts, sampler log-probs; nothing
dropped), its generations checked for new weights every
`--async-chunk-tokens` decode steps (a 5-letter reversal is about 7 tokens,
so a sync can land inside one). Retention is reported for async too (the
async gain over the staleness-1 gain of the same loss).

The sweep writes `<out>.json` (per run: config, accuracy curve, and per step
the gradient norm, training reward, entropy, W statistics and clip fraction,
wall time; a per-(loss, staleness) summary over seeds; and per loss and
staleness the retention: the mean held-out gain (final minus start) at that
staleness over the mean gain at staleness 1, with a 95% percentile bootstrap
interval over seeds) and `<out>.png` (held-out accuracy, training reward and
gradient norm over training, a row per loss, a line per staleness, async
dashed). A persistent compilation cache under the work directory lets runs
after the first reuse compiled programs; a run whose work directory is
complete is read back, not rerun.

Scale: the default is 64 steps, staleness in {1, 4, 16, 64}, four losses, 3
seeds and four async runs (52 runs; docs/results.md has their run times);
`--quick` runs 4 steps of VESPO at staleness 1 and 2 and asynchronously, one
seed, on 16 held-out strings, after a 10-step cold start: a check of the
pipeline, too short to measure anything.
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

from benchmarks import bootstrap  # noqa: E402


# --regime: `reverse` builds its configs here; the others add an option to
# every experiments/configs/vespo.py variant.
REGIMES = {"reverse": None, "arith": "", "golf": ",golf=1"}
TITLES = {"reverse": "reverse, from the committed base policy", "arith": "arith",
          "golf": "GOLF on arith"}


def cold_start(args: argparse.Namespace, workdir: str) -> tuple[str, float | None]:
    """Runs the shared cold start; returns (HF checkpoint dir, its held-out accuracy).

    `reverse` has none: the committed base policy, measured at each run's step 0.
    """
    if args.regime == "reverse":
        from experiments.configs import reverse

        return reverse.BASE_POLICY, None
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
    c.optimizer.warmup_steps = 0  # That step's rate is never used.
    c.checkpoint.every = steps
    c.eval.every = 1000
    c.eval.num_problems = args.eval_problems or c.eval.num_problems
    if not os.path.exists(os.path.join(hf_dir, "config.json")):
        started = time.monotonic()
        train_loop.train(c, run_dir)
        export.export(run_dir, hf_dir, step=steps)
        print(f"cold start: {steps} steps in {time.monotonic() - started:.0f}s -> {hf_dir}", flush=True)
    records = metrics_lib.read_metrics(run_dir)
    accuracy = next(r["eval/accuracy"] for r in records if r["step"] == steps and "eval/accuracy" in r)
    return hf_dir, accuracy


def reverse_config(loss: str, n: int, seed: int, asynchronous: bool) -> Any:
    """experiments/configs/reverse.py:grpo,seed=<seed> trained by `loss` at staleness `n`
    (or fully async), with the library's loss defaults and GRPO advantages."""
    from experiments.configs import common
    from experiments.configs import reverse

    c = reverse.get_config(f"grpo,seed={seed}")
    c.loss = common.base().loss  # Library defaults, not reverse.py's PPO settings.
    c.train.loss = loss
    c.train.advantage = "grpo"
    c.schedule.minibatches = n
    if asynchronous:
        # As experiments/configs/vespo.py's async option: the schedule's
        # defaults (the released script's regime), sampler log-probs.
        c.schedule.async_rollout = True
        c.schedule.minibatches = 1
        c.train.recompute_old_logp = False
    return c


def run_one(args: argparse.Namespace, workdir: str, init: str, loss: str, n: int, seed: int,
            asynchronous: bool) -> dict[str, Any]:
    """One run of the sweep; returns its curves and per-step statistics."""
    from experiments.configs import vespo as vespo_config
    from golfjax import config as config_lib
    from golfjax import metrics as metrics_lib
    from golfjax import train_loop

    if args.regime == "reverse":
        c = reverse_config(loss, n, seed, asynchronous)
    else:
        c = vespo_config.get_config(
            f"{loss},n={n},seed={seed},init={init},async={int(asynchronous)}" + REGIMES[args.regime])
    c.train.steps = args.steps
    # A --quick run is shorter than the configs' warmup, which must end before the last step.
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, args.steps - 1)
    c.eval.every = args.eval_every
    if args.eval_problems:
        c.eval.num_problems = args.eval_problems
    c.checkpoint.every = args.steps
    if asynchronous:
        c.schedule.rollout_chunk_tokens = args.async_chunk_tokens
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
        "eval_samples": [r.get("samples/generated_total", 0) for r in evals],
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
        "phi_pos_mean": column("loss/phi_pos_mean"),
        "phi_neg_mean": column("loss/phi_neg_mean"),
        "ess": column("schedule/ess"),
        "clip_frac": column("loss/clip_frac"),
        # Asynchronous runs: each step's largest policy lag (NaN when synchronous).
        "lag_max": column("schedule/lag_max"),
        "multi_version_frac": column("schedule/multi_version_frac"),
        "samples_generated": rl[-1]["samples/generated_total"],
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
            "gain_per_seed": [m["eval_accuracy"][-1] - m["eval_accuracy"][0] for m in members],
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
            "lag_max": max((v for m in members for v in m.get("lag_max", []) if v == v), default=float("nan")),
            "skipped_nonfinite": sum(m["skipped_nonfinite"] for m in members),
        })
    return rows


def retention(runs: list[dict[str, Any]], draws: int = 10_000, seed: int = 0) -> list[dict[str, Any]]:
    """Per loss and staleness N > 1: mean held-out gain at N over the mean gain at staleness 1.

    The gain of a run is its final held-out accuracy minus its first (the
    policy before RL). The 95% interval is a percentile bootstrap over seeds:
    each of `draws` draws resamples the seeds at N and at 1 with replacement,
    independently. A draw whose staleness-1 mean gain is not positive has no
    ratio and is counted in `draws_without_ratio`.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    gains: dict[tuple[str, int | str], list[float]] = {}
    for run in runs:
        gain = run["eval_accuracy"][-1] - run["eval_accuracy"][0]
        gains.setdefault((run["loss"], "async" if run["async"] else run["staleness"]), []).append(gain)
    rows = []
    for (loss, n), at_n in gains.items():
        at_1 = gains.get((loss, 1))
        if n == 1 or not at_1:
            continue
        a, b = np.array(at_n), np.array(at_1)
        ratio = bootstrap.ratio_of_means(a, b, draws, rng)
        rows.append({
            "loss": loss,
            "staleness": n,
            "seeds": [len(a), len(b)],
            "gain_mean": float(a.mean()),
            "gain_mean_staleness_1": float(b.mean()),
            "retention": ratio.pop("ratio"),
            **ratio,
        })
    return rows


def plot(runs: list[dict[str, Any]], path: str, title: str) -> None:
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
    fig.suptitle(f"{title}; every run from one starting policy, same samples; mean over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=sorted(REGIMES), default="reverse",
                        help="reverse: experiments/configs/reverse.py:grpo from the committed"
                        " base policy, with the swept loss;"
                        " arith: RL on all 1-digit sums (experiments/configs/vespo.py);"
                        " golf: GOLF's batches in golf.py:arith's sparse-reward regime"
                        " (the vespo.py option golf=1)")
    parser.add_argument("--out", default=None,
                        help="writes OUT.json and OUT.png (default:"
                        " benchmarks/results/staleness_sweep[_arith|_golf])")
    parser.add_argument("--workdir", default=None,
                        help="default: workdirs/staleness_sweep[_arith|_golf]")
    parser.add_argument("--steps", type=int, default=64, help="optimizer steps per run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ns", default="1,4,16,64", help="staleness values")
    parser.add_argument("--losses", default="vespo,ppo_clip,gspo,sapo")
    parser.add_argument("--async-losses", default=None,
                        help="losses of the fully-async runs (default: --losses)")
    parser.add_argument("--async-seeds", type=int, default=None, help="seeds of the async runs (default: --seeds)")
    parser.add_argument("--async-chunk-tokens", type=int, default=2,
                        help="async: decode steps between weight checks (schedule.rollout_chunk_tokens)")
    parser.add_argument("--cold-start-steps", type=int, default=None,
                        help="default: the regime's (80 for arith, 450 for golf; reverse has none)")
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--eval-problems", type=int, default=None,
                        help="held-out problems (default: the config's: 200 strings for reverse,"
                        " 20 for arith and golf)")
    parser.add_argument("--quick", action="store_true", help="a few minutes (see the docstring)")
    args = parser.parse_args(argv)
    suffix = "" if args.regime == "reverse" else f"_{args.regime}"
    args.out = args.out or f"benchmarks/results/staleness_sweep{suffix}"
    args.workdir = args.workdir or os.path.join("workdirs", f"staleness_sweep{suffix}")
    if args.quick:
        args.steps, args.seeds, args.ns, args.losses = 4, 1, "1,2", "vespo"
        args.async_losses = args.async_losses or "vespo"
        args.cold_start_steps, args.eval_every = 10, 2
        args.eval_problems = args.eval_problems or 16
    try:
        ns = [int(n) for n in args.ns.split(",") if n]
    except ValueError:
        parser.error(f"--ns must be comma-separated integers, got {args.ns!r}")
    losses = [loss for loss in args.losses.split(",") if loss]
    async_losses = [loss for loss in (args.async_losses if args.async_losses is not None
                                      else args.losses).split(",") if loss]
    for name in ("steps", "seeds", "eval_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not ns or min(ns) < 1:
        parser.error(f"--ns must be positive staleness values, got {args.ns!r}")
    from golfjax.losses import LOSSES

    unknown = sorted(set(losses + async_losses) - set(LOSSES))
    if unknown:
        parser.error(f"--losses/--async-losses: unknown loss {unknown}; known: {sorted(LOSSES)}")
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
        for seed in range(args.seeds if args.async_seeds is None else args.async_seeds):
            runs.append(run_one(args, workdir, init, loss, 1, seed, asynchronous=True))
    summary = summarise(runs)
    result = {
        "command": " ".join(["benchmarks/staleness_sweep.py"] + (argv if argv is not None else sys.argv[1:])),
        "args": vars(args),
        "cold_start_accuracy": cold_accuracy,
        "summary": summary,
        "retention": retention(runs),
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
    plot(runs, args.out + ".png", TITLES[args.regime])
    if cold_accuracy is not None:
        print(f"\ncold-start accuracy {cold_accuracy:.3f}")
    print(f"{len(runs)} runs in {result['wall_s']:.0f}s")
    print(f"{'loss':10} {'regime':7} {'acc start':>9} {'acc final':>9} {'acc mean':>8} {'rew 1st/4':>9}"
          f" {'rew last/4':>10} {'max |g|':>8} {'max|logW|':>9} {'min ESS':>8}")
    for row in summary:
        print(f"{row['loss']:10} {row['regime']:7} {row['accuracy_start']:9.3f} {row['accuracy_final']:9.3f}"
              f" {row['accuracy_mean_during']:8.3f} {row['reward_first_quarter']:9.3f} {row['reward_last_quarter']:10.3f}"
              f" {row['grad_norm_max']:8.3g} {row['log_w_abs_max']:9.3g} {row['ess_min']:8.3f}")
    for row in result["retention"]:
        low, high = row["ci95"]
        interval = f"[{low:.2f}, {high:.2f}]" if low is not None else "[n/a]"
        retained = f"{row['retention']:.2f}" if row["retention"] is not None else "n/a"
        print(f"retention {row['loss']} staleness {row['staleness']}: gain {row['gain_mean']:.3f}"
              f" / {row['gain_mean_staleness_1']:.3f} at staleness 1 = {retained}, 95% CI {interval}")
    print(f"wrote {args.out}.json and {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
