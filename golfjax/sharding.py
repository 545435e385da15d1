"""Device mesh and logical-axis sharding rules.

Models name logical axes only (`embed`, `heads`, `kv_heads`, `head_dim`, `mlp`,
`vocab`, `layers`, the `expert*` axes of MoE layers, and `batch` for activations
and caches). `LOGICAL_RULES` maps each logical name to a mesh axis of the 3-D
mesh `("data", "fsdp", "tensor")` (the maxtext `logical_axis_rules` pattern, at a
tenth of its size):

  batch    -> ("data", "fsdp")   data parallel over both outer axes
  embed    -> "fsdp"             parameters (and optimizer state) sharded ZeRO-3 style
  vocab, heads, kv_heads, mlp -> "tensor"   Megatron-style tensor parallelism
  head_dim, layers -> None       replicated
  expert   -> "fsdp"             expert parallelism: each fsdp device holds E / fsdp
                                 experts of every MoE layer (golfjax/models/moe.py)
  expert_embed -> None           an expert weight's D (fsdp already splits its experts)
  expert_mlp -> "tensor"         an expert's width, as the dense MLP's

Every sharding is checked: a dimension that does not divide the size of its mesh
axes raises a ValueError naming the parameter path, the dimension, its size and the
mesh axis size. Nothing silently falls back to replication.

The mesh is always passed explicitly; no global mesh is set by this module. All mesh
axes are `AxisType.Auto`: the jitted programs get explicit `in_shardings` /
`out_shardings`, and GSPMD propagates the rest.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from golfjax import process_groups as groups

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")

# A logical name maps to None (replicated), one mesh axis, or a tuple of mesh axes.
MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]
LogicalNames = tuple[str | None, ...]

LOGICAL_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("expert", "fsdp"),
    ("expert_embed", None),
    ("expert_mlp", "tensor"),
)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `("data", "fsdp", "tensor")` mesh; one size may be -1, meaning "the rest".

    Args:
      data, fsdp, tensor: axis sizes; their product must equal the device count.
      devices: the devices to use (default: `jax.devices()`).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    for name, size in zip(MESH_AXES, sizes):
        if size != -1 and size <= 0:
            raise ValueError(f"Mesh axis {name!r} must be positive or -1, got {size}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh axes "
                             f"{dict(zip(MESH_AXES, sizes))}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"Mesh {dict(zip(MESH_AXES, sizes))} needs "
                         f"{math.prod(sizes)} devices, have {len(devices)}")
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    try:
        return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices, axis_types=axis_types)
    except AssertionError:
        # JAX orders TPU devices by their physical torus, which part of a
        # slice does not fill (the rollout worker's chips,
        # `schedule.rollout_devices`): the devices in their order then.
        return Mesh(np.asarray(devices, dtype=object).reshape(sizes), MESH_AXES, axis_types=axis_types)


def logical_to_spec(names: Sequence[str | None],
                    rules: Rules = LOGICAL_RULES) -> PartitionSpec:
    """Maps logical axis names (None = replicated) to a PartitionSpec."""
    table = dict(rules)
    spec: list[MeshAxes] = []
    used: set[str] = set()
    for name in names:
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"Logical axis {name!r} has no sharding rule; "
                             f"rules cover {sorted(table)}")
        axes = table[name]
        flat = () if axes is None else ((axes,) if isinstance(axes, str) else axes)
        if used & set(flat):
            raise ValueError(f"Logical axes {tuple(names)} map mesh axes {flat} twice")
        used |= set(flat)
        spec.append(axes)
    return PartitionSpec(*spec)


def mesh_axis_size(mesh: Mesh, axes: MeshAxes) -> int:
    """How many devices `axes` (a rule's mesh axes; None: none) span on `mesh`."""
    if axes is None:
        return 1
    flat = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in flat)


