"""TPU slices by name, and each chip's public figures, for compiling without one.

    tpu = slices.parse("v5p-64")        # 32 chips, v5p:2x4x4, 8 hosts
    devices = tpu.devices()             # needs libtpu (`pip install -e '.[tpu-aot]'`)

A name is an accelerator type as Cloud TPU writes it (`v5p-64`: TensorCores
for v4 and v5p, chips for v5e and v6e; `v5litepod-16` is `v5e-16`), or a
topology (`v5p:2x4x4`, `v5e:4x4`). `devices()` asks libtpu for the slice's
devices (`jax.experimental.topologies.get_topology_desc`): real TPU device
descriptions that a program can be lowered over and compiled for from any
host, with nothing to run them on.

Chip figures (per chip; the capacity as Google states it, read as GiB: the
TPU compiler reports 95.74 GiB available on a v5p chip). Sources:
cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e (system architecture tables).

    chip   HBM GiB   HBM GB/s   bf16 TFLOP/s
    v4     32        1,200      275
    v5e    16          819      197
    v5p    95        2,765      459
    v6e    32        1,640      918
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation's chip.

    Attributes:
      name: "v4", "v5e", "v5p" or "v6e" (libtpu's topology prefix).
      hbm_bytes: HBM capacity per chip.
      hbm_bytes_per_s: HBM bandwidth per chip.
      peak_flops: bf16 matmul peak per chip.
      cores_per_chip: what the number in an accelerator type counts per chip.
      dims: 3 (a 3-D torus: v4, v5p) or 2 (v5e, v6e).
      single_host_chips: slices of at most this many chips have one host;
        larger ones 4 chips per host.
      chip_config: libtpu's chip configuration ("megacore": one device per
        v4 chip, as Cloud TPU runs it).
    """

    name: str
    hbm_bytes: int
    hbm_bytes_per_s: float
    peak_flops: float
    cores_per_chip: int
    dims: int
    single_host_chips: int
    chip_config: str = "default"


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 32 * GIB, 1.2e12, 275e12, 2, 3, 4, "megacore"),
    "v5e": Chip("v5e", 16 * GIB, 819e9, 197e12, 1, 2, 8),
    "v5p": Chip("v5p", 95 * GIB, 2.765e12, 459e12, 2, 3, 4),
    "v6e": Chip("v6e", 32 * GIB, 1.64e12, 918e12, 1, 2, 8),
}
_ALIASES = {"v5litepod": "v5e"}
CHIPS_PER_HOST = 4


class NoTopology(RuntimeError):
    """libtpu is missing, or describes no such slice."""


@dataclasses.dataclass(frozen=True)
class Slice:
    """`num_slices` slices of one topology.

    Attributes:
      name: as given (`v5p-64`, `v5p:2x4x4`).
      chip: the chip's figures.
      shape: chips along each axis of the torus (or 2-D grid).
      num_slices: slices (> 1: Multislice over the data-center network).
    """

    name: str
    chip: Chip
    shape: tuple[int, ...]
    num_slices: int = 1

    @property
    def chips(self) -> int:
        """Chips of all slices."""
        return math.prod(self.shape) * self.num_slices

    @property
    def hosts(self) -> int:
        """Hosts of all slices: one JAX process each."""
        per_slice = math.prod(self.shape)
        return (1 if per_slice <= self.chip.single_host_chips else per_slice // CHIPS_PER_HOST) * self.num_slices

    @property
    def topology(self) -> str:
        """libtpu's topology name, e.g. "v5p:2x4x4"."""
        return f"{self.chip.name}:" + "x".join(map(str, self.shape))

    def describe(self) -> str:
        slices = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
        return (f"{self.name}{slices}: {self.chips} {self.chip.name} chips ({self.topology}), "
                f"{self.hosts} host{'s' * (self.hosts > 1)}")

    def devices(self) -> list[Any]:
        """The slice's devices (libtpu's descriptions; nothing runs on them)."""
        # libtpu locks a TPU host's chips to one process; describing a slice
        # uses none, so several compiles (tests, sweeps) may run at once.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        try:
            from jax.experimental import topologies
            topology = topologies.get_topology_desc(
                platform="tpu", topology_name=self.topology, chip_config_name=self.chip.chip_config,
                chips_per_host_bounds=(2, 2, 1), num_slices=self.num_slices)
        except Exception as e:  # libtpu missing, or a topology it refuses.
            raise NoTopology(
                f"--topology={self.name}: libtpu gave no devices for {self.topology} ({e}); compiling"
                " for a TPU needs libtpu: pip install -e '.[tpu-aot]'") from None
        return list(topology.devices)


def _default_shape(chip: Chip, chips: int, name: str) -> tuple[int, ...]:
    """The standard shape of a power-of-two slice: from 2 x 2 (x 1), double the
    last of the smallest axes until the chips are there (v5p: 2x2x4, 2x4x4,
    4x4x4, ...; v5e: 2x4, 4x4, 4x8, ...)."""
    if chips < 1 or chips & (chips - 1):
        raise ValueError(f"--topology={name!r}: {chips} chips; name its shape instead, "
                         f"e.g. {chip.name}:{'4x4x12' if chip.dims == 3 else '8x12'}")
    if chips < 4:
        return (1, chips) if chip.dims == 2 else (1, chips, 1)
    shape = [2, 2, 1][:chip.dims]
    while math.prod(shape) < chips:
        smallest = min(shape)
        axis = max(i for i, size in enumerate(shape) if size == smallest)
        shape[axis] *= 2
    return tuple(shape)


def parse(name: str, num_slices: int = 1) -> Slice:
    """A slice from an accelerator type (`v5p-64`) or a topology (`v5p:2x4x4`).

    Raises:
      ValueError naming `--topology` (or `--num_slices`) and what it accepts.
    """
    if num_slices < 1:
        raise ValueError(f"--num_slices={num_slices}: expected >= 1")
    known = ", ".join(sorted({*CHIPS, *_ALIASES}))
    match = re.fullmatch(r"([a-z0-9]+)(?:-(\d+)|:(\d+(?:x\d+)+))", name)
    gen = _ALIASES.get(match.group(1), match.group(1)) if match else None
    if gen not in CHIPS:
        raise ValueError(f"--topology={name!r}: expected GENERATION-SIZE (v5p-64, v5e-16, v6e-8) or "
                         f"GENERATION:SHAPE (v5p:2x4x4), GENERATION one of {known}")
    chip = CHIPS[gen]
    if match.group(3):
        shape = tuple(int(d) for d in match.group(3).split("x"))
        if len(shape) != chip.dims:
            raise ValueError(f"--topology={name!r}: {gen} topologies have {chip.dims} dimensions")
    else:
        size = int(match.group(2))
        if size % chip.cores_per_chip:
            raise ValueError(f"--topology={name!r}: {gen} sizes count TensorCores, "
                             f"{chip.cores_per_chip} per chip; {size} is not a multiple")
        shape = _default_shape(chip, size // chip.cores_per_chip, name)
    chips = math.prod(shape)
    if chips > chip.single_host_chips and chips % CHIPS_PER_HOST:
        raise ValueError(f"--topology={name!r}: {chips} chips do not fill hosts of {CHIPS_PER_HOST}")
    return Slice(name, chip, shape, num_slices)
