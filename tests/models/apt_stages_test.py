"""APT for the π-style architecture: Stage 1 ignores the prompt, Stage 2 starts exactly at Stage 1."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apt_jax import tree as tree_lib
from apt_jax.models import model as _model
from apt_jax.models import pi0

B = 2
SIZES = dict(
    action_dim=8, action_horizon=4, max_token_len=8, vocab_size=64, dtype="float32",
    paligemma_variant=dict(width=48, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16),
    action_expert_variant=dict(width=32, depth=2, mlp_dim=48, num_heads=2, num_kv_heads=1, head_dim=16),
    # 56x56 patches: 16 tokens per camera keep the prefix (and the tests) small.
    siglip_variant=dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(56, 56)), remat_policy="none")


def config(stage, **kw) -> pi0.Pi0Config:
  return pi0.Pi0Config(apt_stage=stage, **{**SIZES, **kw})


def make_obs(seed=0, prompt_seed=0, prompt_len=(5, 3)):
  rng = np.random.default_rng(seed)
  prng = np.random.default_rng(1000 + prompt_seed)
  L = SIZES["max_token_len"]
  tokens = prng.integers(1, SIZES["vocab_size"], (B, L)).astype(np.int32)
  mask = np.arange(L)[None] < np.array(prompt_len)[:, None]
  return _model.Observation(
      images={k: rng.uniform(-1, 1, (B, 224, 224, 3)).astype(np.float32) for k in _model.IMAGE_KEYS},
      image_masks={"base_0_rgb": np.ones(B, bool), "left_wrist_0_rgb": np.ones(B, bool),
                   "right_wrist_0_rgb": np.array([True, False])},
      state=rng.normal(size=(B, SIZES["action_dim"])).astype(np.float32),
      tokenized_prompt=np.where(mask, tokens, 0), tokenized_prompt_mask=mask)


ACTIONS = np.random.default_rng(7).normal(size=(B, SIZES["action_horizon"], SIZES["action_dim"])).astype(np.float32)
NOISE = np.random.default_rng(8).normal(size=ACTIONS.shape).astype(np.float32)


@jax.jit
def loss_and_actions(model, obs):
  loss = model.compute_loss(jax.random.key(0), obs, ACTIONS)
  return loss, model.sample_actions(jax.random.key(1), obs, num_steps=3, noise=NOISE)


@pytest.fixture(scope="module")
def stage1():
  return config("stage1").create(jax.random.key(0))


def stage2_from(stage1_model, **kw):
  """Stage 2 initialised from Stage 1: every Stage 1 param restored, only fusion params new."""
  fresh = config("stage2", **kw).create(jax.random.key(1))
  new = set(tree_lib.flatten(fresh.params)) - set(tree_lib.flatten(stage1_model.params))
  assert new and all("/fusion_1/" in k for k in new), sorted(new)
  return fresh.replace(params=tree_lib.merge(fresh.params, stage1_model.params))


def test_stage1_is_invariant_to_the_prompt(stage1):
  a = loss_and_actions(stage1, make_obs(prompt_seed=0, prompt_len=(5, 3)))
  b = loss_and_actions(stage1, make_obs(prompt_seed=1, prompt_len=(8, 1)))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_stage1_dropping_language_equals_masking_it(stage1):
  """Dropping the prompt == a plain π0 pass whose prompt is masked out of every attention (positions included)."""
  obs = make_obs()
  masked = dataclasses.replace(obs, tokenized_prompt_mask=np.zeros_like(obs.tokenized_prompt_mask))
  joint = config("none").load(stage1.params)  # Same weights, joint pass with language tokens present but masked.
  assert not joint.config.separate_prefix_pass
  for x, y in zip(loss_and_actions(stage1, obs), loss_and_actions(joint, masked)):
    np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("vlm_trainable,fusion_gate", [(False, "tanh"), (True, "tanh"), (False, "tanh_zero_proj")])
def test_stage2_at_init_equals_stage1(stage1, vlm_trainable, fusion_gate):
  s2 = stage2_from(stage1, vlm_trainable=vlm_trainable, fusion_gate=fusion_gate)
  assert s2.config.separate_prefix_pass == (not vlm_trainable)
  obs = make_obs()
  for x, y in zip(loss_and_actions(stage1, obs), loss_and_actions(s2, obs)):
    np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-6)


def _open_gates(model, value=0.5):
  flat = tree_lib.flatten(model.params)
  gates = [k for k in flat if k.endswith("fusion_1/gate")]
  assert len(gates) == 1 and flat[gates[0]].shape == (SIZES["paligemma_variant"]["depth"], 1)  # one per layer
  flat[gates[0]] = jnp.full_like(flat[gates[0]], value)
  return model.replace(params=tree_lib.unflatten(flat))


def test_stage2_depends_on_the_prompt_once_gates_open(stage1):
  s2 = _open_gates(stage2_from(stage1))
  a = loss_and_actions(s2, make_obs(prompt_seed=0))
  b = loss_and_actions(s2, make_obs(prompt_seed=1))
  assert np.abs(a[0] - b[0]).max() > 1e-4 and np.abs(a[1] - b[1]).max() > 1e-4
  # ...while the prior's path alone (gates shut) still ignores it.
  s2_closed = _open_gates(s2, 0.0)
  np.testing.assert_allclose(loss_and_actions(s2_closed, make_obs(prompt_seed=0))[0],
                             loss_and_actions(s2_closed, make_obs(prompt_seed=1))[0], atol=1e-6)


def test_sigmoid_gate_does_not_preserve_stage1(stage1):
  """The paper's convex mix starts at σ(0)=0.5, so outputs change at init (documented in pi0.py)."""
  s2 = stage2_from(stage1, fusion_gate="sigmoid")
  a, b = loss_and_actions(stage1, make_obs())[0], loss_and_actions(s2, make_obs())[0]
  assert np.abs(a - b).max() > 1e-3


