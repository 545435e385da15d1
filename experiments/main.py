"""The entry point for every golfjax experiment.

    python -m experiments.main --config=experiments/configs/golf.py:arith \
        --workdir=/tmp/golf_arith [--config.optimizer.lr=1e-5 ...]

`--config` names a Python config file and its variant (`get_config(variant)`);
any key can be overridden with a dotted flag. The work directory is the run's
identity: rerunning the same command resumes from its latest checkpoint.
"""

from __future__ import annotations

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and variant, e.g. experiments/configs/grpo.py:smoke.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory: checkpoints, metrics, logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from golfjax import runner  # After flag parsing: importing JAX is slow.

    runner.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
