"""GR00T-style head: Stage 1 ignores the prompt, Stage 2 starts exactly at Stage 1 and then reads the prompt."""

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


@pytest.fixture(scope="module")
def stage1():
  return perturb(config("gr00t", "stage1").create(jax.random.key(0)))  # SigLIP's zero head hides the images.


@pytest.fixture(scope="module")
def stage2(stage1):
  fresh = config("gr00t", "stage2").create(jax.random.key(1))
  partial, restored, new = fresh.config.stage2_partial_params(stage1.params, fresh.params)
  assert set(restored) == set(tree_lib.flatten(stage1.params))
  assert new and all(k.startswith("lang_blocks_") for k in new), new
  return fresh.replace(params=tree_lib.merge(fresh.params, partial))


def test_stage1_is_invariant_to_the_prompt(stage1):
  a = loss_and_actions(stage1, make_obs(prompt_seed=0, prompt_len=(5, 3)))
  b = loss_and_actions(stage1, make_obs(prompt_seed=1, prompt_len=(8, 1)))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_stage2_at_init_equals_stage1(stage1, stage2):
  obs = make_obs()
  for x, y in zip(loss_and_actions(stage1, obs), loss_and_actions(stage2, obs)):
    np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)


def _open_gates(model, value=0.5):
  flat = tree_lib.flatten(model.params)
  gates = [k for k in flat if k.endswith("_gate")]
  assert len(gates) == 2 * 2  # attn + ff gate in each of the dummy DiT's 2 language blocks
  for k in gates:
    flat[k] = jnp.full_like(flat[k], value)
  return model.replace(params=tree_lib.unflatten(flat))


def test_stage2_reads_the_prompt_once_gates_open(stage2):
  s2 = _open_gates(stage2)
  a = loss_and_actions(s2, make_obs(prompt_seed=0))
  b = loss_and_actions(s2, make_obs(prompt_seed=1))
  assert np.abs(a[0] - b[0]).max() > 1e-4 and np.abs(a[1] - b[1]).max() > 1e-4


def test_one_stage_model_reads_the_prompt():
  model = perturb(config("gr00t", "none").create(jax.random.key(0)))
  a = loss_and_actions(model, make_obs(prompt_seed=0))
  b = loss_and_actions(model, make_obs(prompt_seed=1))
  assert np.abs(a[0] - b[0]).max() > 1e-5


def test_param_tree_and_counts(stage1, stage2):
  flat = tree_lib.flatten(stage1.params)
  assert "PaliGemma/llm/layers/attn/q_einsum/w" in flat and "PaliGemma/img/embedding/kernel" in flat
  head = lambda m: sum(np.size(v) for k, v in tree_lib.flatten(m.params).items() if not k.startswith("PaliGemma/"))
  assert head(stage1) == param_counts.gr00t_head(stage1.config)
  assert head(stage2) == param_counts.gr00t_head(stage2.config)


def test_frozen_vlm_gets_zero_gradient_and_head_does_not(stage1):
  g = grads(stage1)
  frozen = {k for k in g if stage1.config.freeze_filter(k)}
  assert "PaliGemma/llm/embedder/input_embedding" in frozen and any(k.startswith("PaliGemma/img/") for k in frozen)
  assert all(not np.any(g[k]) for k in frozen)
  for k in ["blocks_0/attn1/to_k/kernel", "vl_adapter_0/attn1/to_q/kernel", "action_decoder/layer2/kernel",
            "state_encoder/layer1/kernel", "future_tokens", "timestep_encoder/linear_1/kernel"]:
    assert np.any(g[k]), k


def test_vlm_layer_selects_hidden_state():
  """vlm_layer=0 reads the input embeddings: the VLM's transformer layers then get no gradient."""
  model = perturb(config("gr00t", "none", vlm_layer=0).create(jax.random.key(0)))
  g = grads(model)
  assert not np.any(g["PaliGemma/llm/layers/attn/q_einsum/w"]) and np.any(g["PaliGemma/img/head/kernel"])
  with pytest.raises(ValueError, match="vlm_layer"):
    config("gr00t", "none", vlm_layer=3)


def test_stage1_rejects_trainable_vlm():
  with pytest.raises(ValueError, match="vlm_trainable"):
    config("gr00t", "stage1", vlm_trainable=True)
