"""Cloud TPU VM slices: accelerator types, and the `gcloud` steps of a work unit.

    slice = make_tpu_slice("v5litepod-16")   # 16 chips, 4 hosts
    slice = make_tpu_slice("v5p-32", topology="2x2x4")   # 16 chips, 4 hosts

A work unit on TPU (see launch/jobs.py) is these steps, run by bash on the
launching machine: request the slice as a queued resource (`--node-count`
slices form a Multislice), wait until it is ACTIVE, copy the repository
tarball to every host (`--worker=all`), unpack and install it with
`jax[tpu]`, then run the entry point on every host of every slice at once;
the slice is deleted when the script exits. Every host runs one JAX process,
which calls `jax.distributed.initialize()` (`--multihost=on`; on Cloud TPU it
finds the coordinator and its process id itself).

Why `gcloud` rather than XManager's cloud executors: the open-source Vertex AI
executor maps only TPU v2/v3, the Kubernetes executor sets only the legacy
Cloud-TPU-on-GKE annotation (no node selector or topology for TPUs), and
`xm.JobRequirements` rejects more than one slice for TPUs. XManager still owns
the experiment: each TPU work unit is an `xm_local.Local` job that runs its
script on the launching machine, with its output streamed and recorded there.
Nothing here has been run against Google Cloud by the tests: they check the
commands, not the service.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Step:
    """One shell command of a work unit (or of the experiment's set-up)."""

    name: str
    command: str


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
    """What an accelerator type's name means for one TPU generation.

    Attributes:
      cores_per_chip: the number in the type counts TensorCores (2 per chip on
        v4 and v5p) or chips (1 on v5e and v6e).
      single_host_chips: slices of at most this many chips have one host; larger
        ones have 4 chips per host.
      topology_dims: 3 (v4, v5p: a 3-D torus) or 2 (v5e, v6e).
      custom_topology: whether `gcloud` accepts `--type` with `--topology` for
        it (v4, v5p); for v5e/v6e the accelerator type fixes the topology.
      runtime_version: the default TPU VM software version.
    """

    cores_per_chip: int
    single_host_chips: int
    topology_dims: int
    custom_topology: bool
    runtime_version: str


TPU_GENERATIONS: dict[str, TpuGeneration] = {
    "v4": TpuGeneration(2, 4, 3, True, "tpu-ubuntu2204-base"),
    "v5p": TpuGeneration(2, 4, 3, True, "v2-alpha-tpuv5"),
    "v5litepod": TpuGeneration(1, 8, 2, False, "v2-alpha-tpuv5-lite"),
    "v6e": TpuGeneration(1, 8, 2, False, "v2-alpha-tpuv6e"),
}
CHIPS_PER_HOST = 4


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """One TPU slice type, `num_slices` times (a Multislice when more than one)."""

    accelerator_type: str  # e.g. "v5litepod-16", "v5p-32"
    generation: str
    chips: int  # per slice
    hosts: int  # per slice; one JAX process each
    topology: str | None  # e.g. "2x2x4"; None: the type's default
    num_slices: int
    runtime_version: str

    @property
    def processes(self) -> int:
        return self.hosts * self.num_slices


def make_tpu_slice(
    tpu_type: str | None,
    *,
    topology: str | None = None,
    num_slices: int = 1,
    runtime_version: str | None = None,
) -> TpuSlice:
    """Parses and checks an accelerator type (`v5litepod-16`, `v5p-32`).

    Raises:
      ValueError naming the flag (`--tpu_type`, `--topology`, `--num_slices`)
      that is missing, malformed or inconsistent with the others.
    """
    if not tpu_type:
        raise ValueError("--executor=tpu needs --tpu_type, e.g. v5litepod-16 or v5p-32")
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", tpu_type)
    if not match or match.group(1) not in TPU_GENERATIONS:
        raise ValueError(
            f"--tpu_type={tpu_type!r}: expected GENERATION-SIZE with GENERATION one of "
            f"{', '.join(TPU_GENERATIONS)} (e.g. v5litepod-16, v5p-32)"
        )
    name, size = match.group(1), int(match.group(2))
    gen = TPU_GENERATIONS[name]
    if size % gen.cores_per_chip:
        raise ValueError(f"--tpu_type={tpu_type!r}: {name} sizes count TensorCores, "
                         f"{gen.cores_per_chip} per chip; {size} is not a multiple")
    chips = size // gen.cores_per_chip
    hosts = 1 if chips <= gen.single_host_chips else chips // CHIPS_PER_HOST
    if chips > gen.single_host_chips and chips % CHIPS_PER_HOST:
        raise ValueError(f"--tpu_type={tpu_type!r}: {chips} chips do not fill hosts of "
                         f"{CHIPS_PER_HOST}")
    if topology is not None:
        if not re.fullmatch(r"\d+(x\d+)+", topology):
            raise ValueError(f"--topology={topology!r}: expected e.g. 4x4 or 2x2x4")
        dims = [int(d) for d in topology.split("x")]
        if len(dims) != gen.topology_dims:
            raise ValueError(f"--topology={topology!r}: {name} topologies have "
                             f"{gen.topology_dims} dimensions")
        product = math.prod(dims)
        if product != chips:
            raise ValueError(f"--topology={topology!r} has {product} chips but "
                             f"--tpu_type={tpu_type} has {chips}")
    if num_slices < 1:
        raise ValueError(f"--num_slices={num_slices}: expected >= 1")
    if num_slices > 1 and hosts == 1:
        raise ValueError(f"--num_slices={num_slices}: Multislice needs multi-host "
                         f"slices; {tpu_type} has one host")
    return TpuSlice(
        accelerator_type=tpu_type,
        generation=name,
        chips=chips,
        hosts=hosts,
        topology=topology,
        num_slices=num_slices,
        runtime_version=runtime_version or gen.runtime_version,
    )


def tpu_steps(
    resource: str,
    tpu: TpuSlice,
    location: Sequence[str],
    archive: str,
    argv: Sequence[str],
    *,
    keep: bool,
) -> tuple[tuple[Step, ...], Step | None]:
    """The `gcloud` steps of one work unit and the step that deletes its slice.

    Args:
      resource: the queued resource's name; a single slice's node has the same
        name, the slices of a Multislice are `<resource>-0`, `<resource>-1`, ...
      tpu: the slice type and count.
      location: `--zone=...` (and `--project=...`) for every command.
      archive: the repository tarball on the launching machine.
      argv: the entry point, run from the copied tree on every host.
      keep: keep the slice (no delete step).
    """
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    vm = ["gcloud", "compute", "tpus", "tpu-vm"]
    if tpu.topology and TPU_GENERATIONS[tpu.generation].custom_topology:
        shape = [f"--type={tpu.generation}", f"--topology={tpu.topology}"]
    else:
        shape = [f"--accelerator-type={tpu.accelerator_type}"]
    if tpu.num_slices == 1:
        nodes, node_flags = [resource], [f"--node-id={resource}"]
    else:
        # Queued resources name the slices of a Multislice <prefix>-0, <prefix>-1, ...
        nodes = [f"{resource}-{i}" for i in range(tpu.num_slices)]
        node_flags = [f"--node-count={tpu.num_slices}", f"--node-prefix={resource}"]
    create = shlex.join([*qr, "create", resource, *location,
                         f"--runtime-version={tpu.runtime_version}", *shape, *node_flags])
    state = shlex.join([*qr, "describe", resource, *location, "--format=value(state.state)"])
    # A request that fails or is suspended never becomes ACTIVE: stop then.
    wait = (f'while state="$({state} || true)"; [ "$state" != ACTIVE ]; do\n'
            f'  case "$state" in FAILED|SUSPENDING|SUSPENDED) '
            f'echo "queued resource {resource}: $state" >&2; exit 1;; esac\n'
            f'  sleep 30\ndone')

    def ssh(node: str, command: str) -> str:
        return shlex.join([*vm, "ssh", node, *location, "--worker=all", f"--command={command}"])

    copy = "\n".join(
        shlex.join([*vm, "scp", archive, f"{node}:golfjax.tar.gz", *location, "--worker=all"])
        for node in nodes
    )
    unpack = ("rm -rf golfjax && mkdir golfjax && tar -xzf golfjax.tar.gz -C golfjax"
              ' && python3 -m pip install -q -e ./golfjax "jax[tpu]"')
    install = "\n".join(ssh(node, unpack) for node in nodes)
    entry = f"cd golfjax && {shlex.join(argv)}"
    if len(nodes) == 1:
        run = ssh(nodes[0], entry)
    else:
        # Every slice's processes must start together; `wait PID` fails the
        # script (set -e) when any slice's run fails.
        run = "\n".join(f"{ssh(node, entry)} &\npid{i}=$!" for i, node in enumerate(nodes))
        run += "\n" + "\n".join(f"wait $pid{i}" for i in range(len(nodes)))
    steps = (
        Step("create", create),
        Step("wait until ACTIVE", wait),
        Step("copy the repository", copy),
        Step("install", install),
        Step("run on every host", run),
    )
    cleanup = None
    if not keep:
        cleanup = Step("delete", shlex.join([*qr, "delete", resource, *location, "--force", "--quiet"]))
    return steps, cleanup
