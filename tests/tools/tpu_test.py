"""TPU topology names, and libtpu's compile-only devices (skipped, naming the reason, when libtpu is missing)."""

import pytest

from apt_jax.tools import tpu


@pytest.mark.parametrize("name, libtpu_name, accelerator_type, chips", [
    ("v5e-16", "v5e:4x4", "v5e-16", 16), ("v5e-8", "v5e:2x4", "v5e-8", 8), ("v6e-8", "v6e:2x4", "v6e-8", 8),
    # v4 and v5p names count TensorCores, two per chip.
    ("v4-8", "v4:2x2x1", "v4-8", 4), ("v5p-8", "v5p:2x2x1", "v5p-8", 4), ("v4-32", "v4:2x2x4", "v4-32", 16),
    ("v5e:2x2", "v5e:2x2", "v5e-4", 4), ("V5P:2x2x2", "v5p:2x2x2", "v5p-16", 8)])
def test_topology_names(name, libtpu_name, accelerator_type, chips):
  t = tpu.parse_topology(name)
  assert (t.name, t.accelerator_type, t.num_chips) == (libtpu_name, accelerator_type, chips)


@pytest.mark.parametrize("name, match", [("v7-8", "generation"), ("v5e-12", "power of two"), ("v4-9", "TensorCores"),
                                         ("v5e:4x4x1", "2 axes"), ("v4-2", "start at 4 chips"), ("tpu", "v5e:4x4")])
def test_bad_topology_names_say_why(name, match):
  with pytest.raises(ValueError, match=match):
    tpu.parse_topology(name)


@pytest.mark.parametrize("name, devices, kind", [("v5e:2x2", 4, "TPU v5 lite"), ("v4-8", 4, "TPU v4"),
                                                 ("v5p-8", 4, "TPU v5"), ("v6e:2x2", 4, "TPU v6 lite")])
def test_compile_only_devices_are_one_per_chip(libtpu, name, devices, kind):
  # v4 and v5p chips have two TensorCores: libtpu's megacore config makes each chip one device, as on a real slice.
  d = tpu.topology_devices(tpu.parse_topology(name))
  assert len(d) == devices and {x.device_kind for x in d} == {kind}


def test_slices_are_numbered(libtpu):
  d = tpu.topology_devices(tpu.parse_topology("v5e:2x2"), num_slices=2)
  assert sorted(x.slice_index for x in d) == [0] * 4 + [1] * 4
