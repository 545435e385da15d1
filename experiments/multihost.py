"""Multi-host start-up: when and how a process calls `jax.distributed.initialize()`.

Every host of a multi-host run (a Cloud TPU pod slice, a Multislice, a GPU
cluster) runs the same command; each process must join the others before
anything touches a device, so experiments/main.py calls `initialize()` right
after parsing its flags. Then `jax.devices()` lists every device of every host,
`golfjax.sharding.make_mesh` builds the mesh over all of them. Every process
holds the same whole host batch (a dataset is read one shard per process and
the batch positions all-gathered) and feeds its own devices' rows of it
(`golfjax.sharding.host_to_global`); rollouts are all-gathered back to every
process (`golfjax.sharding.global_to_host`) for decoding and scoring.

`--multihost`:

- `on`: always initialize. On Cloud TPU (and under SLURM or Open MPI) JAX finds
  the coordinator, the process count and this process's id by itself; elsewhere
  pass `--coordinator_address`, `--num_processes` and `--process_id`.
- `auto` (default): initialize when the environment shows a multi-process
  run: one of those flags is given, `JAX_COORDINATOR_ADDRESS` is set, or a
  multi-host TPU environment (`TPU_WORKER_HOSTNAMES` with more than one host,
  or a Multislice's `MEGASCALE_COORDINATOR_ADDRESS`). The launcher passes `on`
  for TPU slices, where these variables may exist only inside the TPU runtime.
- `off`: never (one process; the flags above are then an error).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MODES = ("auto", "on", "off")


def _detected(environ: Mapping[str, str]) -> bool:
    hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    return bool(
        environ.get("JAX_COORDINATOR_ADDRESS")
        or environ.get("MEGASCALE_COORDINATOR_ADDRESS")
        or len(hosts) > 1
    )


def initialize_kwargs(
    mode: str,
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str],
) -> dict[str, Any] | None:
    """The arguments of `jax.distributed.initialize`, or None for a single process.

    Args:
      mode: `--multihost`: "auto", "on" or "off".
      coordinator_address, num_processes, process_id: the flags of the same
        names; None lets JAX detect them.
      environ: the process environment (`os.environ`).

    Raises:
      ValueError naming the offending flag.
    """
    if mode not in MODES:
        raise ValueError(f"--multihost={mode!r}: expected one of {', '.join(MODES)}")
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if mode == "off":
        if given:
            raise ValueError(f"--{next(iter(given))} needs --multihost=auto or on, not off")
        return None
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num_processes={num_processes}: expected >= 1")
    if process_id is not None:
        if num_processes is None:
            raise ValueError("--process_id needs --num_processes")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id}: expected 0 <= id < "
                             f"--num_processes={num_processes}")
    if mode == "auto" and not given and not _detected(environ):
        return None
    return given


def initialize(
    mode: str,
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str],
) -> bool:
    """Calls `jax.distributed.initialize` when `initialize_kwargs` says so.

    Returns:
      Whether this is a multi-process run.
    """
    kwargs = initialize_kwargs(
        mode, coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id, environ=environ,
    )
    if kwargs is None:
        return False
    import jax  # Local: importing JAX is slow, and `--help` should not need it.

    jax.distributed.initialize(**kwargs)
    return True
