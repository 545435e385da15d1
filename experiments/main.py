"""The entry point for every golfjax experiment.

    python -m experiments.main --config=experiments/configs/golf.py:arith \
        --workdir=/tmp/golf_arith [--config.optimizer.lr=1e-5 ...]

`--config` names a Python config file and its variant (`get_config(variant)`);
any key can be overridden with a dotted flag. The work directory is the run's
identity: rerunning the same command resumes from its latest checkpoint.

An expected refusal (an unknown key or invalid value, a held lock, a work
directory it cannot write, no intact checkpoint, a resume with changed keys,
the non-finite policy) is one line on stderr, with exit code 2 for bad input
(flags, config) and 1 for the others (golfjax/refusals.py); `--verbose` adds
the traceback and Orbax's progress logs.

Multi-host (a Cloud TPU pod slice, or several machines): every host runs the
same command with `--multihost=on` (Cloud TPU detects the rest itself) or with
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`; see
experiments/multihost.py. The work directory must then be on a file system
that every host mounts.
"""

from __future__ import annotations

import logging as py_logging
import os
import re
import sys

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
_VERBOSE = flags.DEFINE_boolean(
    "verbose", False, "A refusal prints its traceback too; Orbax logs its progress.")
flags.mark_flags_as_required(["config", "workdir"])

_BAD_INPUT = 2  # golfjax.refusals.BAD_INPUT, before golfjax (and JAX) is imported.


def _refuse(message: str) -> None:
    print(" ".join(message.split()), file=sys.stderr, flush=True)
    sys.exit(_BAD_INPUT)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with an unknown `--config.*` key or an invalid flag
    refused in one line (`unknown config key train.bogus; did you mean ...`)."""
    from golfjax import config_dict  # The keys' schema.
    from golfjax.config import RunConfig

    overrides = [m.group(1) for m in (re.match(r"^--?config\.([\w.]+)(=|$)", arg) for arg in argv[1:]) if m]
    for key in overrides:
        message = config_dict.unknown_key(RunConfig, key)
        if message:
            _refuse(message)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _refuse(str(e))
    except (AttributeError, KeyError) as e:  # ml_collections: a key the config file does not set.
        name = str(e).strip("\"'").split("\\n")[0].strip("\"'")
        keys = [k for k in overrides if k == name or k.endswith("." + name)]
        _refuse(f"unknown config key {keys[0]} (the config file sets no such key)" if keys
                else f"invalid flag ({type(e).__name__}: {e})")
    return []


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
        _refuse(str(e))
    import jax  # After flag parsing: importing JAX is slow.

    from golfjax import refusals
    from golfjax import train_loop

    if not _VERBOSE.value and not flags.FLAGS["verbosity"].present:
        # Orbax logs its progress, and the error of a failed save (which the run
        # raises again as its refusal) from its threads, as asyncio does; golfjax's
        # own lines (e.g. the prompt pipeline's kept and dropped counts) stay.
        orbax = f"{os.sep}orbax{os.sep}"
        py_logging.getLogger("absl").addFilter(lambda record: orbax not in record.pathname)
        py_logging.getLogger("asyncio").setLevel(py_logging.CRITICAL)

    # JAX's persistent compilation cache: a rerun or a resume reuses the
    # compiled train step and sampler programs ($JAX_COMPILATION_CACHE_DIR
    # overrides the directory).
    jax.config.update("jax_compilation_cache_dir", os.environ.get(
        "JAX_COMPILATION_CACHE_DIR",
        os.path.join(os.path.expanduser("~"), ".cache", "golfjax", "jax-compilation-cache")))

    code = refusals.exit_code(lambda: train_loop.train(_CONFIG.value, _WORKDIR.value), verbose=_VERBOSE.value)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
