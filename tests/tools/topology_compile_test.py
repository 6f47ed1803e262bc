"""aot_check compiles for TPU topologies through libtpu: per-chip bytes against a hand count, multi-slice meshes."""

import math

import jax
import numpy as np
import pytest

from apt_jax import configs
from apt_jax.tools import aot_check


def _tile_aligned_config(fsdp_devices):
  """A small joint π0 whose sharded dims stay multiples of TPU tiles (128 lanes), so layout padding is ~0."""
  config = configs.load(configs.REPO_ROOT / "experiments" / "debug.py", "joint")
  w = dict(width=512, depth=2, mlp_dim=1024, num_heads=2, num_kv_heads=1, head_dim=128)
  config.model.kwargs.update(dict(
      paligemma_variant=w, action_expert_variant=w, vocab_size=512, image_keys=("base_0_rgb",),
      image_resolution=(28, 28), action_dim=128, action_horizon=4, max_token_len=8,
      siglip_variant=dict(width=512, depth=1, mlp_dim=1024, num_heads=2, patch_size=(14, 14))))
  config.batch_size = 8
  config.mesh.fsdp_devices = fsdp_devices
  config.mesh.min_fsdp_mbytes = 0.0
  return config


def _hand_count_per_chip(config, fsdp):
  """openpi's FSDP rule with no size floor: a ≥2-d param with an axis divisible by the fsdp size is split fsdp ways;
  the rest is replicated. f32 params."""
  total = 0
  for x in jax.tree.leaves(configs.model_config(config).abstract_params()):
    nbytes = math.prod(x.shape) * np.dtype(x.dtype).itemsize
    total += nbytes // fsdp if len(x.shape) >= 2 and any(d % fsdp == 0 for d in x.shape) else nbytes
  return total


@pytest.fixture(scope="module")
def v5e_2x2(libtpu):
  return aot_check.aot_check(_tile_aligned_config(4), topology="v5e:2x2", serving=False)


def test_v5e_compile_holds_the_fsdp_share_of_params_and_adam_state(v5e_2x2):
  params = _hand_count_per_chip(_tile_aligned_config(4), 4)
  assert v5e_2x2["state_per_chip_bytes"]["trainable_params"] == params
  step = v5e_2x2["train_step"]
  # What XLA lays out per chip: params + Adam's mu and nu (f32, sharded alike) + 2 batch rows and the rng key.
  assert 3 * params <= step["per_chip_bytes"]["argument"] <= 1.01 * 3 * params
  assert step["per_chip_bytes"]["alias"] >= 3 * params  # the state is donated: updated in place
  assert step["fits"] and step["hbm_GiB"] == 16
  assert step["step_time_lower_bound_s"] == pytest.approx(step["flops_per_chip"] / 197e12, rel=1e-3)
  # The compiled program does the analytic work (the TPU compiler may drop a dead slice of a gradient, never add).
  assert 0.99 <= step["flops_vs_analytic"] <= 1.0


def test_two_slices_replicate_the_state_and_split_the_batch(v5e_2x2, libtpu):
  two = aot_check.aot_check(_tile_aligned_config(4).copy_and_resolve_references(), topology="v5e:2x2", num_slices=2,
                            serving=False)
  assert two["mesh"] == {"dcn": 2, "data": 1, "fsdp": 4} and two["devices"] == 8
  assert two["state_per_chip_bytes"] == v5e_2x2["state_per_chip_bytes"]
  # Same global batch over twice the chips: half the FLOPs per chip, the same in total.
  assert two["train_step"]["flops"] == pytest.approx(v5e_2x2["train_step"]["flops"], rel=0.03)
