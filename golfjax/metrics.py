"""Metrics: `metrics.jsonl`, TensorBoard event files and a console progress line.

`MetricsWriter.write(step, metrics)` appends one JSON object per call to
`<workdir>/metrics.jsonl` (`{"step": 12, "reward/mean": 0.31, ...}`), writes the
same scalars as TensorBoard summaries (tensorboardX: no TensorFlow needed) and
prints a one-line summary. Values may be Python numbers, NumPy or JAX scalars;
they are fetched to the host here, so call it with the *previous* step's
metrics to keep the device busy (dispatch step t, then write step t-1).

On resume, `metrics.jsonl` is truncated to the restored step, so the file never
holds two records of one step.

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
        console: TextIO | None = sys.stdout,
        resume_from_step: int | None = None,
        primary: bool | None = None,
    ) -> None:
        """Opens the run's metrics; `primary` (default: process 0) writes them."""
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, "metrics.jsonl")
        self.primary = _is_process_zero() if primary is None else primary
        self._jsonl = None
        self._tb = None
        self._console = console if self.primary else None
        self._total = total_steps
        self._start = time.monotonic()
        if not self.primary:
            return
        os.makedirs(self.workdir, exist_ok=True)
        if resume_from_step is not None:
            _truncate_after(self.path, resume_from_step)
        self._jsonl = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"))

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


def _is_process_zero() -> bool:
    import jax  # Local, as in to_scalars.

    return jax.process_index() == 0


def read_metrics(workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of `<workdir>/metrics.jsonl`, in order."""
    path = os.path.join(os.fspath(workdir), "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _json_number(value: float) -> float | str:
    # JSON has no NaN or inf; keep them readable rather than invalid.
    return value if math.isfinite(value) else str(value)


def _truncate_after(path: str, step: int) -> None:
    """Drops records with `step > step` (written after the restored checkpoint)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)  # Atomic: a crash here leaves either file, never half.
