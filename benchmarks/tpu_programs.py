"""Two programs compiled for TPU on this host: splash in the train step, the decode step's bytes.

    python benchmarks/tpu_programs.py --out benchmarks/results/tpu_programs.json

compiles, for TPU devices described by libtpu (golfjax/aot/slices.py), with
no TPU attached:

- the train step (`Trainer.jitted_step`: VESPO loss, AdamW, one micro-batch)
  of `qwen2.5-0.5b` (bf16, remat, attention "auto") on 16 rows of 128 prompt
  + 16,256 response tokens, fsdp over the 16 chips of a v5p-32 (2x2x4): its
  per-device memory, and whether splash's Mosaic kernels are in it;
- the scanned decode step (`benchmarks/programs.decode_step_program`) of
  512 rows after 128-token prompts, 256 new tokens, on one v5p chip: XLA's
  bytes accessed against `decode.decode_bytes_per_step`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="Write the figures to this JSON file.")
    args = parser.parse_args()
    import jax

    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    from benchmarks import programs
    from golfjax import sharding
    from golfjax.aot import slices
    from golfjax.config import TrainSection
    from golfjax.losses import LossConfig
    from golfjax.models import config as config_lib
    from golfjax.train import trainer as trainer_lib
    from golfjax.train.state import OptimizerConfig

    gib = 2**30
    config = config_lib.get_preset("qwen2.5-0.5b")
    mesh = sharding.make_mesh(1, -1, 1, devices=slices.parse("v5p-32").devices())
    trainer = trainer_lib.Trainer(config.replace(remat=True), TrainSection(loss="vespo"), LossConfig(),
                                  OptimizerConfig(), mesh)
    batch = programs.abstract_batch(16, 128, 16384 - 128, trainer.batch_shardings.prompt_tokens_NxP)
    start = time.perf_counter()
    compiled = trainer.jitted_step(batch).lower(trainer.abstract_state, batch, jax.random.PRNGKey(0)).compile()
    train = dict(programs.stats(compiled), compile_s=time.perf_counter() - start)
    text = compiled.as_text()
    train["splash_kernels"] = sorted({k for k in ("fwd", "dq", "dkv") if f"splash_mha_{k}" in text})
    print(f"train step, 16 x 16,384 tokens on v5p-32: splash kernels {train['splash_kernels']},"
          f" per device {train['argument_bytes'] / gib:.2f} GiB arguments, {train['temp_bytes'] / gib:.2f} GiB"
          f" temp; compiled in {train['compile_s']:.0f} s", flush=True)
    _, decode = programs.decode_step_program(config, 512, 128, 256, device=slices.parse("v5p-8").devices()[0])
    print(f"decode step ({decode['decode_layers']}), 512 rows, {decode['slots']} slots on one v5p chip:"
          f" {decode['bytes_accessed'] / 1e9:.2f} GB accessed, roofline {decode['roofline_bytes'] / 1e9:.2f} GB"
          f" ({decode['bytes_per_roofline']:.2f}x); compiled in {decode['compile_s']:.0f} s", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"train_step": train, "decode_step": decode, "load_average": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
    main()
