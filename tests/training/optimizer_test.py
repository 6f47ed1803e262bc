"""Optimizer masks on every head's real parameter tree at full size (jax.eval_shape: nothing is allocated).

Weight decay: one rule for all heads, checked against a hand-made table of leaf names. Knowledge insulation: the VLM
leaves the optimizer (no Adam state, no weight decay), measured in optimizer-state bytes.
"""

import jax
import numpy as np
import pytest

from apt_jax import configs
from apt_jax import optimizer as _optimizer
from apt_jax import sharding as _sharding
from apt_jax import train
from apt_jax import tree as tree_lib
from apt_jax.models import apt_expert
from apt_jax.models import gr00t
from apt_jax.models import pi0

# The paper's recipe, by leaf name: matmul weights decay; gates, norms, biases, embeddings and learned tokens do not.
DECAYS = {"kernel", "w", "gating_einsum", "linear"}
NO_DECAY = {"bias", "scale", "input_embedding", "pos_embedding", "position_embedding", "future_tokens",
            "gate", "attn_gate", "ff_gate", "fusion_open"}
# PaliGemma at full size, counted by hand in tests/heads/full_size_test.py (Gemma 2B + SigLIP So400m/14 at 224 px).
VLM_PARAMS = 2_508_531_712 + 414_803_696

HEADS = {
    "pi0 stage2": pi0.Pi0Config(apt_stage="stage2"),
    "gr00t stage2": gr00t.Gr00tConfig(apt_stage="stage2"),
    "apt_expert stage2": apt_expert.AptExpertConfig(apt_stage="stage2"),
}


@pytest.mark.parametrize("head", list(HEADS))
def test_weight_decay_spares_every_gate_norm_bias_and_embedding(head):
  # The old rule (a regex ending in `/gate`) decayed GR00T's `lang_blocks_*/attn_gate` / `ff_gate` and the APT
  # expert's top-level `gate` and `layer_*/fusion_open`.
  flat = tree_lib.flatten(HEADS[head].abstract_params())
  mask = tree_lib.flatten(_optimizer.decay_mask(tree_lib.unflatten(flat)))
  names = {k: k.rsplit("/", 1)[-1] for k in flat}
  assert set(names.values()) <= DECAYS | NO_DECAY, set(names.values()) - DECAYS - NO_DECAY  # a new kind of param
  wrong = [k for k, decays in mask.items() if decays != (names[k] in DECAYS)]
  assert not wrong, wrong[:10]
  gates = {"pi0 stage2": ["PaliGemma/llm/layers/fusion_1/gate"],
           "gr00t stage2": ["lang_blocks_0/attn_gate", "lang_blocks_7/ff_gate"],
           "apt_expert stage2": ["gate", "layer_0/fusion_open", "layer_18/fusion_open"]}[head]
  assert all(k in mask and not mask[k] for k in gates), gates
  # decay_all (openpi's AdamW) decays everything.
  assert all(jax.tree.leaves(_optimizer.decay_mask(tree_lib.unflatten(flat), decay_all=True)))


def _abstract_setup(**model_kwargs) -> train.Setup:
  config = configs.base_config()
  config.model.kwargs = dict(model_kwargs)
  config.data = configs.data_block(kind="fake")
  config = configs.finalize(config)
  return train.make_setup(config, configs.model_config(config), _sharding.make_mesh(1, devices=jax.devices()[:1]))


def _nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _size(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_knowledge_insulation_keeps_the_vlm_out_of_the_optimizer():
  """π0 at full size, trained jointly: with knowledge insulation (and no VL co-training loss) the VLM gets no
  gradient, so it gets no Adam state and no weight decay. Before the fix it carried ~23 GB of Adam moments."""
  joint, insulated = _abstract_setup(), _abstract_setup(knowledge_insulation=True)
  total = _size(joint.abstract_params())
  assert _size(joint.abstract_state.params) == total and not jax.tree.leaves(joint.abstract_state.frozen)
  assert _size(insulated.abstract_state.frozen) == VLM_PARAMS
  assert _size(insulated.abstract_state.params) == total - VLM_PARAMS
  # Adam: a float32 first and second moment per trainable param, plus scalar counters.
  joint_bytes, insulated_bytes = _nbytes(joint.abstract_state.opt_state), _nbytes(insulated.abstract_state.opt_state)
  assert 0 <= joint_bytes - 8 * total < 1024 and 0 <= insulated_bytes - 8 * (total - VLM_PARAMS) < 1024
  print(f"pi0 optimizer state: {joint_bytes / 1e9:.2f} GB joint, {insulated_bytes / 1e9:.2f} GB with knowledge "
        f"insulation ({(joint_bytes - insulated_bytes) / 1e9:.2f} GB saved)")
  # With a VL co-training loss the insulated VLM does get a gradient: it stays in the optimizer.
  is_frozen = _optimizer.frozen_filter(pi0.Pi0Config(knowledge_insulation=True), vl_cotrain=True)
  assert not any(is_frozen(k) for k in tree_lib.flatten(joint.abstract_params()))
