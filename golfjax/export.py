"""Exports a run's policy as a Hugging Face checkpoint.

    python -m golfjax.export --workdir=/tmp/golf --out=/tmp/golf-policy [--step=N]

Reads the config saved with the checkpoint (so nothing about the run needs to be
repeated), restores the train state of that step (default: the newest one that
verifies against its digest; each damaged newer one is reported in a line and
left where it is, since a run may own the directory), and writes
`config.json` plus safetensors with `golfjax.models.hf.save`. When the run used
the built-in character tokenizer, its files are copied next to the weights, so the
directory is a complete checkpoint: `model.hf_path` and `task.tokenizer` of a
later run can both point at it (e.g. RL runs that start from one shared
cold-start checkpoint, as benchmarks/golf_vs_grpo.py does), and transformers
loads it too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from golfjax import config as config_lib
from golfjax import sharding
from golfjax.models import config as model_config_lib
from golfjax.models import hf
from golfjax.train import checkpoint as checkpoint_lib
from golfjax.train.trainer import Trainer


def _model_config(cfg: config_lib.RunConfig) -> model_config_lib.ModelConfig:
    """The policy's architecture as the run built it (without loading weights)."""
    if cfg.model.hf_path:
        with open(os.path.join(cfg.model.hf_path, "config.json")) as f:
            return hf.config_from_hf(json.load(f))
    return model_config_lib.get_preset(cfg.model.preset)


def export(workdir: str, out_dir: str, step: int | None = None) -> int:
    """Writes the policy of `workdir`'s checkpoint `step` to `out_dir`.

    Args:
      workdir: a run's work directory (holds `checkpoints/`).
      out_dir: the HF checkpoint directory to write (created if missing).
      step: which checkpoint; default the newest intact one.

    Returns:
      The exported step.

    Raises:
      FileNotFoundError: `workdir` holds no checkpoint (or not `step`).
      CheckpointError: `step` is damaged, or (default) every step is; one line
        naming the path and the cause.
    """
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
        if step is None:
            # Unlike a resuming run, an export takes no lock: it moves nothing,
            # since a run may be writing the same directory.
            step = ckpt.newest_intact(set_aside=False).step
        elif step not in steps:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {workdir}; saved steps: {sorted(steps)}"
            )
        else:
            ckpt.verify(step)
        cfg = config_lib.build(config_lib.RunConfig, ckpt.restore_config(step))
        mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
        model_config = _model_config(cfg)
        # The state's optimizer part must match the saved structure: the run's
        # optimizer config builds it; the loss settings do not matter here.
        trainer = Trainer(model_config, cfg.train, cfg.loss, cfg.optimizer, mesh)
        state, _ = ckpt.restore(trainer.abstract_state, step)
    finally:
        ckpt.close()
    hf.save(out_dir, model_config, state.params)
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    if cfg.task.tokenizer == "builtin" and os.path.isdir(tokenizer_dir):
        for name in os.listdir(tokenizer_dir):
            shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the run's work directory")
    parser.add_argument("--out", required=True, help="the HF checkpoint directory to write")
    parser.add_argument("--step", type=int, default=None,
                        help="default: the newest checkpoint that verifies")
    args = parser.parse_args(argv)
    try:
        step = export(args.workdir, args.out, args.step)
    except (FileNotFoundError, checkpoint_lib.CheckpointError) as e:
        print(f"golfjax.export: {e}", file=sys.stderr)
        return 1
    print(f"exported step {step} of {args.workdir} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
