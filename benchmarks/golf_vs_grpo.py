"""GOLF vs GRPO on `reverse`: what each needs to reach a held-out accuracy, with a bootstrap interval.

    python benchmarks/golf_vs_grpo.py --seeds 5 --out benchmarks/results/golf_vs_grpo_sparse.json
    python benchmarks/golf_vs_grpo.py --seeds 5 --replay shaping --out benchmarks/results/golf_vs_grpo_sparse.json
    python benchmarks/golf_vs_grpo.py --regime reverse --seeds 3 --target 0.6 --out benchmarks/results/golf_vs_grpo.json

The issue's measurement (docs/algorithms.md#golf; the GOLF paper reports 2.2x
sample efficiency over scalar-reward RL):

1. `--seeds` RL runs of each method of the `--regime` from its committed base
   policy (experiments/configs/reverse.py). `sparse` (the default; 6-letter
   strings, where most groups fail entirely): `sparse_golf`, `sparse_grpo`
   (the same loop with the feedback off) and `sparse_grpo_g16` (GRPO with
   groups of 16: GOLF's samples per prompt); `reverse` (issue 19's 5-letter
   strings): `golf` and `grpo`. Seed `s` is the variant's option `seed=s`;
   every method generates the same samples in all (`--rl_steps` steps of
   GOLF's; GRPO, with half of GOLF's samples a step, runs twice the steps).
   Each run is an ordinary run of `golfjax.train_loop.train` in its own work
   directory under `--root`, so an interrupted benchmark resumes where it
   stopped and finished runs are read back (`--methods` runs a subset, e.g.
   in two processes, and a last call with every method summarises). Held-out
   accuracy (the config's 200 held-out strings, 2 samples each) is measured
   every `--eval_every` RL steps.
2. For each run, the first evaluation at or above `--target`, and two counters
   there: training prompts consumed and samples generated (GOLF's refinement
   samples included). A run that never reaches the target is censored at its
   budget (its counters at its last evaluation): it needed more than that.
3. Per method, the mean over seeds; for each baseline the ratio baseline /
   GOLF of the means (above 1: GOLF needed less), and a 95% percentile
   bootstrap interval of it (`--draws` draws; each draw resamples the seeds
   of each method with replacement, independently). With every seed reaching
   the target the ratio and its interval are plain estimates. When seeds of
   only one method missed, their censored budgets make the ratio a bound (the
   baseline missed: a lower bound; GOLF missed: an upper bound) and the JSON
   says which; when both methods have misses the ratio is reported as
   undetermined.
4. `--golf_set SECTION.KEY=VALUE` sets a knob of the GOLF runs
   (docs/algorithms.md#golf-knobs), which then run in directories of their
   own: the knob measurements are this script's runs too. `--no_train`
   summarises the runs on disk as they stand, training nothing (a run cut
   short counts at its last evaluation, censored if it missed the target).
5. `--replay shaping` (or `sft`): the offline replay. From the same base
   policy, with the same optimizer and steps, each GOLF seed's logged injected
   rows (`injected.jsonl`, `golf.log_injected`) are trained alone, step by
   step in the order GOLF trained them: under the off-policy shaping term
   with their logged advantages (`shaping`), or as supervised targets
   (`sft`). Evaluated like the runs. If the replay learns where GOLF does not,
   the data was enough and GOLF's optimisation (the other terms beside it) is
   what falls short; if the replay does not learn either, the data is short.

Writes `--out` (JSON: settings, every run's curve and crossing, per-method
means, ratios, intervals, replays, wall times, machine) and a PNG next to it
(held-out accuracy against samples generated and against prompts, every
seed; with a replay, a third panel against RL steps). `--quick` shrinks
everything to exercise the pipeline; its numbers mean nothing.
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

COUNTERS = ("samples", "prompts")
# Each regime's methods (GOLF first; the others are its baselines), the
# config variant of a method, and the defaults of its schedule and target.
# In `sparse` every method gets GOLF's budget of samples: GRPO, which
# generates half of GOLF's samples a step, runs twice the steps.
REGIMES = {
    "sparse": {"methods": ("golf", "grpo", "grpo_g16"), "variant": "sparse_{}", "rl_steps": 60, "eval_every": 10,
               "target": 0.3, "steps_factor": {"grpo": 2}},
    "reverse": {"methods": ("golf", "grpo"), "variant": "{}", "rl_steps": 60, "eval_every": 5, "target": 0.6,
                "steps_factor": {}},
}
METHODS = REGIMES["sparse"]["methods"]
REPLAY_OBJECTIVES = ("shaping", "sft")


def config(method: str, seed: int, args: argparse.Namespace) -> Any:
    """experiments/configs/reverse.py:<regime's variant of method>,seed=<seed>
    with the benchmark's schedule."""
    from experiments.configs import reverse

    regime = REGIMES[args.regime]
    c = reverse.get_config(regime["variant"].format(method) + f",seed={seed}")
    if method == "golf":
        for key, value in getattr(args, "golf_set", None) or []:
            section, name = key.split(".")
            c[section][name] = value
    factor = regime["steps_factor"].get(method, 1)
    c.train.steps = args.rl_steps * factor
    # Evaluations at the same samples generated for every method.
    c.eval.every = args.eval_every * factor
    c.checkpoint.every = c.train.steps
    if args.eval_problems is not None:
        c.eval.num_problems = args.eval_problems
    if args.quick:
        c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, 1)  # It ends before the last step.
        c.train.prompts_per_step = 4
        c.sampling.group_size = 8 if method == "grpo_g16" else 4
    return c


