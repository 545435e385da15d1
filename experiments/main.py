"""The entry point for every golfjax experiment.

    python -m experiments.main --config=experiments/configs/golf.py:arith \
        --workdir=/tmp/golf_arith [--config.optimizer.lr=1e-5 ...]

`--config` names a Python config file and its variant (`get_config(variant)`);
any key can be overridden with a dotted flag. The work directory is the run's
identity: rerunning the same command resumes from its latest checkpoint.

Multi-host (a Cloud TPU pod slice, or several machines): every host runs the
same command with `--multihost=on` (Cloud TPU detects the rest itself) or with
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`; see
experiments/multihost.py. The work directory must then be on a file system
that every host mounts.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import multihost

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and variant, e.g. experiments/configs/grpo.py:smoke.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory: checkpoints, metrics, logs.")
_MULTIHOST = flags.DEFINE_enum(
    "multihost", "auto", list(multihost.MODES),
    "Call jax.distributed.initialize(): on, off, or auto (when the environment shows "
    "a multi-process run).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: HOST:PORT of process 0 (default: detected).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-host: number of processes (default: detected).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-host: this process's id, 0 to num_processes-1 (default: detected).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Before anything touches a device: every process joins the others first.
    try:
        multihost.initialize(
            _MULTIHOST.value, coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
            environ=os.environ,
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    import jax  # After flag parsing: importing JAX is slow.

    from golfjax import train_loop

    # JAX's persistent compilation cache: a rerun or a resume reuses the
    # compiled train step and sampler programs ($JAX_COMPILATION_CACHE_DIR
    # overrides the directory).
    jax.config.update("jax_compilation_cache_dir", os.environ.get(
        "JAX_COMPILATION_CACHE_DIR",
        os.path.join(os.path.expanduser("~"), ".cache", "golfjax", "jax-compilation-cache")))

    train_loop.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
