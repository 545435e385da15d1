"""Metrics: `metrics.jsonl`, TensorBoard event files and a console progress line.

`MetricsWriter.write(step, metrics)` appends one JSON object per call to
`<workdir>/metrics.jsonl` (`{"step": 12, "reward/mean": 0.31, ...}`), writes the
same scalars as TensorBoard summaries (tensorboardX: no TensorFlow needed) and
prints a one-line summary. Values may be Python numbers, NumPy or JAX scalars;
they are fetched to the host here, so call it with the *previous* step's
metrics to keep the device busy (dispatch step t, then write step t-1).

The file holds each step exactly once, however the run before stopped (a crash
before its first checkpoint, mid-line, a resume): a writer opened with
`resume_from_step=s` keeps only the records of steps `<= s` (one per step, the
last one written) and a fresh run's writer (`resume_from_step=None`) keeps
none, since the run writes every step again; a line torn by a crash mid-write
is dropped. TensorBoard is told the same (`purge_step`), so its curves drop
the steps written after the restored step too.

In a multi-process run every process computes the same metrics, and only
process 0 writes them (file, TensorBoard and console); the others just fetch.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping, TextIO

import numpy as np

# Shown in the console line, in this order, when present.
CONSOLE_KEYS = (
    ("reward/mean", "reward"),
    ("eval/accuracy", "acc"),
    ("loss", "loss"),
    ("perf/tokens_per_s", "tok/s"),
)


def to_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Host floats of every scalar metric (one device fetch for all of them)."""
    from golfjax import sharding  # Local: keeps this module importable without initialising JAX.

    # Multi-process, a metric on the mesh is read from this process's replica
    # (or gathered, were it split); single-process this is `jax.device_get`.
    host = sharding.global_to_host(dict(metrics))
    scalars = {}
    for name, value in host.items():
        array = np.asarray(value)
        if array.shape != ():
            raise ValueError(f"metric {name!r} has shape {array.shape}; expected a scalar")
        scalars[name] = float(array)
    return scalars


class MetricsWriter:
    """Writes metrics of one run; `workdir` is the run's identity."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        total_steps: int | None = None,
        tensorboard: bool = True,
        console: TextIO | None | str = "stdout",
        resume_from_step: int | None = None,
        primary: bool | None = None,
    ) -> None:
        """Opens the run's metrics; `primary` (default: process 0) writes them.

        Args:
          console: where the progress line goes; "stdout": `sys.stdout` as it
            is when the writer opens; None: nowhere.
          resume_from_step: the step the run restored; records of later steps
            are dropped. None: a fresh run, whose file starts empty.
        """
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, "metrics.jsonl")
        self.primary = _is_process_zero() if primary is None else primary
        self._jsonl = None
        self._tb = None
        if console == "stdout":  # Looked up now: sys.stdout may be redirected since import.
            console = sys.stdout
        self._console = console if self.primary else None
        self._total = total_steps
        self._start = time.monotonic()
        if not self.primary:
            return
        os.makedirs(self.workdir, exist_ok=True)
        keep_through = -1 if resume_from_step is None else int(resume_from_step)
        dropped = _truncate_after(self.path, keep_through)
        if dropped and self._console is not None:
            self._console.write(
                f"{self.path}: dropped {dropped} unreadable line(s) (torn by a crash mid-write)\n")
        self._jsonl = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            # Events of steps after the restored one are discarded by TensorBoard.
            self._tb = SummaryWriter(
                os.path.join(self.workdir, "tensorboard"), purge_step=keep_through + 1)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Records `metrics` at `step`; returns them as host floats."""
        scalars = to_scalars(metrics)
        if self._jsonl is None:
            return scalars
        record = {"step": int(step), **{k: _json_number(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, value, global_step=int(step))
        if self._console is not None:
            self._console.write(self._line(int(step), scalars) + "\n")
            self._console.flush()
        return scalars

    def _line(self, step: int, scalars: Mapping[str, float]) -> str:
        total = f"/{self._total}" if self._total else ""
        parts = [f"step {step}{total}"]
        for key, label in CONSOLE_KEYS:
            if key in scalars:
                parts.append(f"{label} {scalars[key]:.4g}")
        parts.append(f"{time.monotonic() - self._start:.0f}s")
        return " | ".join(parts)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class StepLog:
    """`<workdir>/<name>`: one JSON record of any data per step, each step once.

    The records a run logs beside its metrics (GOLF's injected rows), kept as
    `metrics.jsonl` is: a writer opened with `resume_from_step=s` keeps the
    records of steps `<= s`, a fresh run's keeps none. Only process 0 writes.
    """

    def __init__(self, workdir: str | os.PathLike[str], name: str, *,
                 resume_from_step: int | None = None, primary: bool | None = None) -> None:
        self.path = os.path.join(os.fspath(workdir), name)
        self._file = None
        if not (_is_process_zero() if primary is None else primary):
            return
        os.makedirs(os.fspath(workdir), exist_ok=True)
        _truncate_after(self.path, -1 if resume_from_step is None else int(resume_from_step))
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, step: int, record: Mapping[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"step": int(step), **record}) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _is_process_zero() -> bool:
    from golfjax import process_groups as groups  # Local, as in to_scalars.

    return groups.is_primary()


def read_metrics(workdir: str | os.PathLike[str], name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """All records of `<workdir>/metrics.jsonl` (or of a `StepLog`'s `name`), in order.

    A torn last line (a crash mid-write) is dropped; an unreadable line before
    the last is an error naming the file and line.
    """
    path = os.path.join(os.fspath(workdir), name)
    if not os.path.exists(path):
        return []
    records, bad, last_line = _parse(path)
    if bad and bad[0] != last_line:
        raise ValueError(f"{path}:{bad[0]}: not a JSON record of a step (the file is damaged)")
    return [record for _, record in records]


def _json_number(value: float) -> float | str:
    # JSON has no NaN or inf; keep them readable rather than invalid.
    return value if math.isfinite(value) else str(value)


def _parse(path: str) -> tuple[list[tuple[str, dict[str, Any]]], list[int], int]:
    """`(line, record)` of each readable record, the line numbers of the
    unreadable ones, and the number of the last non-blank line."""
    records, bad, last_line = [], [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            last_line = number
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                bad.append(number)
                continue
            records.append((line.rstrip("\n") + "\n", record))
    return records, bad, last_line


def _truncate_after(path: str, step: int) -> int:
    """Keeps one record per step `<= step` (the last written), in step order;
    returns how many unreadable lines were dropped."""
    if not os.path.exists(path):
        return 0
    records, bad, _ = _parse(path)
    last = {record["step"]: line for line, record in records if record["step"] <= step}
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(last[s] for s in sorted(last))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # Atomic: a crash here leaves either file, never half.
    return len(bad)
