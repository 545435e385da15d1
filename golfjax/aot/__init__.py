"""A run compiled for a TPU slice it does not have: does every program fit, and how fast.

    python -m golfjax.aot --config=experiments/configs/golf.py:qwen3_8b_math --topology=v5p-64

builds the run of `--config` abstractly (its model's dims, no weights, no
data: golfjax/aot/plan.py), compiles every program it executes for the
slice's devices on the run's own mesh and logical-axis rules (libtpu
describes the slice's chips: golfjax/aot/slices.py; `pip install -e
'.[tpu-aot]'`), and prints one row per program:

  HBM per device   XLA's memory analysis of the compiled program: arguments
                   + temporaries + outputs that do not reuse a donated
                   argument, plus what the run holds on those devices
                   meanwhile (plan.py: optimizer moments while sampling, the
                   rollout's other mini-batches, parameter snapshots, a KL
                   reference); against the chip's HBM.
  est. work, time  one call's flops and bytes per device as golfjax/aot/work.py
                   counts them (XLA's cost analysis counts each loop body
                   once) and the roofline time max(flops / peak, bytes / HBM
                   bandwidth) at the chip's public figures: an estimate, not
                   a measurement.
  compile s        lower + compile wall seconds on this host.

A program that does not fit (or that the TPU compiler refuses for memory)
is named with its shortfall and the command exits 1. The config is validated
for the slice first (`config.validate` with its chips and hosts), so a run
that could not start there fails before any compile.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from golfjax import config as config_lib
from golfjax.aot import plan as plan_lib
from golfjax.aot import slices as slices_lib
from golfjax.aot.slices import GIB

_OUT_OF_MEMORY = re.compile(r"RESOURCE_EXHAUSTED|[Rr]an out of memory")
_REQUIRED = re.compile(r"required[^(]*\(([\d.]+)([KMGT])\)")


@dataclasses.dataclass(frozen=True)
class Report:
    """One compiled program's figures per device (bytes, flops, seconds).

    `refused` holds the compiler's message when it refused the program for
    memory; `required_bytes` is then the need it reported (0 if none).
    """

    program: plan_lib.Program
    argument_bytes: float = 0.0
    output_bytes: float = 0.0
    alias_bytes: float = 0.0
    temp_bytes: float = 0.0
    compile_s: float = 0.0
    xla_flops: float = float("nan")
    xla_bytes: float = float("nan")
    refused: str = ""
    required_bytes: float = 0.0

    @property
    def held_bytes(self) -> float:
        return sum(self.program.held.values())

    @property
    def total_bytes(self) -> float:
        """The program's peak HBM per device with what the run holds meanwhile."""
        if self.refused:
            return self.required_bytes + self.held_bytes
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.held_bytes

    def fits(self, chip: slices_lib.Chip) -> bool:
        return not self.refused and self.total_bytes <= chip.hbm_bytes

    def to_dict(self, chip: slices_lib.Chip) -> dict[str, Any]:
        p = self.program
        return {
            "program": p.name, "shapes": p.shapes, "devices": p.devices,
            "argument_bytes": self.argument_bytes, "temp_bytes": self.temp_bytes,
            "output_bytes": self.output_bytes, "alias_bytes": self.alias_bytes,
            "held_bytes": self.held_bytes, "held": dict(p.held), "total_bytes": self.total_bytes,
            "fits": self.fits(chip), "refused": self.refused, "compile_s": self.compile_s,
            "est_flops": p.work.flops, "est_bytes": p.work.bytes,
            "est_seconds": p.work.seconds(chip.peak_flops, chip.hbm_bytes_per_s),
            "xla_flops": self.xla_flops, "xla_bytes": self.xla_bytes,
        }


