"""The APT expert: dilated masks, Stage 1 ignores the prompt, the 2i+1 expansion and its two initialisations."""

import jax
import jax.numpy as jnp
import numpy as np
import param_counts
import pytest
from heads_common import config
from heads_common import grads
from heads_common import loss_and_actions
from heads_common import make_obs
from heads_common import perturb

from apt_jax import tree as tree_lib
from apt_jax.models import apt_expert


@pytest.fixture(scope="module")
def stage1():
  # The zero-initialised head, AdaRMS gates and SigLIP head would hide most of the network.
  return perturb(config("apt_expert", "stage1").create(jax.random.key(0)))


def stage2_from(stage1_model, init):
  fresh = config("apt_expert", "stage2", stage2_init=init).create(jax.random.key(1))
  partial, restored, new = fresh.config.stage2_partial_params(stage1_model.params, fresh.params)
  return fresh.replace(params=tree_lib.merge(fresh.params, partial)), restored, new


def test_masks():
  """Over [vision, language, action]: `full` and `dilated` as in the paper's prepare_attention_mask."""
  vl_mask = jnp.array([[True, True, False]])  # vision, language, padding (language)
  is_lang = jnp.array([[False, True, True]])
  full, dilated, pos = apt_expert.AptExpertModule.masks_and_positions(vl_mask, is_lang, 2)
  #                       V  L  pad A  A
  want_full = np.array([[1, 1, 0, 0, 0],   # vision: VL keys only
                        [1, 1, 0, 0, 0],   # language
                        [0, 0, 0, 0, 0],   # padding
                        [1, 1, 0, 1, 1],   # action: VL and action keys
                        [1, 1, 0, 1, 1]], bool)
  want_dilated = np.array([[1, 0, 0, 0, 0],   # vision: vision only
                           [0, 1, 0, 0, 0],   # language: language only
                           [0, 0, 0, 0, 0],
                           [1, 0, 0, 1, 1],   # action: vision and action
                           [1, 0, 0, 1, 1]], bool)
  np.testing.assert_array_equal(full[0], want_full)
  np.testing.assert_array_equal(dilated[0], want_dilated)
  np.testing.assert_array_equal(pos[0], [0, 3, 0, 1, 2])  # vision 0, actions 1..A, language after


def test_default_taps():
  assert apt_expert.default_taps(18, 20) == (1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 14, 15, 16, 17, 18)
  assert apt_expert.default_taps(28, 10)[-1] == 28 and apt_expert.default_taps(2, 4) == (1, 1, 2, 2)


def test_stage1_is_invariant_to_the_prompt(stage1):
  a = loss_and_actions(stage1, make_obs(prompt_seed=0, prompt_len=(5, 3)))
  b = loss_and_actions(stage1, make_obs(prompt_seed=1, prompt_len=(8, 1)))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_stage1_layers_fuse_odd_taps(stage1):
  c = stage1.config
  assert c.num_layers == 2 and [c.tap_index(i) for i in range(2)] == [1, 3]
  assert {k.split("/")[0] for k in tree_lib.flatten(stage1.params) if k.startswith("highway_")} == {"highway_1",
                                                                                                   "highway_3"}


def test_expansion_renumbers_stage1_layers(stage1):
  s2, restored, new = stage2_from(stage1, "preserving")
  flat1, flat2 = tree_lib.flatten(stage1.params), tree_lib.flatten(s2.params)
  np.testing.assert_array_equal(flat2["layer_1/qkv/kernel"], flat1["layer_0/qkv/kernel"])
  np.testing.assert_array_equal(flat2["layer_3/ffn_out/kernel"], flat1["layer_1/ffn_out/kernel"])
  np.testing.assert_array_equal(flat2["gate"], flat1["gate"])
  assert "layer_1/qkv/kernel" in restored and "layer_0/qkv/kernel" not in restored
  assert {k.split("/")[0] for k in new} == {"layer_0", "layer_2", "highway_0", "highway_2"}
  assert not np.any(flat2["layer_0/out/kernel"]) and not np.any(flat2["layer_2/fusion_open"])


def test_preserving_stage2_equals_stage1(stage1):
  s2, _, _ = stage2_from(stage1, "preserving")
  obs = make_obs()
  for x, y in zip(loss_and_actions(stage1, obs), loss_and_actions(s2, obs)):
    np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)


def test_paper_stage2_differs_and_reads_the_prompt(stage1):
  s2, _, _ = stage2_from(stage1, "paper")
  flat = tree_lib.flatten(s2.params)
  np.testing.assert_array_equal(flat["layer_0/fusion_open"], 1.0)
  a, b = loss_and_actions(stage1, make_obs()), loss_and_actions(s2, make_obs())
  assert np.abs(a[0] - b[0]).max() > 1e-4
  c = loss_and_actions(s2, make_obs(prompt_seed=1))
  assert np.abs(b[1] - c[1]).max() > 1e-5


def test_expansion_rejects_a_mismatched_tree(stage1):
  other = config("apt_expert", "stage2", expert_variant=dict(width=64, num_heads=2, depth=4)).create(
      jax.random.key(1))
  with pytest.raises(ValueError, match="do not fit"):
    other.config.stage2_partial_params(stage1.params, other.params)


def test_frozen_vlm_gets_zero_gradient_and_expert_does_not(stage1):
  g = grads(stage1)
  frozen = {k for k in g if stage1.config.freeze_filter(k)}
  assert "PaliGemma/llm/layers/attn/q_einsum/w" in frozen
  assert all(not np.any(g[k]) for k in frozen)
  # highway_3 is fused after the last layer, where the VL stream is no longer read (as in the paper): no gradient.
  assert not np.any(g["highway_3/kernel"])
  for k in ["layer_0/qkv/kernel", "layer_1/ffn_in/kernel", "highway_1/kernel", "vl_in/kernel", "gate",
            "action_out/kernel", "time_mlp_in/kernel", "layer_0/attn_norm_act/Dense_0/kernel"]:
    assert np.any(g[k]), k


def test_param_counts(stage1):
  head = lambda m: sum(np.size(v) for k, v in tree_lib.flatten(m.params).items() if not k.startswith("PaliGemma/"))
  assert head(stage1) == param_counts.apt_expert_head(stage1.config)
  s2, _, _ = stage2_from(stage1, "paper")
  assert head(s2) == param_counts.apt_expert_head(s2.config)
