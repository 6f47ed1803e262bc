"""The head contract (apt_jax.models.model): checked Observations and calls, config validation, Stage 1 -> Stage 2."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apt_jax import tree as tree_lib
from apt_jax.models import array_typing as at
from apt_jax.models import gr00t
from apt_jax.models import model as _model
from apt_jax.models import pi0

SIZES = dict(
    action_dim=4, action_horizon=3, max_token_len=6, vocab_size=32, dtype="float32", remat_policy="none",
    image_keys=("base_0_rgb",), image_resolution=(32, 32),
    paligemma_variant=dict(width=32, depth=1, mlp_dim=32, num_heads=2, num_kv_heads=1, head_dim=16),
    siglip_variant=dict(width=16, depth=1, mlp_dim=16, num_heads=2, patch_size=(16, 16)))
EXPERT = dict(width=16, depth=1, mlp_dim=16, num_heads=2, num_kv_heads=1, head_dim=16)


def obs(batch=2, state_batch=None, image_dtype=np.float32):
  return _model.Observation(
      images={"base_0_rgb": np.zeros((batch, 32, 32, 3), image_dtype)},
      image_masks={"base_0_rgb": np.ones(batch, bool)},
      state=np.zeros((batch if state_batch is None else state_batch, 4), np.float32),
      tokenized_prompt=np.ones((batch, 6), np.int32), tokenized_prompt_mask=np.ones((batch, 6), bool))


@pytest.fixture(scope="module")
def model():
  return pi0.Pi0Config(action_expert_variant=EXPERT, **SIZES).create(jax.random.key(0))


def test_observation_checks_batch_and_dtype_naming_the_field():
  with pytest.raises(TypeError, match=r"Observation\.state is float32\[3, 4\]"):
    obs(batch=2, state_batch=3)
  o = obs()
  wrist = {"left_wrist_0_rgb": np.zeros((2, 16, 24, 3), np.float32)}
  dataclasses.replace(o, images={**o.images, **wrist})  # cameras may differ in size (preprocess resizes them)
  for bad in [np.zeros((2, 16, 24, 3), np.uint8), np.zeros((3, 16, 24, 3), np.float32)]:
    # Every camera is checked (uint8 goes through from_dict, which maps it to [-1, 1]).
    with pytest.raises(TypeError, match=r"Observation\.images\['left_wrist_0_rgb'\]"):
      dataclasses.replace(o, images={**o.images, "left_wrist_0_rgb": bad})
  with at.disable_typechecking():
    obs(batch=2, state_batch=3)
  with pytest.raises(TypeError):
    obs(batch=2, state_batch=3)


def test_observation_survives_pytree_rebuilds(model):
  """JAX rebuilds Observations from shape structs, shardings and tracers; only real arrays are checked."""
  spec, _ = model.config.inputs_spec(batch_size=2)
  assert isinstance(spec.state, jax.ShapeDtypeStruct)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  o = jax.jit(lambda o: o, in_shardings=(jax.tree.map(lambda _: sharding, obs()),))(obs())
  np.testing.assert_array_equal(jax.vmap(lambda o: o.state)(o), o.state)


def test_compute_loss_and_sample_actions_check_their_arrays(model):
  actions = np.zeros((2, 3, 4), np.float32)
  assert model.compute_loss(jax.random.key(0), obs(), actions).shape == (2, 3)
  with pytest.raises(Exception, match="actions"):
    model.compute_loss(jax.random.key(0), obs(), actions[0, 0])  # [AD]: no horizon axis
  with pytest.raises(Exception, match="noise"):
    model.compute_loss(jax.random.key(0), obs(), actions, noise=np.zeros((2, 5, 4), np.float32))
  with pytest.raises(Exception, match="noise"):
    model.sample_actions(jax.random.key(0), obs(), noise=np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("field,value", [("apt_stage", "stage3"), ("dtype", "float16"), ("objective", "ddpm"),
                                         ("ddim_loss", "huber"), ("stage2_prefix_mask", "full")])
def test_config_names_the_bad_field(field, value):
  with pytest.raises(ValueError, match=f"{field}={value!r}"):
    pi0.Pi0Config(action_expert_variant=EXPERT, **{**SIZES, field: value})


def test_config_rejects_loss_weights_beyond_the_action_dims():
  with pytest.raises(ValueError, match="cover 6 dims > action_dim 4"):
    gr00t.Gr00tConfig(dit_variant="dummy", objective="ddim", loss_weights=[[3, 1.0], [3, 1.0]], **SIZES)


def test_apt_defaults_follow_the_stage():
  c = lambda stage, **kw: pi0.Pi0Config(action_expert_variant=EXPERT, apt_stage=stage, **SIZES, **kw)
  assert (c("none").vlm_trainable, c("none").vlm_lr_multiplier) == (True, 1.0)
  assert (c("stage2").vlm_trainable, c("stage2").vlm_lr_multiplier) == (False, 0.1)
  assert not c("stage1").uses_language and c("stage2").uses_language
  assert c("none", knowledge_insulation=True).stop_vlm_gradient and not c("none").stop_vlm_gradient


def test_stage2_partial_params_names_a_param_neither_restored_nor_new(model):
  s2 = dataclasses.replace(model.config, apt_stage="stage2")
  abstract = tree_lib.flatten(s2.abstract_params())
  s1 = {k: np.zeros(v.shape, v.dtype) for k, v in tree_lib.flatten(model.params).items()
        if k != "action_in_proj/bias"}
  with pytest.raises(tree_lib.TreeMismatchError, match="action_in_proj/bias: neither in Stage 1 nor new"):
    s2.stage2_partial_params(tree_lib.unflatten(s1), tree_lib.unflatten(abstract))


def test_stage2_partial_params_casts_to_the_model_dtype(model):
  s2 = dataclasses.replace(model.config, apt_stage="stage2")
  s1 = jax.tree.map(lambda x: np.asarray(x, np.float16), model.params)
  partial, restored, new = s2.stage2_partial_params(s1, s2.abstract_params())
  assert {x.dtype for x in jax.tree.leaves(partial)} == {np.dtype(np.float32)}
  assert restored == sorted(tree_lib.flatten(model.params)) and all("/fusion_1/" in k for k in new)
  np.testing.assert_array_equal(partial["state_proj"]["kernel"], np.asarray(s1["state_proj"]["kernel"], np.float32))


def test_compute_loss_with_intermediates_returns_the_loss(model):
  args = (jax.random.key(3), obs(), jnp.ones((2, 3, 4)))
  loss, sown = model.compute_loss_with_intermediates(*args)
  np.testing.assert_array_equal(loss, model.compute_loss(*args))
  np.testing.assert_array_equal(sown["v_t"].shape, (2, 3, 4))