def logical_to_sharding(names: Sequence[str | None], mesh: Mesh,
                        rules: Rules = LOGICAL_RULES, *,
                        shape: Sequence[int] | None = None,
                        what: str = "array") -> NamedSharding:
    """A NamedSharding for logical `names`; checks divisibility when `shape` is given.

    Raises:
      ValueError naming `what`, the dimension, its size and the mesh axis size when
      a dimension of `shape` does not divide.
    """
    spec = logical_to_spec(names, rules)
    if shape is not None:
        if len(shape) != len(names):
            raise ValueError(f"{what}: shape {tuple(shape)} has rank {len(shape)} but "
                             f"logical axes {tuple(names)} have {len(names)}")
        for dim, (size, name, axes) in enumerate(zip(shape, names, spec)):
            mesh_size = mesh_axis_size(mesh, axes)
            if size % mesh_size:
                raise ValueError(
                    f"{what}: dimension {dim} ({name!r}) of size {size} does not divide "
                    f"mesh axis {axes!r} of size {mesh_size}")
    return NamedSharding(mesh, spec)


def row_sharding(mesh: Mesh, rules: Rules = LOGICAL_RULES) -> NamedSharding:
    """Arrays split by their leading (row) dimension over the `batch` rule's mesh
    axes, the rest of each array whole: the layout of every batch and rollout."""
    return NamedSharding(mesh, logical_to_spec(("batch",), rules))


def row_shards(mesh: Mesh, rules: Rules = LOGICAL_RULES) -> int:
    """How many devices the rows of a `row_sharding` array are split over."""
    return mesh_axis_size(mesh, dict(rules)["batch"])


