"""Device mesh and logical-axis sharding rules.

Models name logical axes only (`embed`, `heads`, `kv_heads`, `head_dim`, `mlp`,
`vocab`, `layers`, and `batch` for activations and caches). `LOGICAL_RULES` maps
each logical name to a mesh axis of the 3-D mesh `("data", "fsdp", "tensor")`
(the maxtext `logical_axis_rules` pattern, at a tenth of its size):

  batch    -> ("data", "fsdp")   data parallel over both outer axes
  embed    -> "fsdp"             parameters (and optimizer state) sharded ZeRO-3 style
  vocab, heads, kv_heads, mlp -> "tensor"   Megatron-style tensor parallelism
  head_dim, layers -> None       replicated

Every sharding is checked: a dimension that does not divide the size of its mesh
axes raises a ValueError naming the parameter path, the dimension, its size and the
mesh axis size. Nothing silently falls back to replication.

The mesh is always passed explicitly; no global mesh is set by this module. All mesh
axes are `AxisType.Auto`: the jitted programs get explicit `in_shardings` /
`out_shardings`, and GSPMD propagates the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

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
  return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES))


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


def _mesh_axis_size(mesh: Mesh, axes: MeshAxes) -> int:
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
      mesh_size = _mesh_axis_size(mesh, axes)
      if size % mesh_size:
        raise ValueError(
            f"{what}: dimension {dim} ({name!r}) of size {size} does not divide "
            f"mesh axis {axes!r} of size {mesh_size}")
  return NamedSharding(mesh, spec)


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
