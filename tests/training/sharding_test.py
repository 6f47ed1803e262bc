"""The (dcn, data, fsdp) mesh: data parallel across slices, FSDP within a slice (8 fake CPU devices)."""

import jax
import numpy as np
import pytest

from apt_jax import sharding


def test_one_slice_mesh_keeps_the_device_order():
  mesh = sharding.make_mesh(4)
  assert dict(mesh.shape) == {"dcn": 1, "data": 2, "fsdp": 4}
  assert list(mesh.devices.ravel()) == jax.devices()


def test_two_slices_split_the_batch_and_replicate_fsdp_shards():
  mesh = sharding.make_mesh(2, num_slices=2)
  assert dict(mesh.shape) == {"dcn": 2, "data": 2, "fsdp": 2}
  batch = jax.device_put(np.arange(16.0).reshape(8, 2), sharding.data_sharding(mesh))
  rows = [int(s.data[0, 0]) // 2 for s in batch.addressable_shards]
  assert sorted(rows) == list(range(8))  # one row per device
  param = {"w": jax.ShapeDtypeStruct((16, 4), np.float32)}
  spec = sharding.fsdp_sharding(param, mesh, min_fsdp_mbytes=0)["w"]
  index = spec.devices_indices_map((16, 4))
  slice0, slice1 = mesh.devices[0].ravel(), mesh.devices[1].ravel()
  # Same position in the other slice: the same half of the param (replicated across the DCN).
  for a, b in zip(slice0, slice1):
    assert index[a] == index[b]
  assert sorted(index[d][0].start for d in slice0) == [0, 0, 8, 8]  # fsdp halves, data-parallel pairs


@pytest.mark.parametrize("fsdp, slices, match", [(8, 2, "per slice"), (3, 1, "per slice"), (1, 3, "num_slices")])
def test_mesh_shapes_that_do_not_divide_say_which(fsdp, slices, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(fsdp, num_slices=slices)


def test_microbatches_keep_every_row_on_its_device():
  """Gradient accumulation's micro-batch i takes rows i, i + n, ...: each device's block of the global batch splits
  into its own share of every micro-batch, so the [n, B/n] layout needs no communication."""
  from apt_jax import train

  mesh = sharding.make_mesh(4)
  x = np.arange(32.0)
  batch = jax.device_put(x, sharding.data_sharding(mesh))
  held = {s.device: set(np.asarray(s.data)) for s in batch.addressable_shards}
  micro = jax.jit(lambda b: train.microbatches(b, 2), out_shardings=sharding.NamedSharding(
      mesh, sharding.P(None, sharding.BATCH_AXES)))(batch)
  np.testing.assert_array_equal(micro, np.stack([x[0::2], x[1::2]]))
  for shard in micro.addressable_shards:
    assert set(np.asarray(shard.data).ravel()) <= held[shard.device]


def test_activation_mesh_pins_the_batch_axis_only_while_it_is_active():
  mesh = sharding.make_mesh(4)
  x = np.arange(32.0).reshape(8, 4)
  with sharding.activation_mesh(mesh):
    inside = jax.jit(lambda v: sharding.constrain_batch(v * 2))(x)
  outside = jax.jit(lambda v: sharding.constrain_batch(v * 3))(x)  # traced after the context closed
  np.testing.assert_array_equal(inside, 2 * x)
  assert inside.sharding.is_equivalent_to(sharding.data_sharding(mesh), x.ndim)
  assert sorted(s.data.shape[0] for s in inside.addressable_shards) == [1] * 8  # one row per device
  assert len(outside.sharding.device_set) == 1  # no constraint: where jit puts an uncommitted input