def _path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def logical_shardings(abstract_tree: Any, axes_tree: Any, mesh: Mesh,
                      rules: Rules = LOGICAL_RULES) -> Any:
    """NamedShardings for a pytree of arrays (params, optimizer state, batches).

    Args:
      abstract_tree: pytree of arrays or `jax.ShapeDtypeStruct`s.
      axes_tree: the same structure, with a tuple of logical names per leaf.
      mesh: the mesh.
      rules: logical name -> mesh axes table.

    Returns:
      The same structure with a `NamedSharding` per leaf.

    Raises:
      ValueError naming the leaf path when a dimension does not divide its mesh axis.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_tree)
    axes_leaves = treedef.flatten_up_to(axes_tree)
    out = [
        logical_to_sharding(names, mesh, rules, shape=tuple(leaf.shape),
                            what=f"parameter {_path_str(path)!r}")
        for (path, leaf), names in zip(leaves, axes_leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


# ------------------------------------------------------------ host <-> device
#
# In a multi-process run (`jax.distributed.initialize()`, a TPU pod slice) the
# mesh spans devices that this process cannot address: jit refuses NumPy inputs
# with a row-split sharding, and a row-split output cannot be read with
# `jax.device_get` / `np.asarray`. golfjax's host work (prompts, decoding,
# rewards, GOLF's refinements) is identical on every process: each process
# builds the SAME full host batch (problem selection and keys are seeded the
# same everywhere), so putting a host array on the mesh only needs each
# process to fill its own shards from its full copy, and reading one back
# gathers the shards onto every process. With one process both are the plain
# `jax.device_put` / `jax.device_get`.


def is_multiprocess() -> bool:
    """Whether this process's group spans several JAX processes
    (golfjax/process_groups.py: the whole job unless it has a rollout group)."""
    return groups.is_multiprocess()


def host_to_global(tree: Any, shardings: Any) -> Any:
    """Host arrays (the same full values on every process) to arrays on the mesh.

    Args:
      tree: a pytree of NumPy arrays, Python scalars or JAX arrays.
      shardings: one `Sharding` for every leaf, or a pytree of them with the
        structure of `tree`.

    Returns:
      `tree` with each leaf placed by its sharding. Single-process this is
      `jax.device_put`; multi-process, each process fills only the shards of
      its own devices from its (full, identical) copy, and a leaf that already
      lives on the mesh is resharded as `jax.device_put` does.

    Raises:
      AssertionError (multi-process): the processes' host values differ (a
      checksum of their bytes is compared across processes).
    """
    if not is_multiprocess():
        return jax.device_put(tree, shardings)
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
    leaves, treedef = jax.tree.flatten(tree)
    sharding_leaves = treedef.flatten_up_to(shardings)
    hosts: list[np.ndarray] = []
    out = [_to_global(x, s, hosts) for x, s in zip(leaves, sharding_leaves)]
    _check_same_on_every_process(hosts)
    return jax.tree.unflatten(treedef, out)


def _to_global(x: Any, sharding: jax.sharding.Sharding, hosts: list[np.ndarray]) -> jax.Array:
    if isinstance(x, jax.Array):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # Typed keys: by their data.
            data = _to_global(jax.random.key_data(x), sharding, hosts)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        if not x.is_fully_addressable:  # Already global: reshard on device.
            return jax.device_put(x, sharding)
    host = np.asarray(x)
    hosts.append(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _check_same_on_every_process(hosts: list[np.ndarray]) -> None:
    """Raises if the processes passed different host values (one tiny all-gather).

    Each process fills its devices' shards from its own copy, so different copies
    would silently build a batch of mixed rows; a checksum of the bytes catches it.
    """
    digest = 0
    for host in hosts:
        digest = zlib.crc32(np.ascontiguousarray(host).view(np.uint8).reshape(-1), digest)
        digest = zlib.crc32(f"{host.shape}{host.dtype}".encode(), digest)
    if len(set(groups.allgather(np.uint32(digest)).tolist())) > 1:
        raise AssertionError(
            "host_to_global: the processes passed different host arrays; every process must pass"
            " the same full values")


def global_to_host(tree: Any) -> Any:
    """NumPy copies of every array leaf of `tree`, on every process.

    Single-process this is `jax.device_get`. Multi-process, arrays split over
    devices of several processes are gathered (one jitted all-gather for the
    whole tree, so every process must call this at the same point with arrays
    of the same shapes and shardings, as the SPMD program does anyway); fully
    replicated and process-local arrays are read directly.
    """
    if not is_multiprocess():
        return jax.device_get(tree)
    leaves, treedef = jax.tree.flatten(tree)
    leaves = replicate_split_leaves(leaves)
    # Replicated now: this process's first copy is the whole value.
    leaves = [np.asarray(x.addressable_data(0))
              if isinstance(x, jax.Array) and not x.is_fully_addressable else x for x in leaves]
    return jax.tree.unflatten(treedef, jax.device_get(leaves))


def allgather_processes(local: np.ndarray) -> np.ndarray:
    """Every process's `local` array (same shape everywhere), stacked in process order.

    Returns an array of shape `(processes of the group, *local.shape)`; with one
    process, `local[None]` without communication.
    """
    return groups.allgather(local)


def replicate_split_leaves(leaves: list[Any]) -> list[Any]:
    """`leaves` with each array split over devices of several processes
    replaced by its fully replicated copy (one jitted all-gather for all of
    them, so every process of the group calls this at the same point); other
    leaves as they are."""
    split = [i for i, x in enumerate(leaves) if _needs_gather(x)]
    if not split:
        return list(leaves)
    shardings = tuple(leaves[i].sharding.update(spec=PartitionSpec()) for i in split)
    gathered = replicate_program(shardings)(*(leaves[i] for i in split))
    out = list(leaves)
    for i, x in zip(split, gathered):
        out[i] = x
    return out


def _needs_gather(x: Any) -> bool:
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return False
    if not isinstance(x.sharding, NamedSharding):
        raise TypeError(f"cannot gather an array split over processes with sharding {x.sharding}; "
                        "expected a NamedSharding")
    return True


def _identity(*xs: jax.Array) -> tuple[jax.Array, ...]:
    return xs


@functools.lru_cache(maxsize=64)
def replicate_program(shardings: tuple[NamedSharding, ...]) -> Any:
    """A jitted identity of len(shardings) arrays onto those (replicated)
    shardings: one all-gather program for a whole tree's split leaves."""
    return jax.jit(_identity, out_shardings=shardings)
