"""Block remat of the non-π heads: every block of the GR00T DiT, its VL adapter and language blocks, and every APT
expert layer is recomputed in the backward under the config's remat policy, and that changes no number.

Why it matters: without it a full-size GR00T-style Stage 2 step held every adapter layer's float32 attention logits
for the backward, 57 GiB per chip on a v4-8 at batch 256 (27.5 with it; README, What fits where)."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from heads_common import ACTIONS
from heads_common import config
from heads_common import grads
from heads_common import make_obs
from heads_common import perturb
from jax.extend import core as jcore

from apt_jax.models import apt_expert
from apt_jax.models import gr00t


def _count_primitives(jaxpr, counts):
  for eqn in jaxpr.eqns:
    counts[eqn.primitive.name] += 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(sub, jcore.ClosedJaxpr):
          _count_primitives(sub.jaxpr, counts)
        elif isinstance(sub, jcore.Jaxpr):
          _count_primitives(sub, counts)
  return counts


def _loss_primitives(cfg):
  model = cfg.create(jax.random.key(0))
  obs = make_obs()

  def loss(params):
    return jnp.mean(model.replace(params=params).compute_loss(jax.random.key(1), obs, ACTIONS))

  return _count_primitives(jax.make_jaxpr(loss)(model.params).jaxpr, collections.Counter())


def _head_blocks(cfg) -> int:
  """Blocks the head itself stacks, from its variant (hand count; each is one remat)."""
  if isinstance(cfg, gr00t.Gr00tConfig):
    d = cfg.dit_variant
    return d.adapter_depth + d.depth + (d.depth // 2 if cfg.apt_stage == "stage2" else 0)
  assert isinstance(cfg, apt_expert.AptExpertConfig)
  return cfg.num_layers


@pytest.mark.parametrize("head", ["gr00t", "apt_expert"])
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_every_head_block_is_rematerialised(head, stage):
  cfg = config(head, stage, remat_policy="nothing_saveable")
  counts = _loss_primitives(cfg)
  assert _loss_primitives(config(head, stage))["remat2"] == 0  # remat_policy "none": nothing recomputed
  # One remat per head block, plus one per scan body (SigLIP's and the VLM's layers, remat'd inside their scans).
  assert counts["remat2"] == _head_blocks(cfg) + counts["scan"]


@pytest.mark.parametrize("head", ["gr00t", "apt_expert"])
def test_block_remat_changes_no_loss_or_gradient(head):
  models = {p: perturb(config(head, "stage2", remat_policy=p).create(jax.random.key(0)))
            for p in ("none", "nothing_saveable")}
  g0, g1 = grads(models["none"]), grads(models["nothing_saveable"])
  assert g0.keys() == g1.keys()  # remat keeps the param names: checkpoints load either way
  for key in g0:
    np.testing.assert_allclose(np.asarray(g1[key]), np.asarray(g0[key]), rtol=2e-5, atol=1e-6, err_msg=key)


def test_unknown_remat_policy_names_it():
  with pytest.raises(ValueError, match="remat_policy 'dots_with_no_batch_dims'"):
    config("gr00t", remat_policy="dots_with_no_batch_dims").create(jax.random.key(0))
