"""Process groups: one JAX job whose processes split into a learner and a rollout group.

VESPO's fully asynchronous runs train on one set of hosts while others
generate (issue #29; docs/algorithms.md#async-processes). In golfjax that is
one multi-controller JAX job (`jax.distributed.initialize`): the last
`schedule.rollout_processes` processes form the rollout group, the others the
learner group. Each group runs its own programs on its own devices; the two
meet only in golfjax/parallel/channel.py's exchanges.

Everything in golfjax that speaks of "the processes" (the host <-> mesh
helpers of golfjax/sharding.py, checkpoints, the work directory, the data
shards) means the processes of this process's group: `process_count`,
`process_index`, `devices`, and the group's collectives `allgather`,
`broadcast` and `barrier`. Before `enter` (and in every job that has no
groups) the group is the whole job, so a single-group run behaves exactly as
plain JAX.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LEARNER, ROLLOUT = "learner", "rollout"
BARRIER_TIMEOUT_MS = 30 * 60 * 1000  # A group's slowest process may be compiling.


@dataclasses.dataclass(frozen=True)
class ProcessGroups:
    """The job's split: process ids of the learner and of the rollout group."""

    learner: tuple[int, ...]
    rollout: tuple[int, ...]

    @classmethod
    def split(cls, process_count: int, rollout_processes: int) -> ProcessGroups:
        """The last `rollout_processes` of `process_count` processes roll out.

        Raises:
          ValueError naming `schedule.rollout_processes` when either group
          would be empty.
        """
        if not 0 < rollout_processes < process_count:
            raise ValueError(
                f"schedule.rollout_processes={rollout_processes}: expected 1 to {process_count - 1} of"
                f" the job's {process_count} processes (the others train)")
        ids = tuple(range(process_count))
        return cls(ids[:-rollout_processes], ids[-rollout_processes:])

    def role(self, process_id: int) -> str:
        return ROLLOUT if process_id in self.rollout else LEARNER

    def members(self, role: str) -> tuple[int, ...]:
        return self.rollout if role == ROLLOUT else self.learner


_group: tuple[int, ...] | None = None  # This process's group; None: the whole job.


def enter(processes: Sequence[int]) -> None:
    """Makes `processes` (which must include this one) this process's group."""
    global _group
    processes = tuple(sorted(processes))
    if jax.process_index() not in processes:
        raise ValueError(f"process {jax.process_index()} is not in its group {processes}")
    _group = processes
    _exchange_mesh.cache_clear()


def leave() -> None:
    """Back to the whole job (tests; a process that ends its role)."""
    global _group
    _group = None
    _exchange_mesh.cache_clear()


def members() -> tuple[int, ...]:
    """Process ids of this process's group, ascending."""
    return _group if _group is not None else tuple(range(jax.process_count()))


def process_count() -> int:
    return len(members())


def process_index() -> int:
    """This process's position in its group (0: the group's primary)."""
    return members().index(jax.process_index())


def is_primary() -> bool:
    return process_index() == 0


def is_multiprocess() -> bool:
    """Whether this process's group spans several processes."""
    return process_count() > 1


def devices() -> list[jax.Device]:
    """The group's devices, in `jax.devices()` order."""
    group = set(members())
    return [d for d in jax.devices() if d.process_index in group]


@functools.lru_cache(maxsize=None)
def _exchange_mesh(processes: tuple[int, ...]) -> Mesh:
    """One device per process of `processes` (its first), on an axis "p"."""
    first = {}
    for d in jax.devices():
        first.setdefault(d.process_index, d)
    return Mesh(np.array([first[p] for p in processes]), ("p",))


@functools.lru_cache(maxsize=None)
def _gather_program(mesh: Mesh) -> Any:
    return jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, PartitionSpec()))


def allgather(local: Any) -> np.ndarray:
    """Every group process's `local` (same shape and dtype everywhere), stacked
    in group order: shape `(process_count(), *local.shape)`."""
    local = np.asarray(local)
    if not is_multiprocess():
        return local[None]
    mesh = _exchange_mesh(members())
    mine = mesh.devices.flat[process_index()]
    split = jax.make_array_from_single_device_arrays(
        (process_count(),) + local.shape, NamedSharding(mesh, PartitionSpec("p")),
        [jax.device_put(local[None], mine)])
    return np.asarray(_gather_program(mesh)(split).addressable_data(0))


def broadcast(value: Any) -> np.ndarray:
    """The group primary's `value` on every process of the group."""
    return allgather(value)[0]


def barrier(name: str) -> None:
    """Waits until every process of the group reaches `name`."""
    if not is_multiprocess():
        return
    from jax._src import distributed

    distributed.global_state.client.wait_at_barrier(
        f"golfjax-group-{members()[0]}-{name}", BARRIER_TIMEOUT_MS, list(members()))
