"""Knowledge insulation as π0.5 does it: under KI the expert's gradient into the VLM is exactly zero, yet one train
step changes the VLM's params through the VL co-training loss mixed into the step; without the VL sub-batch
(the stop-gradient-only ablation) the VLM does not move."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apt_jax import configs
from apt_jax import optimizer as _optimizer
from apt_jax import sharding
from apt_jax import train
from apt_jax import tree as tree_lib
from apt_jax.models import cotrain
from apt_jax.models import model as _model
from apt_jax.testbed import vla

SIZE = dict(vlm_width=16, expert_width=16, depth=1, num_heads=2, num_kv_heads=2, head_dim=8, siglip_width=16,
            siglip_depth=1, patch_size=16, action_horizon=4, max_token_len=6)


def _setup(**kw):
  c = vla.train_config(vla.model_kwargs(SIZE, vocab_size=64, **kw), steps=2, batch_size=2, lr=1e-2, seed=0)
  c.optimizer.weight_decay = 0.0          # so params move only where a gradient reaches them
  c.schedule = dict(kind="constant", peak_lr=1e-2)
  mc = configs.model_config(c)
  setup = train.make_setup(c, mc, sharding.make_mesh(1, devices=jax.devices()[:1]))
  state = train.init_train_state(setup, jax.random.key(0))
  return mc, setup, state


def _batch(with_vl):
  rng = np.random.default_rng(0)
  b = vla.make_batch(rng.integers(0, 255, (2, 80, 80, 3), np.uint8), rng.normal(size=(2, 3)),
                     rng.integers(1, 60, (2, 6)), np.ones((2, 6), bool), rng.normal(size=(2, 4, 3)))
  if with_vl:
    b["vl"] = dict(image=rng.integers(0, 255, (2, 80, 80, 3), np.uint8), tokens=rng.integers(1, 60, (2, 8)),
                   input_mask=np.ones((2, 8), bool), ar=np.arange(8)[None].repeat(2, 0) >= 4,
                   loss_mask=np.arange(8)[None].repeat(2, 0) >= 4)
  return jax.tree.map(jnp.asarray, b)


def _vlm_leaves(tree):
  return {k: v for k, v in tree_lib.flatten(tree).items() if _model.is_vlm_param(k)}


@pytest.mark.parametrize("apt_stage", ["none", "stage2"])
def test_ki_stops_expert_gradient_into_vlm_but_cotraining_moves_it(apt_stage):
  mc, setup, state = _setup(apt_stage=apt_stage, vlm_trainable=True, knowledge_insulation=True)
  batch = _batch(with_vl=True)
  assert _vlm_leaves(state.params), "the VLM must be trainable under KI"

  def action_loss(params):
    model = mc.model_class()(config=mc, params=_optimizer.combine(params, state.frozen))
    return jnp.mean(model.compute_loss(jax.random.key(1), _model.Observation.from_dict(batch), batch["actions"]))

  def vl_loss(params):
    return cotrain.vl_loss(mc.model_class()(config=mc, params=_optimizer.combine(params, state.frozen)), batch["vl"])

  g_act, g_vl = jax.grad(action_loss)(state.params), jax.grad(vl_loss)(state.params)
  assert all(not np.any(v) for v in _vlm_leaves(g_act).values())            # expert -> VLM: exactly zero
  assert any(np.any(v) for k, v in tree_lib.flatten(g_act).items() if not _model.is_vlm_param(k))
  assert any(np.any(v) for v in _vlm_leaves(g_vl).values())                 # co-training reaches the VLM

  before = jax.device_get(_vlm_leaves(state.params))
  new, metrics = train.train_step(setup.ctx, jax.random.key(2), state, batch)
  after = jax.device_get(_vlm_leaves(new.params))
  assert any(not np.array_equal(before[k], after[k]) for k in before)
  assert {"action_loss", "vl_loss"} <= set(metrics)
  np.testing.assert_allclose(metrics["loss"], metrics["action_loss"] + metrics["vl_loss"], rtol=1e-6)


def test_stop_gradient_only_ablation_leaves_the_vlm_unchanged():
  _, setup, state = _setup(apt_stage="none", vlm_trainable=True, knowledge_insulation=True)
  before = jax.device_get(_vlm_leaves(state.params))
  new, metrics = train.train_step(setup.ctx, jax.random.key(2), state, _batch(with_vl=False))
  after = jax.device_get(_vlm_leaves(new.params))
  assert all(np.array_equal(before[k], after[k]) for k in before)
  assert "vl_loss" not in metrics


def test_vl_loss_matches_a_numpy_cross_entropy():
  mc, _, state = _setup(apt_stage="none", vlm_trainable=True, knowledge_insulation=True)
  model = mc.model_class()(config=mc, params=_optimizer.combine(state.params, state.frozen))
  vl = _batch(with_vl=True)["vl"]

  def logits(module):
    return cotrain.prefix_lm_logits(module.PaliGemma.img, module.PaliGemma.llm, cotrain.to_unit_range(vl["image"]),
                                    vl["tokens"], vl["input_mask"], vl["ar"])

  lg = np.asarray(mc.module().apply({"params": model.params}, method=logits), np.float64)   # [B, L, V]
  tok, w = np.asarray(vl["tokens"]), np.asarray(vl["loss_mask"])
  logp = lg - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lg.max(-1, keepdims=True)
  # Position i predicts token i + 1, on the loss positions only.
  nll = -np.take_along_axis(logp[:, :-1], tok[:, 1:, None], -1)[..., 0]
  want = (nll * w[:, 1:]).sum() / w[:, 1:].sum()
  np.testing.assert_allclose(float(cotrain.vl_loss(model, vl)), want, rtol=1e-5)
