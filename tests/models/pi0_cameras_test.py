"""`image_keys` / `image_resolution`: a π0 that reads fewer cameras at another resolution (the CPU testbed's setup)."""

import jax
import numpy as np
import pytest

from apt_jax.models import image_tools
from apt_jax.models import model as _model
from apt_jax.models import pi0
from apt_jax.models import registry

SIZES = dict(
    action_dim=4, action_horizon=3, max_token_len=6, vocab_size=32, dtype="float32", remat_policy="none",
    paligemma_variant=dict(width=32, depth=1, mlp_dim=32, num_heads=2, num_kv_heads=1, head_dim=16),
    action_expert_variant=dict(width=16, depth=1, mlp_dim=16, num_heads=2, num_kv_heads=1, head_dim=16),
    siglip_variant=dict(width=16, depth=1, mlp_dim=16, num_heads=2, patch_size=(16, 16)))


def one_camera(**kw) -> pi0.Pi0Config:
  return pi0.Pi0Config(image_keys=["base_0_rgb"], image_resolution=[64, 64], **{**SIZES, **kw})


def obs_with(image, batch=2):
  rng = np.random.default_rng(0)
  return _model.Observation(
      images={"base_0_rgb": image}, image_masks={"base_0_rgb": np.ones(batch, bool)},
      state=rng.normal(size=(batch, SIZES["action_dim"])).astype(np.float32),
      tokenized_prompt=np.ones((batch, SIZES["max_token_len"]), np.int32),
      tokenized_prompt_mask=np.ones((batch, SIZES["max_token_len"]), bool))


def with_image_head(model):
  """SigLIP's head is zero-initialised (image tokens are 0 at init): give it weights so the image matters."""
  params = jax.tree.map(lambda x: x, model.params)
  head = params["PaliGemma"]["img"]["head"]["kernel"]
  params["PaliGemma"]["img"]["head"]["kernel"] = jax.random.normal(jax.random.key(9), head.shape)
  return model.replace(params=params)


def test_config_normalises_lists_and_round_trips_through_json():
  c = one_camera()
  assert c.image_keys == ("base_0_rgb",) and c.image_resolution == (64, 64)
  assert registry.config_from_dict(registry.config_to_dict(c)) == c
  obs, _ = c.inputs_spec(batch_size=3)
  assert list(obs.images) == ["base_0_rgb"] and obs.images["base_0_rgb"].shape == (3, 64, 64, 3)
  # 64 / 16 = 4x4 patches: the SigLIP position embedding has 16 rows, as a 224 image with 56-pixel patches.
  assert one_camera().abstract_params()["PaliGemma"]["img"]["pos_embedding"].shape == (1, 16, 16)


def test_images_are_resized_to_the_configured_resolution():
  """A 32x40 image gives the loss of the same image resized-with-pad to 64x64 by hand (the independent path)."""
  model = with_image_head(one_camera().create(jax.random.key(0)))
  small = np.random.default_rng(1).uniform(-1, 1, (2, 32, 40, 3)).astype(np.float32)
  actions = np.random.default_rng(2).normal(size=(2, 3, 4)).astype(np.float32)
  by_hand = np.asarray(image_tools.resize_with_pad(small, 64, 64))
  loss = lambda img: np.asarray(model.compute_loss(jax.random.key(3), obs_with(img), actions))
  np.testing.assert_allclose(loss(small), loss(by_hand), rtol=1e-6, atol=1e-6)
  assert not np.allclose(loss(small), loss(by_hand[:, ::-1]))   # and the image matters


def test_cameras_outside_image_keys_are_ignored_and_missing_ones_named():
  model = with_image_head(one_camera().create(jax.random.key(0)))
  img = np.random.default_rng(1).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  actions = np.zeros((2, 3, 4), np.float32)
  obs = obs_with(img)
  extra = obs.replace(images={**obs.images, "left_wrist_0_rgb": -img},
                      image_masks={**obs.image_masks, "left_wrist_0_rgb": np.ones(2, bool)})
  key = jax.random.key(4)
  np.testing.assert_array_equal(model.compute_loss(key, obs, actions), model.compute_loss(key, extra, actions))
  two = pi0.Pi0Config(image_keys=("base_0_rgb", "right_wrist_0_rgb"), image_resolution=(64, 64), **SIZES)
  with pytest.raises(ValueError, match="right_wrist_0_rgb"):
    two.create(jax.random.key(0)).compute_loss(key, obs, actions)
