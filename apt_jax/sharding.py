"""Mesh and sharding rules: data parallelism × FSDP (openpi's rule), activations on the data axes.

Mesh axes: `data` (pure data parallel) and `fsdp` (params sharded, batch also split). The batch is sharded over
both axes; a param of at least `min_fsdp_mbytes` is sharded along its largest axis divisible by the fsdp size.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def make_mesh(fsdp_devices: int = 1, devices=None) -> Mesh:
  """(data, fsdp) mesh over all devices: data = n_devices // fsdp_devices."""
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  if fsdp_devices < 1 or n % fsdp_devices:
    raise ValueError(f"fsdp_devices={fsdp_devices} must divide the number of devices ({n})")
  return Mesh(np.asarray(devices).reshape(n // fsdp_devices, fsdp_devices), (DATA_AXIS, FSDP_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over data × fsdp."""
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


def activation_constraint(x, mesh: Mesh | None):
  """Constrains a batch-leading activation to the data axes (no-op without a mesh)."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(BATCH_AXES)))


def per_device_bytes(tree) -> int:
  """Bytes each device holds for a tree of sharded arrays or sharded ShapeDtypeStructs."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard_shape = x.sharding.shard_shape(x.shape)
    total += int(np.prod(shard_shape)) * np.dtype(x.dtype).itemsize
  return total