def samples_total(record: dict[str, Any]) -> float:
    """The run's samples generated up to `record`. Records written before
    `samples/generated_total` existed (2026-12-07) held that total in
    `samples/generated`, now the step's own count; docs/results.md#sparse's
    runs are such records."""
    if "samples/generated_total" in record:
        return float(record["samples/generated_total"])
    return float(record.get("samples/generated", 0.0))


def crossing(records: list[dict[str, Any]], target: float) -> dict[str, float] | None:
    """Counters at the first evaluation with accuracy >= target (None: never)."""
    for r in records:
        if r.get("eval/accuracy", -1.0) >= target:
            return {
                "step": float(r["step"]),
                "accuracy": float(r["eval/accuracy"]),
                "prompts": float(r.get("samples/prompts_seen", 0.0)),
                "samples": samples_total(r),
            }
    return None


def curve(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    evals = [r for r in records if "eval/accuracy" in r]
    return {
        "step": [float(r["step"]) for r in evals],
        "prompts": [float(r.get("samples/prompts_seen", 0.0)) for r in evals],
        "samples": [samples_total(r) for r in evals],
        "accuracy": [float(r["eval/accuracy"]) for r in evals],
    }


def needed(run: dict[str, Any], counter: str) -> tuple[float, bool]:
    """What a run needed of `counter` to reach the target, and whether it is censored
    (never reached: its budget, the counter at its last evaluation)."""
    if run["crossing"] is not None:
        return run["crossing"][counter], False
    return run["curve"][counter][-1], True


def bootstrap_ratio(grpo: np.ndarray, golf: np.ndarray, draws: int, seed: int) -> dict[str, Any]:
    """Ratio of means baseline / GOLF and its 95% percentile interval; each draw
    resamples each method's seeds with replacement, independently (a draw
    whose GOLF mean is 0, the target met before RL, has no ratio)."""
    return bootstrap.ratio_of_means(grpo, golf, draws, np.random.default_rng(seed))


def summarise(runs: dict[str, list[dict[str, Any]]], draws: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Per-method means (censored seeds at their budget), and for each baseline
    in `runs` (every method but "golf") its ratios over GOLF with intervals:
    `ratio_<baseline>_over_golf`, its `note_<baseline>` (and `note`, GRPO's)."""
    for method in ("golf", "grpo"):
        if not runs.get(method):
            raise ValueError(f"summarise: no runs of method {method!r}")
    methods = [m for m in runs if runs[m]]
    out: dict[str, Any] = {}
    for method in methods:
        out[method] = {
            "seeds": len(runs[method]),
            "seeds_reached": sum(r["crossing"] is not None for r in runs[method]),
            "final_accuracy_mean": float(np.mean([r["curve"]["accuracy"][-1] for r in runs[method]])),
        }
        for counter in COUNTERS:
            values = [needed(r, counter)[0] for r in runs[method]]
            out[method][f"{counter}_per_seed"] = values
            out[method][f"{counter}_mean"] = float(np.mean(values))
    for baseline in (m for m in methods if m != "golf"):
        name = baseline.upper()
        missed = {m: out[m]["seeds_reached"] < out[m]["seeds"] for m in ("golf", baseline)}
        if not any(missed.values()):
            kind, note = "estimate", "every seed reached the target; a ratio above 1 means GOLF needed less"
        elif missed[baseline] and not missed["golf"]:
            kind, note = "lower_bound", (f"{name} seeds missed the target and count at their budget:"
                                         f" the ratio and its interval bound {name} / GOLF from below")
        elif missed["golf"] and not missed[baseline]:
            kind, note = "upper_bound", (f"GOLF seeds missed the target and count at their budget:"
                                         f" the ratio and its interval bound {name} / GOLF from above")
        else:
            kind, note = "undetermined", ("seeds of both methods missed the target: the ratio of"
                                          " censored means is neither an estimate nor a bound")
        ratios = {
            counter: {
                "kind": kind,
                **bootstrap_ratio(np.array(out[baseline][f"{counter}_per_seed"]),
                                  np.array(out["golf"][f"{counter}_per_seed"]), draws, seed),
            }
            for counter in COUNTERS
        }
        if kind == "undetermined":
            for counter in COUNTERS:
                ratios[counter].update(ratio=None, ci95=[None, None])
        out[f"ratio_{baseline}_over_golf"] = ratios
        out[f"note_{baseline}"] = note
    out["note"] = out["note_grpo"]
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`"golf.n_inject=4"` -> `("golf.n_inject", 4)` (a Python literal, else the string).

    Raises:
      ValueError: not SECTION.KEY=VALUE, or a key the run config does not have.
    """
    import ast

    from experiments.configs import common

    key, sep, value = text.partition("=")
    section, _, name = key.partition(".")
    if not sep or not name or name not in common.base().get(section, {}):
        raise ValueError(f"--golf_set {text!r}: expected SECTION.KEY=VALUE with a key of the run config")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def run_name(method: str, overrides: list[tuple[str, Any]]) -> str:
    """A run directory's name: the method, and GOLF's overrides if any."""
    if method != "golf" or not overrides:
        return method
    return method + "-" + "-".join(f"{key.split('.')[-1]}={value}" for key, value in overrides)


def train_run(c: Any, workdir: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Trains (or resumes, or reads back) one run; its metrics records.

    With `--chunk`, the run is trained `chunk` GOLF-equivalent steps at a time
    (a resume lengthening it) and stops after the chunk whose evaluations
    reach the target: a run's crossing and counters do not depend on what it
    would have done after, and a resumed run continues exactly.
    """
    from golfjax import metrics as metrics_lib
    from golfjax import train_loop

    if getattr(args, "no_train", False):
        records = metrics_lib.read_metrics(workdir)
        if not any("eval/accuracy" in r for r in records):
            raise SystemExit(f"--no_train: {workdir} has no evaluated run to read back")
        return records
    budget = c.train.steps
    step = budget if not args.chunk else 0
    while True:
        step = min(budget, step + args.chunk * c.eval.every // args.eval_every) if args.chunk else budget
        c.train.steps = step
        train_loop.train(c, workdir)
        records = metrics_lib.read_metrics(workdir)
        if step >= budget or crossing(records, args.target) is not None:
            return records


def replay(golf_workdir: str, workdir: str, config: Any, objective: str) -> list[dict[str, Any]]:
    """Trains `config`'s base policy on the injected rows GOLF logged in
    `golf_workdir`, alone (module docstring, step 4); returns its metrics
    records (also in `workdir`/metrics.jsonl, read back when complete)."""
    import jax

    from golfjax import components as components_lib
    from golfjax import config as config_lib
    from golfjax import metrics as metrics_lib
    from golfjax import sharding
    from golfjax.loops import golf_replay as replay_lib

    logged = metrics_lib.read_metrics(golf_workdir, "injected.jsonl")
    if not logged:
        raise ValueError(f"{golf_workdir} has no injected.jsonl records (run GOLF with golf.log_injected)")
    done = metrics_lib.read_metrics(workdir)
    if done and done[-1]["step"] == logged[-1]["step"] and "eval/accuracy" in done[-1]:
        return done
    if objective == "sft":
        config.train.loss = "reinforce"
    else:
        # The logged rows carry no log-probs under the refinement prompt, which
        # truncated IS would need: the replay's objective is the shaping term.
        config.train.off_policy_loss = "shaping"
    cfg = config_lib.build(config_lib.RunConfig, config)
    c, params = components_lib.build(cfg, workdir)
    trainer = c.trainer
    state = trainer.init_state(params, cfg.seed)
    rng = jax.random.PRNGKey(cfg.seed)

    def evaluate(step: int) -> dict[str, float]:  # The train loop's evaluation keys.
        return c.evaluator(state.params, jax.random.fold_in(jax.random.fold_in(rng, step), 2))

    # At most n_inject rows a prompt, in a whole number of rows per data shard.
    shards = sharding.row_shards(c.mesh)
    capacity = -(-cfg.train.prompts_per_step * cfg.golf.n_inject // shards) * shards
    writer = metrics_lib.MetricsWriter(workdir, total_steps=logged[-1]["step"], tensorboard=False)
    demonstrations, distinct = 0, set()
    try:
        writer.write(0, evaluate(0))
        for record in logged:
            step, rows = record["step"], record["rows"] or []
            batch = replay_lib.replay_batch(
                rows, c.tokenizer, capacity=capacity,
                prompt_buckets=cfg.sampling.prompt_buckets, response_len=cfg.sampling.max_new_tokens,
                template_kwargs=dict(cfg.task.template_kwargs), supervised=objective == "sft")
            state, metrics = trainer.step(state, trainer.put_batch(batch))
            metrics = metrics_lib.to_scalars(metrics)
            demonstrations += len(rows)
            distinct |= {(r["question"], tuple(r["response"])) for r in rows}
            metrics |= {"replay/demonstrations": demonstrations, "replay/distinct_demonstrations": len(distinct)}
            if step % cfg.eval.every == 0 or record is logged[-1]:
                metrics |= evaluate(step)
            writer.write(step, metrics)
    finally:
        writer.close()
    return metrics_lib.read_metrics(workdir)


def replay_summary(golf_runs: list[dict[str, Any]], replays: list[dict[str, Any]]) -> dict[str, Any]:
    """GOLF's and its replay's held-out accuracy at the same steps, per seed and mean."""
    out: dict[str, Any] = {"per_seed": []}
    for golf_run, rep in zip(golf_runs, replays):
        golf_at = dict(zip(golf_run["curve"]["step"], golf_run["curve"]["accuracy"]))
        steps = [s for s in rep["curve"]["step"] if s in golf_at]
        out["per_seed"].append({
            "seed": rep["seed"], "step": steps,
            "golf_accuracy": [golf_at[s] for s in steps],
            "replay_accuracy": [a for s, a in zip(rep["curve"]["step"], rep["curve"]["accuracy"]) if s in golf_at],
            "replay_crossing": rep["crossing"], "golf_crossing": golf_run["crossing"],
        })
    out["golf_final_accuracy_mean"] = float(np.mean([p["golf_accuracy"][-1] for p in out["per_seed"]]))
    out["replay_final_accuracy_mean"] = float(np.mean([p["replay_accuracy"][-1] for p in out["per_seed"]]))
    out["replay_seeds_reached"] = sum(p["replay_crossing"] is not None for p in out["per_seed"])
    return out


COLORS = {"golf": "tab:blue", "grpo": "tab:orange", "grpo_g16": "tab:red", "replay": "tab:green"}


def plot(runs: dict[str, list[dict[str, Any]]], target: float, path: str, title: str,
         replays: list[dict[str, Any]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("samples", "samples generated"), ("prompts", "training prompts consumed")]
    if replays:
        panels.append(("step", "RL steps (GOLF and its offline replay)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), sharey=True)
    for ax, (counter, label) in zip(axes, panels):
        for method in runs:
            if counter == "step" and method != "golf":
                continue
            for i, run in enumerate(runs[method]):
                ax.plot(run["curve"][counter], run["curve"]["accuracy"], color=COLORS.get(method),
                        alpha=0.8, marker=".", label=method.upper() if i == 0 else None)
        if counter == "step":
            for i, rep in enumerate(replays):
                ax.plot(rep["curve"]["step"], rep["curve"]["accuracy"], color=COLORS["replay"], alpha=0.8,
                        marker=".", label=f"replay ({rep['objective']})" if i == 0 else None)
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:g}")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("held-out accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", default="sparse", choices=sorted(REGIMES))
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of the regime's methods (default: all)")
    parser.add_argument("--out", default=None, help="default benchmarks/results/golf_vs_grpo_<regime>.json")
    parser.add_argument("--root", default=None, help="work directories of every run (default workdirs/golf_vs_grpo_<regime>)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rl_steps", type=int, default=None, help="RL steps of every run (default: the regime's)")
    parser.add_argument("--eval_every", type=int, default=None,
                        help="GOLF's RL steps between evaluations (GRPO's: the same samples; default: the regime's)")
    parser.add_argument("--chunk", type=int, default=0,
                        help="train runs this many GOLF-equivalent steps at a time and stop a run once it"
                             " reached the target (0: every run trains its whole budget)")
    parser.add_argument("--eval_problems", type=int, default=None,
                        help="held-out strings evaluated (default: the config's 200)")
    parser.add_argument("--target", type=float, default=None, help="held-out accuracy to reach (default: the regime's)")
    parser.add_argument("--draws", type=int, default=10_000, help="bootstrap draws")
    parser.add_argument("--replay", default="", choices=("",) + REPLAY_OBJECTIVES,
                        help="also replay each GOLF run's injected rows alone under this objective")
    parser.add_argument("--golf_set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config override of the GOLF runs (a knob, docs/algorithms.md#golf-knobs);"
                             " repeatable; their work directories are named after the overrides")
    parser.add_argument("--no_train", action="store_true",
                        help="train nothing: summarise the runs on disk as they stand (shorter runs count at"
                             " their last evaluation)")
    parser.add_argument("--quick", action="store_true", help="to exercise the pipeline; numbers mean nothing")
    args = parser.parse_args(argv)
    try:
        args.golf_set = [parse_override(text) for text in args.golf_set]
    except ValueError as e:
        parser.error(str(e))
    regime = REGIMES[args.regime]
    args.rl_steps = regime["rl_steps"] if args.rl_steps is None else args.rl_steps
    args.eval_every = regime["eval_every"] if args.eval_every is None else args.eval_every
    args.target = regime["target"] if args.target is None else args.target
    args.out = args.out or f"benchmarks/results/golf_vs_grpo_{args.regime}.json"
    args.root = args.root or f"workdirs/golf_vs_grpo_{args.regime}"
    methods = tuple(args.methods.split(",")) if args.methods else regime["methods"]
    if args.quick:
        args.rl_steps, args.eval_every, args.seeds = 2, 1, min(args.seeds, 2)
        args.eval_problems = args.eval_problems or 8
    for name in ("seeds", "rl_steps", "eval_every", "draws"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.chunk < 0 or args.chunk % args.eval_every:
        parser.error(f"--chunk must be a multiple of --eval_every={args.eval_every} (or 0), got {args.chunk}")
    if not 0.0 < args.target <= 1.0:
        parser.error(f"--target must be in (0, 1], got {args.target}")
    unknown = [m for m in methods if m not in regime["methods"]]
    if unknown:
        parser.error(f"--methods {','.join(unknown)}: not a method of regime {args.regime}"
                     f" ({', '.join(regime['methods'])})")
    if args.replay and "golf" not in methods:
        parser.error("--replay replays GOLF's runs: --methods must include golf")

    started = time.monotonic()
    load_before = list(os.getloadavg())
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for seed in range(args.seeds):
        for method in methods:
            workdir = os.path.join(args.root, f"{run_name(method, args.golf_set)}_seed{seed}")
            t0 = time.monotonic()
            records = train_run(config(method, seed, args), workdir, args)
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

    replays = []
    if args.replay:
        for run in runs["golf"]:
            t0 = time.monotonic()
            workdir = os.path.join(args.root, f"replay_{args.replay}_{run_name('golf', args.golf_set)}_seed{run['seed']}")
            records = replay(run["workdir"], workdir, config("golf", run["seed"], args), args.replay)
            replays.append({"seed": run["seed"], "objective": args.replay, "workdir": os.path.relpath(workdir),
                            "seconds": time.monotonic() - t0, "curve": curve(records),
                            "crossing": crossing(records, args.target)})
            print(f"replay ({args.replay}) of GOLF seed {run['seed']}: accuracy"
                  f" {replays[-1]['curve']['accuracy'][-1]:.3f}, target reached at {replays[-1]['crossing']}",
                  flush=True)

    summary = summarise(runs, args.draws) if "golf" in runs and "grpo" in runs else None
    result = {
        "command": " ".join(["benchmarks/golf_vs_grpo.py"] + (argv if argv is not None else sys.argv[1:])),
        "settings": vars(args),
        "runs": runs,
        "summary": summary,
        "replays": replays,
        "replay_summary": replay_summary(runs["golf"], replays) if replays else None,
        "seconds": time.monotonic() - started,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": list(os.getloadavg())},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    plot(runs, args.target, os.path.splitext(args.out)[0] + ".png",
         f"GOLF vs GRPO on reverse ({args.regime}) from the committed base policy ({args.seeds} seeds each)",
         replays)
    print(json.dumps({"summary": summary, "replay_summary": result["replay_summary"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
