"""The platform a program is traced for: its devices', not the host's backend.

Some choices inside the model depend on the platform that runs the program
("cpu", "gpu", "tpu"): the attention kernel ("auto": splash on TPU, cuDNN on
GPU), how the cached forward runs its layers (`resolve_decode_layers`), the
dtype a CPU dot accumulates in. The platform is that of the devices the
program is compiled for, which is not always `jax.default_backend()`: a CPU
host compiles for a TPU slice it does not have (golfjax/aot.py). `Trainer` and
`Sampler` trace their programs inside `compiling_for(mesh)`; `current()`
reads it, and outside any such block is the default backend.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
from jax.sharding import Mesh

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "golfjax_target_platform", default=None)


def of(mesh: Mesh | None) -> str:
    """The platform of `mesh`'s devices (the default device's when None)."""
    device = jax.devices()[0] if mesh is None else mesh.devices.flat[0]
    return device.platform


def current() -> str:
    """The platform being traced for: `compiling_for`'s, else the default backend."""
    return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def compiling_for(target: Mesh | str | None) -> Iterator[None]:
    """Code traced inside this block targets `target` (a mesh, a platform name,
    or None: the default device). A trace-time setting: enter it inside the
    function being jitted."""
    token = _TARGET.set(target if isinstance(target, str) else of(target))
    try:
        yield
    finally:
        _TARGET.reset(token)