def _grads(model):
  obs = make_obs()

  def loss_fn(params):
    return jnp.mean(model.replace(params=params).compute_loss(jax.random.key(0), obs, ACTIONS))

  return tree_lib.flatten(jax.jit(jax.grad(loss_fn))(model.params))


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_frozen_vlm_gets_zero_gradient_and_expert_does_not(stage):
  model = config(stage).create(jax.random.key(0))
  if stage == "stage2":
    model = _open_gates(model)
  grads = _grads(model)
  frozen = {k for k in grads if model.config.freeze_filter(k)}
  assert any(k.startswith("PaliGemma/img/") for k in frozen) and "PaliGemma/llm/embedder/input_embedding" in frozen
  for k in ["PaliGemma/llm/layers/attn/q_einsum_1/w", "PaliGemma/llm/layers/mlp_1/linear",
            "PaliGemma/llm/final_norm_1/scale", "state_proj/kernel", "action_out_proj/kernel"]:
    assert k in grads and k not in frozen
  for k in frozen:
    assert not np.any(grads[k]), k
  trainable = set(grads) - frozen
  assert all(np.any(grads[k]) for k in trainable if not k.endswith("fusion_1/gate")), \
      [k for k in trainable if not np.any(grads[k])]


def test_knowledge_insulation_stops_expert_gradient_into_vlm():
  model = config("none", knowledge_insulation=True).create(jax.random.key(0))
  assert model.config.vlm_trainable and not any(model.config.freeze_filter(k)
                                                for k in tree_lib.flatten(model.params))
  grads = _grads(model)
  assert all(not np.any(g) for k, g in grads.items() if _model.is_vlm_param(k))
  assert np.any(grads["action_out_proj/kernel"])


def test_stage1_rejects_trainable_vlm():
  with pytest.raises(ValueError, match="vlm_trainable"):
    config("stage1", vlm_trainable=True)


@pytest.mark.parametrize("fusion_gate", ["tanh", "tanh_zero_proj"])
def test_fusion_output_projection_gradient_at_init(stage1, fusion_gate):
  """tanh (α = 0): only α gets a gradient at init; tanh_zero_proj (α = 1, projection 0): the projection does too,
  while q gets none until the projection moves (d out / d q goes through the zero projection)."""
  grads = _grads(stage2_from(stage1, fusion_gate=fusion_gate))
  proj, q, gate = (grads[f"PaliGemma/llm/layers/fusion_1/{k}"] for k in ("attn_vec_einsum/w", "q_einsum/w", "gate"))
  assert not np.any(q)
  assert np.any(proj) == (fusion_gate == "tanh_zero_proj")
  assert np.any(gate) == (fusion_gate == "tanh")   # y = 0 under a zero projection: no gradient for α yet


def test_stage2_prefix_lm_lets_images_read_the_prompt(stage1):
  """"prefix_lm": PaliGemma's mask in Stage 2, so the prompt reaches the prior through the image tokens even with the
  gates shut (unlike "causal", test above); the inherited self-attention of the suffix still has no language keys."""
  s2 = stage2_from(stage1, stage2_prefix_mask="prefix_lm")
  a = loss_and_actions(s2, make_obs(prompt_seed=0))
  b = loss_and_actions(s2, make_obs(prompt_seed=1))
  assert np.abs(a[0] - b[0]).max() > 1e-4
  assert not np.asarray(_prefix_ar(s2)).any()   # one bidirectional block: images attend to the prompt
  assert np.asarray(_prefix_ar(stage2_from(stage1))).sum() == 1   # "causal": the prompt opens a new block


def _prefix_ar(model):
  return model.apply(pi0.Pi0Module.embed_prefix, make_obs()).ar


def test_stage2_prefix_mask_is_validated():
  with pytest.raises(ValueError, match="stage2_prefix_mask='full'"):
    config("stage2", stage2_prefix_mask="full")
  with pytest.raises(ValueError, match="fusion_gate='relu'"):
    config("stage2", fusion_gate="relu")
