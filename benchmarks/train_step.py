"""Train-step benchmark: tokens/s and achieved FLOP/s vs the measured matmul peak.

For each config, in a fresh subprocess (so its peak RSS is its own), the script
builds a `Trainer` on a one-device mesh (1, 1, 1) with loss "ppo_clip",
micro_batches=1, logp_chunk=128, AdamW with clipping, and times `Trainer.step`
(it blocks on CPU; elsewhere the script blocks on the new state):

  config     preset     params  N rows  P prompt  T response  timed steps
  tiny       tiny        0.1M      8      32         96         10
  small_20m  small_20m  22.0M      4      32         96          5
  base_100m  base_100m 100.7M      4      32         96          3

(sequence P + T = 128: small enough that the whole run fits in about 5 minutes
on a 2-core CPU; --rows/--prompt/--response/--steps override the shapes).
Run from the repository root after `make venv` (golfjax installed); --quick
runs tiny only, in about a minute, mostly compiling:

  .venv/bin/python benchmarks/train_step.py --out benchmarks/results/train_step.json

Figures (medians over the timed steps, after --warmup untimed ones; the step
is compiled ahead of time, and the jitted call reuses that executable):

- tokens/s = N * (P + T) / step time: every sequence position runs through the
  model; only the T response positions are unembedded and scored.
- matmul peak: a jitted `jnp.dot` of two square matrices of side --peak-size
  (default 2048) in the step's compute dtype, 2 size^3 / time, timed in the
  same process before the config's steps, once before each timed step and
  after them (the median of all), so the fraction below compares numbers taken
  under the same machine load (other processes share the cores).
- model FLOPs per step (what the model needs, not what the program does;
  remat recomputation is not counted, as in MFU):
    dense     6 * P_dense * N * (P + T), P_dense = the layers' projection and
              MLP weights (norm scales and the embedding excluded: a gather is
              not a matmul);
    unembed   6 * V * D * N * T: the LM head (the embedding table where tied,
              as in small_20m and base_100m) is applied to the T response
              positions only, so it is counted apart, not inside
              "6 * params * tokens";
    attention 12 * L * S^2 * n_heads * head_dim * N, S = P + T, the PaLM
              estimate (Chowdhery et al. 2022, appendix B): QK^T and PV are
              2 * S^2 * n_heads * head_dim each forward, times 3 with the
              backward. Not halved for causality: the model computes the full
              masked S x S scores.
  `naive_6nd_flops` (6 * all parameters * N * (P + T)) is reported alongside.
- XLA cross-checks on the compiled step: `xla_cost_flops` is XLA's
  `cost_analysis()["flops"]` as is; it counts a while loop's body once (the
  layer scan and the log-prob chunk map are loops), so `hlo_dot_flops` walks
  the optimised HLO instead and sums 2 * |out| * |contracted| over every dot,
  times the `known_trip_count` of each enclosing loop. It counts what the
  program executes, so recomputation XLA keeps shows up in it (with T <=
  logp_chunk there is one log-prob chunk, and XLA merges its rematerialised
  unembedding with the forward one: it then equals the model FLOPs).
- fraction of peak = model FLOPs / step time / matmul peak. Other processes
  sharing the cores make both numbers move; `fraction_of_peak_cpu_time` is the
  same ratio with each side's process CPU time (all threads) in place of wall
  time, FLOPs per core-second, which is steadier under load (the "cpu%" column;
  it also charges threads that spin while waiting). On an accelerator
  (a JAX platform other than "cpu") it is labelled MFU, and the compute dtype
  and the peak's dtype default to bfloat16.
- breakdown: the forward pass alone (`Trainer.logprobs`: the model plus the
  chunked log-probs, no entropy) and the optimizer update alone (clip + AdamW
  over the parameter tree, jitted and donated); backward ~ step - both.
- peak host memory: `ru_maxrss` of the config's subprocess after its run.

Flags pick the configs, the shapes, the number of steps and the dtype.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

# Runnable as `python benchmarks/train_step.py` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks import programs  # noqa: E402
from golfjax import sharding  # noqa: E402
from golfjax import types  # noqa: E402
from golfjax.models import config as config_lib  # noqa: E402
from golfjax.models import transformer  # noqa: E402
from golfjax.train import step as step_lib  # noqa: E402
from golfjax.train import trainer as trainer_lib  # noqa: E402
from golfjax.train.state import OptimizerConfig  # noqa: E402
from golfjax.config import TrainSection  # noqa: E402
from golfjax.losses import LossConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Shape:
    preset: str
    rows: int  # N
    prompt: int  # P
    response: int  # T
    steps: int  # timed steps (unless --steps)


CONFIGS = {
    "tiny": Shape("tiny", rows=8, prompt=32, response=96, steps=10),
    "small_20m": Shape("small_20m", rows=4, prompt=32, response=96, steps=5),
    "base_100m": Shape("base_100m", rows=4, prompt=32, response=96, steps=3),
}
# Any other preset (e.g. qwen2.5-0.5b, qwen3-0.6b, llama3.2-1b) runs at these
# shapes unless --rows/--prompt/--response say otherwise.
DEFAULT_SHAPE = Shape("", rows=2, prompt=128, response=896, steps=3)

# Dense bf16 peak FLOP/s by `device.device_kind`, the MFU denominator.
PEAK_FLOPS: dict[str, float] = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def time_calls(fn: Any, repeats: int, cpu_times: list[float] | None = None) -> list[float]:
    """Wall times of `repeats` calls of `fn` (which must block).

    With `cpu_times`, also appends each call's process CPU time (all threads).
    """
    times = []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - start_cpu)
    return times


def make_matmul(dtype: str, size: int) -> Any:
    """A blocking call of a compiled `size x size` matrix product (2 size^3
    FLOPs), warmed up."""
    lhs = jax.random.normal(jax.random.key(1), (size, size), dtype)
    rhs = jax.random.normal(jax.random.key(2), (size, size), dtype)
    dot = jax.jit(jnp.dot).lower(lhs, rhs).compile()
    call = lambda: jax.block_until_ready(dot(lhs, rhs))
    call()
    return call


def model_flops(config: config_lib.ModelConfig, n: int, p: int, t: int) -> dict[str, int]:
    """Forward + backward FLOPs of one step by the formulas in the docstring."""
    d, h, f = config.embed_dim, config.head_dim, config.mlp_dim
    dense_params = config.num_layers * (
        d * h * (2 * config.num_heads + 2 * config.num_kv_heads) + 3 * d * f)
    s = p + t
    flops = {
        "dense": 6 * dense_params * n * s,
        "unembed": 6 * config.vocab_size * d * n * t,
        "attention": 12 * config.num_layers * s * s * config.num_heads * h * n,
    }
    flops["total"] = sum(flops.values())
    flops["naive_6nd"] = 6 * config.num_params * n * s
    return flops


_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\((.*)$")
_TUPLE_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%?([\w.\-]+) = \((?:\w+\[([\d,]*)\])?.*?\) "
    r"(while|call|conditional|fusion|custom-call)\((.*)$")


def hlo_dot_flops(hlo_text: str) -> float:
    """2 * |out| * |contracted| over every dot of an optimised HLO module.

    Follows fusions (`calls=`), calls (`to_apply=` of a `call`), conditionals
    (the costliest branch) and while loops (the body times `known_trip_count`;
    a loop without one counts once). GEMM custom calls (GPU) count by their
    `lhs_contracting_dimensions`; this path is untested here (CPU only).
    """
    shapes: dict[str, list[int]] = {}
    bodies: dict[str, list[str]] = {}
    current = None
    entry = None
    for line in hlo_text.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match:
                current = match.group(1)
                bodies[current] = []
                if line.startswith("ENTRY"):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        bodies[current].append(line)
        match = _INSTRUCTION.match(line)
        if match:
            dims = match.group(3)
            shapes[match.group(1)] = [int(x) for x in dims.split(",")] if dims else []

    memo: dict[str, float] = {}

    def callee(line: str, attr: str) -> str | None:
        match = re.search(attr + r"=%?([\w.\-]+)", line)
        return match.group(1) if match else None

    def cost(name: str) -> float:
        if name in memo:
            return memo[name]
        memo[name] = 0.0  # Guards against cycles (none in valid HLO).
        total = 0.0
        for line in bodies.get(name, []):
            match = _INSTRUCTION.match(line)
            tuple_match = None if match else _TUPLE_INSTRUCTION.match(line)
            if match:
                op, out_dims, rest = match.group(4), match.group(3), match.group(5)
            elif tuple_match:  # Tuple-shaped: loops, calls, GEMM custom calls.
                op, out_dims, rest = tuple_match.group(3), tuple_match.group(2) or "", tuple_match.group(4)
            else:
                continue
            gemm = op == "custom-call" and re.search(r'custom_call_target="[^"]*(gemm|matmul)', rest)
            if op == "dot" or gemm:
                lhs = re.match(r"\s*%?([\w.\-]+)", rest).group(1)
                contracting = (re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest) or
                               re.search(r'"lhs_contracting_dimensions":\[([\d",]*)\]', rest))
                lhs_dims = shapes.get(lhs, [])
                k = math.prod(lhs_dims[int(i.strip('"'))] for i in contracting.group(1).split(",")
                              if i) if contracting else 1
                out = math.prod(int(x) for x in out_dims.split(",") if x)
                total += 2.0 * out * k
            elif op == "fusion" or op == "call":
                target = callee(rest, "calls") or callee(rest, "to_apply")
                total += cost(target) if target else 0.0
            elif op == "while":
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', rest)
                total += cost(callee(rest, "body")) * (int(trips.group(1)) if trips else 1)
            elif op == "conditional":
                branches = re.search(r"branch_computations=\{([^}]*)\}", rest)
                names = [b.strip().lstrip("%") for b in branches.group(1).split(",")] if branches else []
                total += max((cost(b) for b in names), default=0.0)
        memo[name] = total
        return total

    return cost(entry) if entry else float("nan")


def make_batch(config: config_lib.ModelConfig, n: int, p: int, t: int) -> types.Batch:
    """Random ids; prompts left-padded to lengths in [P/2, P]; responses right-padded."""
    rng = np.random.default_rng(0)
    prompt_len_N = rng.integers(p // 2, p + 1, n)
    prompt_mask_NxP = np.arange(p)[None, :] >= (p - prompt_len_N)[:, None]
    response_len_N = rng.integers(t // 2, t + 1, n)
    response_mask_NxT = np.arange(t)[None, :] < response_len_N[:, None]
    return types.make_batch(
        rng.integers(0, config.vocab_size, (n, p)) * prompt_mask_NxP,
        prompt_mask_NxP,
        rng.integers(0, config.vocab_size, (n, t)) * response_mask_NxT,
        response_mask_NxT,
        np.where(response_mask_NxT, -rng.exponential(1.0, (n, t)), 0.0),
        rng.standard_normal(n),
    )


def bench(name: str, shape: Shape, args: argparse.Namespace) -> dict[str, Any]:
    """Times one config's step in this process; see the module docstring."""
    config = config_of(shape, args)
    n, p, t = shape.rows, shape.prompt, shape.response
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    train_cfg = TrainSection(loss="ppo_clip", micro_batches=1, logp_chunk=128)
    trainer = trainer_lib.Trainer(config, train_cfg, LossConfig(), OptimizerConfig(lr=1e-5), mesh)
    state = trainer.init_state(transformer.init_params(config, jax.random.key(0), mesh), seed=0)
    batch = trainer.put_batch(make_batch(config, n, p, t))

    start = time.perf_counter()
    key = jax.random.fold_in(state.rng, state.step)
    compiled = trainer.jitted_step(batch).lower(state, batch, key).compile()
    compile_s = time.perf_counter() - start
    compiled_stats = programs.stats(compiled)
    xla_cost_flops = compiled_stats["flops"]
    step_dot_flops = hlo_dot_flops(compiled.as_text())
    forward_compiled = trainer._logprobs.lower(  # pylint: disable=protected-access
        state.params, batch).compile()
    forward_dot_flops = hlo_dot_flops(forward_compiled.as_text())
    del compiled, forward_compiled

    matmul = make_matmul(args.dtype, args.peak_size)
    peak_cpu, step_cpu = [], []
    peak_before = time_calls(matmul, args.peak_repeats, peak_cpu)

    holder = {"state": state}

    def one_step() -> None:
        holder["state"], metrics = trainer.step(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))

    for _ in range(args.warmup):
        one_step()
    # One peak sample before each timed step, so both see the same load.
    step_times, peak_between = [], []
    for _ in range(shape.steps):
        peak_between += time_calls(matmul, 1, peak_cpu)
        step_times += time_calls(one_step, 1, step_cpu)

    forward_times = time_calls(
        lambda: jax.block_until_ready(trainer.logprobs(holder["state"].params, batch)),
        args.warmup + args.breakdown_runs)[args.warmup:]

    # The update alone, on a gradient-shaped tree (the parameters themselves).
    optimizer = trainer.optimizer

    def update(params: Any, opt_state: Any) -> tuple[Any, Any]:
        updates, opt_state = optimizer.update(params, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    update_fn = jax.jit(update, donate_argnums=(0, 1))
    opt = {"params": holder["state"].params, "opt_state": holder["state"].opt_state}

    def one_update() -> None:
        opt["params"], opt["opt_state"] = jax.block_until_ready(
            update_fn(opt["params"], opt["opt_state"]))

    optimizer_times = time_calls(one_update, args.warmup + args.breakdown_runs)[args.warmup:]

    peak_after = time_calls(matmul, args.peak_repeats, peak_cpu)

    flops = model_flops(config, n, p, t)
    step_s = statistics.median(step_times)
    peak_times = peak_before + peak_between + peak_after
    peak_s = statistics.median(peak_times)
    peak_flops_per_s = 2 * args.peak_size ** 3 / peak_s
    achieved = flops["total"] / step_s
    return {
        "name": name, "preset": shape.preset, "params": config.num_params,
        "layers": config.num_layers, "embed_dim": config.embed_dim,
        "vocab_size": config.vocab_size, "tie_embeddings": config.tie_embeddings,
        "remat": config.remat, "param_dtype": config.param_dtype,
        "compute_dtype": config.compute_dtype,
        "rows": n, "prompt": p, "response": t, "tokens_per_step": n * (p + t),
        "compile_s": compile_s,
        "step_median_s": step_s, "step_min_s": min(step_times), "step_times_s": step_times,
        "tokens_per_s": n * (p + t) / step_s,
        "model_flops_per_step": flops["total"],
        "model_flops_breakdown": {k: flops[k] for k in ("dense", "unembed", "attention")},
        "naive_6nd_flops_per_step": flops["naive_6nd"],
        "xla_cost_flops_per_step": xla_cost_flops,
        "hlo_dot_flops_per_step": step_dot_flops,
        "hlo_dot_flops_forward": forward_dot_flops,
        "achieved_flops_per_s": achieved,
        "matmul_peak_flops_per_s": peak_flops_per_s,
        "matmul_peak_size": args.peak_size,
        "matmul_peak_times_s": {"before": peak_before, "between_steps": peak_between,
                                "after": peak_after},
        "matmul_peak_max_flops_per_s": 2 * args.peak_size ** 3 / min(peak_times),
        "fraction_of_peak": achieved / peak_flops_per_s,
        "step_cpu_median_s": statistics.median(step_cpu),
        "matmul_peak_cpu_median_s": statistics.median(peak_cpu),
        "fraction_of_peak_cpu_time": (flops["total"] / statistics.median(step_cpu)) / (
            2 * args.peak_size ** 3 / statistics.median(peak_cpu)),
        "hlo_dot_flops_per_s": step_dot_flops / step_s,
        "mfu": (achieved / PEAK_FLOPS[jax.devices()[0].device_kind]
                if jax.devices()[0].device_kind in PEAK_FLOPS else None),
        "peak_flops_per_s_spec": PEAK_FLOPS.get(jax.devices()[0].device_kind),
        "compiled_temp_bytes": compiled_stats["temp_bytes"],
        "compiled_bytes_accessed": compiled_stats["bytes_accessed"],
        "forward_median_s": statistics.median(forward_times),
        "optimizer_median_s": statistics.median(optimizer_times),
        "backward_estimate_s": step_s - statistics.median(forward_times)
                               - statistics.median(optimizer_times),
        "forward_flops_per_s": forward_dot_flops / statistics.median(forward_times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def config_of(shape: Shape, args: argparse.Namespace) -> config_lib.ModelConfig:
    """The shape's preset with the flags' dtype, remat and attention."""
    preset = config_lib.get_preset(shape.preset)
    changes: dict[str, Any] = {"remat": args.remat or preset.remat}
    if args.dtype:
        changes["compute_dtype"] = args.dtype
    if args.attention:
        changes["attention"] = args.attention
    return preset.replace(**changes)


def compile_only(name: str, shape: Shape, args: argparse.Namespace) -> dict[str, Any]:
    """The step's compiled figures (no allocation, no run): temp bytes etc."""
    config = config_of(shape, argparse.Namespace(**{**vars(args),
                                                    "dtype": args.preset_dtype}))
    _, figures = programs.train_step_program(config, shape.rows, shape.prompt,
                                             shape.response)
    return {"name": name, "preset": shape.preset, "params": config.num_params,
            "remat": config.remat, "compute_dtype": config.compute_dtype,
            "attention": config.attention, "rows": shape.rows,
            "prompt": shape.prompt, "response": shape.response,
            "tokens_per_step": shape.rows * (shape.prompt + shape.response),
            "model_flops_per_step": model_flops(config, shape.rows, shape.prompt,
                                                shape.response)["total"],
            **{f"compiled_{k}": v for k, v in figures.items()}}


def run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """`bench(name)` in a fresh interpreter, so its peak RSS is its own."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        command = [sys.executable, os.path.abspath(__file__), f"--only={name}",
                   f"--child-out={out}", f"--dtype={args.dtype}",
                   f"--warmup={args.warmup}", *(["--remat"] if args.remat else []),
                   *([f"--attention={args.attention}"] if args.attention else []),
                   f"--breakdown-runs={args.breakdown_runs}",
                   f"--peak-size={args.peak_size}", f"--peak-repeats={args.peak_repeats}"]
        command += [f"--{flag}={getattr(args, flag)}"
                    for flag in ("rows", "prompt", "response", "steps")
                    if getattr(args, flag)]
        subprocess.run(command, check=True)
        with open(out) as f:
            return json.load(f)


def print_row(r: dict[str, Any]) -> None:
    seq = r["prompt"] + r["response"]
    print(f"{r['name']:>10} {r['params'] / 1e6:7.1f}M {r['rows']:3d}x{seq:<4d}"
          f" {r['step_median_s']:8.3f} {r['step_min_s']:8.3f} {r['tokens_per_s']:9.0f}"
          f" {r['model_flops_per_step'] / 1e9:9.1f} {r['hlo_dot_flops_per_step'] / 1e9:9.1f}"
          f" {r['achieved_flops_per_s'] / 1e9:8.1f} {r['matmul_peak_flops_per_s'] / 1e9:8.1f}"
          f" {100 * r['fraction_of_peak']:6.1f}% {100 * r['fraction_of_peak_cpu_time']:6.1f}%"
          f" {r['forward_median_s']:7.3f}"
          f" {r['optimizer_median_s']:7.3f} {r['peak_rss_mib']:8.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/train_step.json")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="tiny only")
    parser.add_argument("--steps", type=int, help="timed steps of every config")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--breakdown-runs", type=int, default=2,
                        help="timed forward-only and optimizer-only runs")
    parser.add_argument("--dtype", default=None, choices=config_lib.DTYPES,
                        help="compute dtype of the step and the peak matmul "
                             "(default: float32 on CPU, bfloat16 elsewhere)")
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument("--peak-repeats", type=int, default=3,
                        help="peak samples before and after the steps")
    parser.add_argument("--remat", action="store_true",
                        help="rematerialise each layer (ModelConfig.remat)")
    parser.add_argument("--rows", type=int, help="override N of every config")
    parser.add_argument("--prompt", type=int, help="override P of every config")
    parser.add_argument("--response", type=int, help="override T of every config")
    parser.add_argument("--attention", choices=config_lib.ATTENTION_IMPLEMENTATIONS,
                        help="ModelConfig.attention (default: the preset's, auto)")
    parser.add_argument("--compile-only", action="store_true",
                        help="lower and compile each step from abstract inputs and "
                             "report XLA's compiled temp bytes and bytes accessed; "
                             "runs nothing, so any shape works on a CPU")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    platform_name = jax.devices()[0].platform
    # --compile-only keeps each preset's own dtype unless --dtype is given.
    args.preset_dtype = args.dtype
    if args.dtype is None:
        args.dtype = "float32" if platform_name == "cpu" else "bfloat16"

    def shape_of(name: str) -> Shape:
        base = CONFIGS.get(name, dataclasses.replace(DEFAULT_SHAPE, preset=name))
        return dataclasses.replace(
            base, rows=args.rows or base.rows, prompt=args.prompt or base.prompt,
            response=args.response or base.response, steps=args.steps or base.steps)

    if args.only:
        result = bench(args.only, shape_of(args.only), args)
        with open(args.child_out, "w") as f:
            json.dump(result, f)
        return

    names = ["tiny"] if args.quick else args.configs.split(",")
    for name in names:
        if name not in CONFIGS and name not in config_lib.PRESETS:
            parser.error(f"unknown config {name!r}; known: {', '.join(CONFIGS)} "
                         f"or a preset: {', '.join(sorted(config_lib.PRESETS))}")
    if args.compile_only:
        results = []
        for name in names:
            result = compile_only(name, shape_of(name), args)
            results.append(result)
            print(f"{name}: {result['rows']}x{result['prompt'] + result['response']} "
                  f"temp {result['compiled_temp_bytes'] / 2**30:.2f} GiB, bytes "
                  f"accessed {result['compiled_bytes_accessed'] / 1e9:.1f} GB, compile "
                  f"{result['compiled_compile_s']:.1f} s", flush=True)
        write_report(args, {"mode": "compile_only", "results": results})
        return
    fraction = "MFU" if platform_name != "cpu" else "%peak"
    print(f"{'config':>10} {'params':>8} {'NxS':>8} {'step_s':>8} {'min_s':>8} {'tok/s':>9}"
          f" {'modelGF':>9} {'hloGF':>9} {'GFLOP/s':>8} {'peakGF/s':>8} {fraction:>7} {'cpu%':>7}"
          f" {'fwd_s':>7} {'opt_s':>7} {'rssMiB':>8}", flush=True)
    results = []
    start = time.perf_counter()
    for name in names:
        load_before = os.getloadavg()
        result = run_child(name, args)
        result["load_average_before"] = load_before
        result["load_average_after"] = os.getloadavg()
        results.append(result)
        print_row(result)
    wall_s = time.perf_counter() - start

    device = jax.devices()[0]
    report = {
        "backend": jax.default_backend(), "device_kind": device.device_kind,
        "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "jax": jax.__version__,
        "fraction_label": "mfu" if platform_name != "cpu" else "fraction_of_matmul_peak",
        "load_average_end": os.getloadavg(), "wall_s": wall_s,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "step_config": {"loss": "ppo_clip", "micro_batches": 1, "logp_chunk": 128},
        "warmup": args.warmup, "results": results,
    }
    write_report(args, report)
    print(f"({wall_s:.0f}s, load average {os.getloadavg()[0]:.2f})")


def write_report(args: argparse.Namespace, report: dict[str, Any]) -> None:
    device = jax.devices()[0]
    report = {"backend": jax.default_backend(), "device_kind": device.device_kind,
              "jax": jax.__version__, "command": " ".join(sys.argv), **report}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
