"""Forward-pass benchmark: compile time vs depth, and tokens/s.

Measures, for each config, the jit lower+compile time of `transformer.apply` and
the forward throughput (median of timed runs after a warm-up, each blocked on):

  narrow_2l    2 layers, D=256 (the scan makes compile time flat in depth...)
  narrow_28l  28 layers, D=256 (...so this compiles about as fast as narrow_2l)
  base_100m   the `base_100m` preset (~100M parameters)

Run from the repository root after `make venv` (golfjax installed; otherwise
prefix PYTHONPATH=.), about 1-2 minutes on a 2-core CPU:

  .venv/bin/python benchmarks/model.py --out benchmarks/results/model.json

Flags pick the batch, sequence length, dtype and number of timed runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from golfjax.models import config as config_lib
from golfjax.models import transformer

NARROW = config_lib.ModelConfig(
    family="qwen3", vocab_size=4096, embed_dim=256, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=64, mlp_dim=768, qk_norm=True)
CONFIGS = {
    "narrow_2l": NARROW,
    "narrow_28l": NARROW.replace(num_layers=28),
    "base_100m": config_lib.PRESETS["base_100m"],
}


def bench(name: str, config: config_lib.ModelConfig, batch: int, seq: int,
          runs: int) -> dict[str, object]:
    params = transformer.init_params(config, jax.random.key(0))
    jax.block_until_ready(params)
    tokens_NxS = jnp.zeros((batch, seq), jnp.int32)
    positions_NxS = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    mask_NxS = jnp.ones((batch, seq), bool)
    fn = jax.jit(functools.partial(transformer.apply, config=config))
    start = time.perf_counter()
    compiled = fn.lower(params, tokens_NxS, positions_NxS, mask_NxS).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(params, tokens_NxS, positions_NxS, mask_NxS))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, tokens_NxS, positions_NxS, mask_NxS))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"name": name, "params": config.num_params, "layers": config.num_layers,
            "embed_dim": config.embed_dim, "batch": batch, "seq": seq,
            "dtype": config.compute_dtype, "compile_s": compile_s,
            "forward_median_s": median, "tokens_per_s": batch * seq / median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/model.json")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=config_lib.DTYPES)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()

    results = []
    for name in args.configs.split(","):
        config = CONFIGS[name].replace(param_dtype=args.dtype,
                                       compute_dtype=args.dtype)
        results.append(bench(name, config, args.batch, args.seq, args.runs))
        r = results[-1]
        print(f"{name:>11}  {r['params'] / 1e6:7.1f}M params  {r['layers']:3d} layers"
              f"  compile {r['compile_s']:6.2f}s  forward {r['forward_median_s']:7.3f}s"
              f"  {r['tokens_per_s']:9.0f} tok/s", flush=True)

    report = {"backend": jax.default_backend(),
              "devices": [str(d) for d in jax.devices()],
              "cpu_count": os.cpu_count(), "machine": platform.machine(),
              "jax": jax.__version__, "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
