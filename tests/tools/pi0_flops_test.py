"""The analytic π0 FLOP count: a hand count on a toy size, and the compiled programs' matmuls (hlo_flops)."""

import jax
import jax.numpy as jnp
import pytest

from apt_jax import optimizer as _optimizer
from apt_jax.models import pi0
from apt_jax.tools import hlo_flops
from apt_jax.tools import pi0_flops

# Two Gemma layers: XLA removes a scan of length 1 and simplifies the lone layer's matmuls.
GEMMA = dict(depth=2, num_heads=2, num_kv_heads=1, head_dim=4)
TOY = dict(image_keys=("base_0_rgb",), image_resolution=(28, 28), action_dim=3, action_horizon=2, max_token_len=3,
           vocab_size=32, dtype="float32", siglip_variant=dict(width=8, depth=1, mlp_dim=16, num_heads=2),
           paligemma_variant=dict(width=16, mlp_dim=32, **GEMMA),
           action_expert_variant=dict(width=8, mlp_dim=16, **GEMMA))


def test_hand_count_joint_and_stage1():
  # SigLIP, 4 patches of 14x14x3, width 8: patch embedding 2·4·588·8 = 37632; QKV + out 4·2·4·8·8 = 2048;
  # attention 2·2·4·4·8 = 512; MLP 2·2·4·8·16 = 2048; head to the VLM width 2·4·8·16 = 1024.
  siglip = 37632 + 2048 + 512 + 2048 + 1024
  # Joint: prefix 4 + 3 prompt = 7 tokens, suffix 1 + 2 = 3, one pass over 10 keys. VLM layer (width 16, heads 2x4,
  # one kv head, MLP 32): q, kv and out 3·2·7·16·8 = 5376, MLP 3·2·7·16·32 = 21504, attention 2·2·7·10·8 = 2240.
  prefix = 2 * (5376 + 21504 + 2240)
  # Expert layer (width 8, MLP 16): q, kv, out 3·2·3·8·8 = 1152, MLP 3·2·3·8·16 = 2304, attention 2·2·3·10·8 = 960;
  # once: state 2·3·8 = 48, actions 2·2·3·8 = 96, time MLP 2·2·16·8 + 2·2·8·8 = 768, output 2·2·8·3 = 96.
  suffix = 2 * (1152 + 2304 + 960) + 48 + 96 + 768 + 96
  joint = pi0_flops.train_step_flops(pi0.Pi0Config(**TOY, remat_policy="none"), batch_size=1)
  assert (joint["forward/siglip"], joint["forward/prefix"], joint["forward/suffix"]) == (siglip, prefix, suffix)
  # Backward: twice the forward, less the input gradients of the patch embedding and the state/action projections.
  assert joint["model"] == 3 * (siglip + prefix + suffix) - 37632 - 48 - 96 == 296256

  # Stage 1: no prompt (4 prefix tokens), the frozen VLM runs once over 4 keys, the expert over 4 + 3 keys.
  stage1 = pi0_flops.train_step_flops(pi0.Pi0Config(**TOY, apt_stage="stage1"), batch_size=2)
  prefix1 = 2 * (3 * 2 * 4 * 16 * 8 + 3 * 2 * 4 * 16 * 32 + 2 * 2 * 4 * 4 * 8)
  suffix1 = suffix - 2 * (2 * 2 * 3 * 10 * 8 - 2 * 2 * 3 * 7 * 8)
  # Backward of the suffix only, without the state/action input gradients and the cached keys' and values' gradients
  # (2·2·3·4·8 a layer); nothing_saveable recomputes each expert layer but its last MLP projection (2·3·16·8).
  backward1 = 2 * suffix1 - 48 - 96 - 2 * (2 * 2 * 3 * 4 * 8)
  remat1 = 2 * (1152 + 2304 + 2 * 2 * 3 * 7 * 8 - 2 * 3 * 16 * 8)
  assert stage1["model"] == 2 * (siglip + prefix1 + suffix1 + backward1)
  assert stage1["total"] == stage1["model"] + 2 * remat1


def _compiled_step_flops(config, batch_size=2):
  abstract = config.abstract_params()
  trainable, frozen = _optimizer.partition(abstract, config.freeze_filter)
  obs, act = config.inputs_spec(batch_size=batch_size)

  def loss_and_grad(trainable, frozen, obs, act):
    loss = lambda p: jnp.mean(pi0.Pi0(config=config, params=_optimizer.combine(p, frozen)).compute_loss(
        jax.random.key(0), obs, act))
    return jax.value_and_grad(loss)(trainable)
  return hlo_flops.count(jax.jit(loss_and_grad).lower(trainable, frozen, obs, act).compile().as_text()).flops


@pytest.mark.parametrize("remat_policy", ["none", "nothing_saveable"])
def test_compiled_joint_step_does_exactly_the_analytic_work(remat_policy):
  config = pi0.Pi0Config(**TOY, remat_policy=remat_policy)
  assert _compiled_step_flops(config) == pi0_flops.train_step_flops(config, 2)["total"]


def test_compiled_stage2_step_also_computes_gradients_for_the_frozen_prefix_keys():
  """The one known excess: the expert's attention differentiates its keys/values as one array, cache included, so
  XLA computes (then drops) dK and dV for the P frozen prefix keys, in the self- and the fusion attention."""
  config = pi0.Pi0Config(**TOY, apt_stage="stage2")
  e, p, a, batch = config.expert_config, 4 + 3, 3, 2
  # dK and dV over the P prefix keys: 2·2·A·P·N·H per attention, two attentions per layer.
  wasted = batch * e.depth * 2 * (2 * 2 * a * p * e.num_heads * e.head_dim)
  assert _compiled_step_flops(config, batch) == pi0_flops.train_step_flops(config, batch)["total"] + wasted
