"""Exports a run's policy as a Hugging Face checkpoint.

    python -m golfjax.export --workdir=/tmp/golf --out=/tmp/golf-policy [--step=N]

Reads the config saved with the checkpoint (so nothing about the run needs to be
repeated), restores the train state of that step (default: the newest one that
verifies against its digest and restores, finite; each damaged newer one is
reported in a line and left where it is, since a run may own the directory),
and writes
`config.json` plus safetensors with `golfjax.models.hf.save`. When the run used
the built-in character tokenizer, its files are copied next to the weights, so the
directory is a complete checkpoint: `model.hf_path` and `task.tokenizer` of a
later run can both point at it (e.g. RL runs that start from one shared
cold-start checkpoint, as benchmarks/golf_vs_grpo.py does), and transformers
loads it too.

A refusal (no checkpoint, a damaged `--step`, none intact, an unwritable
`--out`) is one line on stderr, exit code 2 for a bad `--step` and 1 for the
others (golfjax/refusals.py); `--verbose` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from golfjax import config as config_lib
from golfjax import refusals
from golfjax import sharding
from golfjax.models import hf
from golfjax.train import checkpoint as checkpoint_lib
from golfjax.train import reference as reference_lib
from golfjax.train.trainer import Trainer


def export(workdir: str, out_dir: str, step: int | None = None) -> int:
    """Writes the policy of `workdir`'s checkpoint `step` to `out_dir`.

    Args:
      workdir: a run's work directory (holds `checkpoints/`).
      out_dir: the HF checkpoint directory to write (created if missing).
      step: which checkpoint; default the newest intact one.

    Returns:
      The exported step.

    Raises:
      CheckpointError: `workdir` holds no checkpoint, `step` is damaged, or
        (default) no step restores; one line naming the path and the cause.
      ConfigError: `step` is not one of the saved steps.
    """
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise checkpoint_lib.CheckpointError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
        if step is not None and step not in steps:
            raise config_lib.ConfigError(
                f"--step={step}: no checkpoint for step {step} in {workdir}; saved steps: {sorted(steps)}")
        if step is not None:
            ckpt.verify(step)
        # Unlike a resuming run, an export takes no lock: it moves nothing,
        # since a run may be writing the same directory.
        # Its config builds the program; `restore_newest` reports the damaged steps.
        newest = ckpt.newest_intact(lambda _: None, set_aside=False) if step is None else None
        cfg = config_lib.build(config_lib.RunConfig, ckpt.restore_config(step if newest is None else newest.step))
        mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
        model_config = reference_lib.policy_config(cfg)
        # The state's optimizer part must match the saved structure: the run's
        # optimizer config builds it (the cold start's has the same structure);
        # the loss settings do not matter here.
        trainer = Trainer(model_config, cfg.train, cfg.loss, cfg.rl_optimizer, mesh)
        if step is None:
            found = ckpt.restore_newest(lambda _: trainer.abstract_state, set_aside=False)
            step, state = found.step, found.state
        else:
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
                        help="default: the newest checkpoint that verifies and restores")
    parser.add_argument("--verbose", action="store_true", help="a refusal prints its traceback too")
    args = parser.parse_args(argv)
    exported: list[int] = []
    code = refusals.exit_code(lambda: exported.append(export(args.workdir, args.out, args.step)),
                              verbose=args.verbose)
    if not code:
        print(f"exported step {exported[0]} of {args.workdir} to {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
