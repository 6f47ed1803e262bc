"""Tiny configs, observations and helpers shared by the action-head tests (not a test module)."""

import jax
import jax.numpy as jnp
import numpy as np

from apt_jax.models import apt_expert
from apt_jax.models import gr00t
from apt_jax.models import model as _model
from apt_jax.models import pi0

B = 2
VLM = dict(width=48, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16)
# 56x56 patches: 16 tokens per 224x224 camera keep the prefix (and the tests) small.
SIGLIP = dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(56, 56))
COMMON = dict(action_dim=8, action_horizon=4, max_token_len=8, vocab_size=64, dtype="float32",
              paligemma_variant=VLM, siglip_variant=SIGLIP, remat_policy="none")
HEADS = {
    "pi0": (pi0.Pi0Config, dict(action_expert_variant=dict(width=32, depth=2, mlp_dim=48, num_heads=2,
                                                            num_kv_heads=1, head_dim=16))),
    "gr00t": (gr00t.Gr00tConfig, dict(dit_variant="dummy")),
    "apt_expert": (apt_expert.AptExpertConfig, dict(expert_variant="dummy", objective="flow")),
}


def config(head: str, stage: str = "stage1", **kw):
  cls, extra = HEADS[head]
  return cls(apt_stage=stage, **{**COMMON, **extra, **kw})


def make_obs(seed=0, prompt_seed=0, prompt_len=(5, 3), batch=B, action_dim=8, max_token_len=8, vocab_size=64):
  rng = np.random.default_rng(seed)
  prng = np.random.default_rng(1000 + prompt_seed)
  tokens = prng.integers(1, vocab_size, (batch, max_token_len)).astype(np.int32)
  mask = np.arange(max_token_len)[None] < np.resize(np.array(prompt_len), batch)[:, None]
  return _model.Observation(
      images={k: rng.uniform(-1, 1, (batch, 224, 224, 3)).astype(np.float32) for k in _model.IMAGE_KEYS},
      image_masks={"base_0_rgb": np.ones(batch, bool), "left_wrist_0_rgb": np.ones(batch, bool),
                   "right_wrist_0_rgb": np.arange(batch) % 2 == 0},
      state=rng.normal(size=(batch, action_dim)).astype(np.float32),
      tokenized_prompt=np.where(mask, tokens, 0), tokenized_prompt_mask=mask)


ACTIONS = np.random.default_rng(7).normal(size=(B, 4, 8)).astype(np.float32)
NOISE = np.random.default_rng(8).normal(size=ACTIONS.shape).astype(np.float32)


@jax.jit
def loss_and_actions(model, obs):
  loss = model.compute_loss(jax.random.key(0), obs, ACTIONS)
  return loss, model.sample_actions(jax.random.key(1), obs, num_steps=3, noise=NOISE)


def grads(model, obs=None):
  obs = make_obs() if obs is None else obs

  def loss_fn(params):
    return jnp.mean(model.replace(params=params).compute_loss(jax.random.key(0), obs, ACTIONS))

  from apt_jax import tree as tree_lib
  return tree_lib.flatten(jax.jit(jax.grad(loss_fn))(model.params))


def perturb(model, scale=0.05, seed=5):
  """Adds noise to every param: fresh models hide most paths behind zero inits (SigLIP's head, output layers)."""
  leaves, treedef = jax.tree.flatten(model.params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return model.replace(params=jax.tree.unflatten(treedef, leaves))
