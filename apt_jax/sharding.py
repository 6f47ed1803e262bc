"""Mesh and sharding rules: data parallelism × FSDP (openpi's rule), activations on the data axes.

Mesh axes, slowest network first: `dcn` (data parallel across TPU slices, over the data-centre network; 1 on one
slice), `data` (data parallel within a slice) and `fsdp` (params sharded within a slice, batch also split). The batch
is sharded over all three; a param of at least `min_fsdp_mbytes` is sharded along its largest axis divisible by the
fsdp size and replicated across slices, so only gradients cross the DCN (one all-reduce per step).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DCN_AXIS = "dcn"
DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DCN_AXIS, DATA_AXIS, FSDP_AXIS)


def slice_count(devices) -> int:
  """Number of TPU slices the devices span (1 for CPU/GPU devices, which carry no slice index)."""
  return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(fsdp_devices: int = 1, devices=None, *, num_slices: int | None = None) -> Mesh:
  """(dcn, data, fsdp) mesh: dcn = num_slices, data = devices per slice // fsdp_devices.

  `num_slices` defaults to the slices the devices span; on devices without slices (CPU) a larger value splits them
  into that many equal groups, to test the multi-slice layout.
  """
  devices = list(jax.devices() if devices is None else devices)
  n, slices = len(devices), num_slices or slice_count(devices)
  if slices < 1 or n % slices:
    raise ValueError(f"num_slices={slices} must divide the number of devices ({n})")
  if fsdp_devices < 1 or (n // slices) % fsdp_devices:
    raise ValueError(f"fsdp_devices={fsdp_devices} must divide the number of devices per slice ({n // slices})")
  ici = (1, n // slices // fsdp_devices, fsdp_devices)
  if slices > 1 and slice_count(devices) == slices:
    grid = mesh_utils.create_hybrid_device_mesh(ici, (slices, 1, 1), devices, allow_split_physical_axes=True)
  else:
    # On a TPU slice this follows the physical torus; elsewhere it is a plain reshape in device order.
    grid = mesh_utils.create_device_mesh((slices, *ici[1:]), devices, allow_split_physical_axes=True)
  return Mesh(grid, (DCN_AXIS, DATA_AXIS, FSDP_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over dcn × data × fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(shape, itemsize: int, fsdp_size: int, min_bytes: int) -> P:
  """openpi's rule: replicate small or 0/1-d arrays; else shard the largest axis divisible by the fsdp size."""
  if fsdp_size == 1 or len(shape) < 2 or int(np.prod(shape)) * itemsize < min_bytes:
    return P()
  for i in np.argsort(shape)[::-1]:
    if shape[i] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[i] = FSDP_AXIS
      return P(*spec)
  return P()


def fsdp_sharding(tree, mesh: Mesh, *, min_fsdp_mbytes: float = 4.0, log: bool = False):
  """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs)."""
  min_bytes = int(min_fsdp_mbytes * 2**20)
  fsdp_size = mesh.shape[FSDP_AXIS]

  def one(path, x):
    if not hasattr(x, "shape"):
      return replicated(mesh)
    spec = fsdp_spec(tuple(x.shape), np.dtype(x.dtype).itemsize, fsdp_size, min_bytes)
    if log and spec != P():
      logging.info("fsdp: %s %s -> %s", jax.tree_util.keystr(path), x.shape, spec)
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(one, tree)


def with_leading_axis(sharding: NamedSharding) -> NamedSharding:
  """The sharding of a stack of arrays each placed by `sharding`: a new, unsharded leading axis (e.g. seeds)."""
  return NamedSharding(sharding.mesh, P(None, *sharding.spec))


def activation_constraint(x, mesh: Mesh | None, *, batch_dim: int = 0):
  """Constrains an activation's batch dimension (`batch_dim`) to the data axes (no-op without a mesh)."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*[None] * batch_dim, BATCH_AXES)))


# The mesh whose data axes hold activations' batch axis while a train step is traced (None: no constraint).
_ACTIVATION_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("activation_mesh", default=None)


@contextlib.contextmanager
def activation_mesh(mesh: Mesh | None):
  """While tracing within it, `constrain_batch` pins activations' batch axis to `mesh`'s data axes (openpi's
  `set_mesh` + `activation_sharding_constraint`). Without it XLA's propagation may follow the FSDP-sharded weights
  into the activations: batch gathered onto every chip, features split instead."""
  token = _ACTIVATION_MESH.set(mesh)
  try:
    yield
  finally:
    _ACTIVATION_MESH.reset(token)


def constrain_batch(tree):
  """Every array [B, ...] of `tree` (None leaves skipped) with its batch axis on the data axes of the active
  `activation_mesh`; a no-op outside one."""
  mesh = _ACTIVATION_MESH.get()
  return tree if mesh is None else jax.tree.map(lambda x: activation_constraint(x, mesh), tree)


def per_device_bytes(tree) -> int:
  """Bytes each device holds for a tree of sharded arrays or sharded ShapeDtypeStructs."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard_shape = x.sharding.shard_shape(x.shape)
    total += int(np.prod(shard_shape)) * np.dtype(x.dtype).itemsize
  return total
