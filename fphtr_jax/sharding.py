"""Device mesh from the config, logical-axis rules, and batch placement.

The model names every parameter and a few activations with logical axes
("batch", "embed", "mlp", ...); `config.mesh.rules` maps those names to the
mesh axes ("data", "fsdp", "tensor"). The same code then runs on one CPU or
on a pod: only the config changes.

  data     batch split, parameters replicated (data parallel)
  fsdp     batch split, and parameters / optimizer state split along the
           dimensions the rules map to "fsdp" (mesh.preset="fsdp")
  tensor   parameters split along the dimensions mapped to "tensor", the
           batch replicated: the decoder's heads and MLP (mesh.preset="tensor_parallel")

A preset (`MESH_PRESETS`, `config.mesh.preset`) applies to any recipe: it
maps the logical axes that it names to its mesh axis, and, when the mesh
sizes are left at the default (data=-1, fsdp=1, tensor=1), sets its own.

Rules are tried in order; a rule whose mesh axis an earlier dimension of the
same array already uses is skipped (Flax's logical_to_mesh_axes), so
("batch", ("data", "fsdp")) ahead of ("embed", "fsdp") keeps activations split
by batch only. A dimension that its mesh axes do not divide is an error
(see `logical_to_shardings`), not a silent fallback to replication: the memory a
preset promises is the memory it uses.
"""

import math

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
DEFAULT_SIZES = {"data": -1, "fsdp": 1, "tensor": 1}

# name: (mesh sizes used when config.mesh keeps DEFAULT_SIZES, logical axis ->
# mesh axis replacing the rules' own). FSDP: every large parameter has a
# dimension named "embed" (d_model) or "conv_out" (ResNet channels), so each
# device keeps 1/fsdp of them and XLA gathers a layer's weights when it needs
# them; rule order decides which dimension of a kernel is split ("embed"
# before "mlp"); fsdp must divide d_model and the ResNet widths. Tensor
# parallel (Megatron-style): each device of a `tensor` group holds
# num_heads / tensor heads of every attention layer and mlp_dim / tensor
# units of every MLP; the group sees the same examples.
MESH_PRESETS = {
  "": (DEFAULT_SIZES, {}),
  "fsdp": (
    {"data": 1, "fsdp": -1, "tensor": 1},
    {"embed": "fsdp", "mlp": "fsdp", "conv_out": "fsdp"},
  ),
  "tensor_parallel": ({"data": -1, "fsdp": 1, "tensor": 2}, {"heads": "tensor", "mlp": "tensor"}),
}


def _preset(mesh_config):
  name = mesh_config.get("preset", "")
  if name not in MESH_PRESETS:
    raise ValueError(f"mesh.preset={name!r} is not one of {tuple(MESH_PRESETS)}.")
  return MESH_PRESETS[name]


def mesh_sizes(mesh_config) -> dict[str, int]:
  """The mesh axis sizes of config.mesh, after its preset (-1 = the devices left over)."""
  sizes = {name: int(mesh_config[name]) for name in MESH_AXES}
  preset_sizes, _ = _preset(mesh_config)
  return dict(preset_sizes) if sizes == DEFAULT_SIZES else sizes


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
  """Resolves the -1 entry of config.mesh against the number of devices."""
  sizes = list(mesh_sizes(mesh_config).values())
  for name, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ValueError(f"mesh.{name}={size}: a mesh axis size must be positive or -1.")
  if sizes.count(-1) > 1:
    raise ValueError(f"Only one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
        f"config.mesh {dict(zip(MESH_AXES, sizes))}: the fixed axes ({known}) "
        f"do not divide the {num_devices} devices."
      )
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
      f"devices, but there are {num_devices}."
    )
  return tuple(sizes)


def create_mesh(mesh_config, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  return Mesh(
    np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES)
  )


def logical_rules(mesh_config) -> tuple:
  """config.mesh.rules, after its preset, as the tuple of (logical name, mesh axes) Flax expects."""
  _, replaced = _preset(mesh_config)
  rules = []
  for name, axes in mesh_config.rules:
    axes = replaced.get(name, axes)
    axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
    for axis in axes if isinstance(axes, tuple) else (axes,):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(
          f"mesh.rules maps {name!r} to unknown mesh axis {axis!r}; use one of {MESH_AXES} or None."
        )
    rules.append((name, axes))
  return tuple(rules)


def logical_to_shardings(boxed_tree, mesh: Mesh, rules):
  """NamedShardings for a tree whose leaves may carry logical axis names.

  Args:
    boxed_tree: arrays or ShapeDtypeStructs, some boxed in nn.LogicallyPartitioned
      (e.g. `jax.eval_shape` of a Flax init).
    mesh: the device mesh.
    rules: (logical name, mesh axes) pairs, from `logical_rules`.

  Returns:
    A tree of NamedShardings, shaped like the unboxed tree.

  Raises:
    ValueError: a mesh axis does not divide the array dimension it would split;
      the message names the parameter, its logical axis and the mesh field.
  """
  logical_specs = nn.get_partition_spec(boxed_tree)
  shardings = nn.logical_to_mesh_sharding(logical_specs, mesh, rules)
  is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
  # .value, not nn.unbox: under a mesh unboxing applies a sharding constraint.
  shapes = jax.tree.map(lambda x: x.value if is_box(x) else x, boxed_tree, is_leaf=is_box)
  leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
  for (path, leaf), named, logical in zip(
    leaves, jax.tree.leaves(shardings), jax.tree.leaves(logical_specs), strict=True
  ):
    for dim, axes in enumerate(named.spec):
      axes = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
      parts = math.prod(mesh.shape[a] for a in axes)
      if leaf.shape[dim] % parts:
        name = logical[dim]
        sizes = " x ".join(f"mesh.{a}={mesh.shape[a]}" for a in axes)
        raise ValueError(
          f"{jax.tree_util.keystr(path, simple=True, separator='/')} has shape {leaf.shape}: "
          f"dimension {dim} ({leaf.shape[dim]}, logical axis {name!r}) would be split over "
          f"{sizes}, which does not divide it. Choose mesh sizes that divide "
          f"{leaf.shape[dim]}, or map {name!r} to None in mesh.rules."
        )
  return shardings


def bytes_per_device(tree, device=None) -> int:
  """Bytes of a tree's array shards held by `device` (default: the first local device)."""
  device = jax.local_devices()[0] if device is None else device
  return sum(
    shard.data.nbytes
    for leaf in jax.tree.leaves(tree)
    for shard in leaf.addressable_shards
    if shard.device == device
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_size(batch_size: int, mesh: Mesh, field: str):
  shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
  if batch_size % shards:
    raise ValueError(
      f"{field}={batch_size} is not divisible by the {shards} data-parallel "
      f"devices (mesh.data x mesh.fsdp)."
    )


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """Per-process numpy batch -> global jax.Arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def to_host(tree):
  """The whole value of every global array in `tree`, as numpy, on every process.

  In a multi-host run a batch-sharded output spans the devices of all
  processes, so no process can read it directly; this gathers it (a
  collective: every process must call it, in the same order).
  """
  if all(x.is_fully_addressable for x in jax.tree.leaves(tree)):
    return jax.tree.map(np.asarray, tree)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