def compile_program(program: plan_lib.Program) -> Report:
    """Lowers and compiles `program`; XLA's memory and cost analyses."""
    start = time.perf_counter()
    try:
        compiled = program.lower().compile()
    except Exception as e:  # The TPU compiler refuses what does not fit in HBM.
        message = str(e)
        if not _OUT_OF_MEMORY.search(message):
            raise
        need = _REQUIRED.search(message)
        required = float(need.group(1)) * 1024 ** "KMGT".index(need.group(2)) * 1024 if need else 0.0
        return Report(program, compile_s=time.perf_counter() - start,
                      refused=message.strip().splitlines()[0][:300], required_bytes=required)
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    return Report(
        program, argument_bytes=float(memory.argument_size_in_bytes),
        output_bytes=float(memory.output_size_in_bytes), alias_bytes=float(memory.alias_size_in_bytes),
        temp_bytes=float(memory.temp_size_in_bytes), compile_s=seconds,
        xla_flops=float(cost.get("flops", float("nan"))),
        xla_bytes=float(cost.get("bytes accessed", float("nan"))))


def compile_run(cfg: config_lib.RunConfig, tpu: slices_lib.Slice, *, only: Sequence[str] = (),
                on_report: Callable[[Report], None] = lambda report: None) -> list[Report]:
    """Every program of the run of `cfg` compiled for `tpu` (module docstring).

    Args:
      only: compile just the programs whose name contains one of these.
      on_report: called with each report as it is ready.

    Raises:
      ValueError: the config cannot run on the slice (`config.validate`).
    """
    config_lib.validate(cfg, tpu.chips, tpu.hosts)
    reports = []
    for program in plan_lib.programs(cfg, tpu.devices()):
        if only and not any(name in program.name for name in only):
            continue
        reports.append(compile_program(program))
        on_report(reports[-1])
    return reports


def misfits(reports: Sequence[Report], chip: slices_lib.Chip) -> list[str]:
    """One line per program that does not fit a chip's HBM, naming its shortfall."""
    lines = []
    for r in reports:
        if r.fits(chip):
            continue
        over = r.total_bytes - chip.hbm_bytes
        need = ("does not fit in" if r.refused and not r.required_bytes else
                f"needs {r.total_bytes / GIB:.2f} GiB per device, {over / GIB:.2f} GiB more than")
        why = f" (the TPU compiler: {r.refused})" if r.refused else ""
        lines.append(f"{r.program.name} ({r.program.shapes}) {need} a {chip.name} chip's "
                     f"{chip.hbm_bytes / GIB:.1f} GiB{why}")
    return lines


_COLUMNS = ("program", "devices", "args", "temp", "out", "held", "total", "of HBM",
            "est. TFLOP", "est. GB", "est. ms", "compile s")


def table(reports: Sequence[Report], chip: slices_lib.Chip) -> str:
    """The reports as an aligned text table, with the programs' shapes and
    what each holds below it."""
    rows = []
    for r in reports:
        gib = [r.argument_bytes, r.temp_bytes, r.output_bytes - r.alias_bytes, r.held_bytes]
        cells = ["-"] * 3 + [f"{r.held_bytes / GIB:.2f}"] if r.refused else [f"{b / GIB:.2f}" for b in gib]
        work = r.program.work
        rows.append([
            r.program.name, r.program.devices, *cells, f"{r.total_bytes / GIB:.2f}",
            f"{100 * r.total_bytes / chip.hbm_bytes:.0f}%" + ("" if r.fits(chip) else " !"),
            f"{work.flops / 1e12:.3g}", f"{work.bytes / 1e9:.3g}",
            f"{1e3 * work.seconds(chip.peak_flops, chip.hbm_bytes_per_s):.4g}", f"{r.compile_s:.0f}"])
    widths = [max(len(str(row[i])) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [_COLUMNS, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", "HBM: GiB per device (args + temp + outputs not aliased to a donated argument + held)."
              " est.: one call's work per device (golfjax/aot/work.py) and its roofline time at the"
              f" chip's public peaks ({chip.peak_flops / 1e12:.0f} TFLOP/s bf16,"
              f" {chip.hbm_bytes_per_s / 1e9:.0f} GB/s): estimates, not measurements.", ""]
    for r in reports:
        held = ", ".join(f"{name} {b / GIB:.2f}" for name, b in r.program.held.items() if b)
        lines.append(f"{r.program.name}: {r.program.shapes}" + (f"; held: {held}" if held else ""))
    return "\n".join(lines)
