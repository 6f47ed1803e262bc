"""The full-size π0.5 and LoRA experiment configs build the models openpi's configs name (trees from
../shared/testdata/openpi_param_trees, through eval_shape: nothing is allocated) with openpi's / the paper's
settings."""

import pytest

from apt_jax import configs
from apt_jax import optimizer as _optimizer
from apt_jax import tree as tree_lib
from apt_jax.models import lora
from tests.models.param_trees_test import read_tree


def load(spec):
  file, _, arg = spec.partition(":")
  c = configs.load(configs.REPO_ROOT / "experiments" / file, arg or None)
  return c, configs.model_config(c)


def shapes(model_config):
  return {k: (tuple(v.shape), str(v.dtype)) for k, v in tree_lib.flatten(model_config.abstract_params()).items()}


@pytest.mark.parametrize("spec, tree", [("pi05_libero.py", "pi05_gemma_2b__gemma_300m"),
                                        ("pi0_libero_low_mem_finetune.py", "pi0_gemma_2b_lora__gemma_300m_lora")])
def test_openpi_baselines_build_openpis_trees(spec, tree):
  _, m = load(spec)
  want, fields = read_tree(tree)
  # The tree depends on the widths, not on the action horizon: compare at openpi's default horizon-free shapes.
  assert shapes(m) == want
  assert sum(m.freeze_filter(k) for k in want) == fields["frozen_by_get_freeze_filter"]


def test_pi05_libero_is_openpis():
  c, m = load("pi05_libero.py")
  assert m.pi05 and not m.discrete_state_input and not m.state_token
  assert (m.action_horizon, m.max_token_len, m.apt_stage) == (10, 200, "none")
  assert c.data.use_quantile_norm and c.data.get("delta_action_dims") is None
  assert (c.batch_size, c.num_train_steps, c.ema_decay, c.schedule.peak_lr) == (256, 30_000, 0.999, 5e-5)


def test_low_mem_finetune_trains_adapters_and_siglip_without_ema():
  c, m = load("pi0_libero_low_mem_finetune.py")
  assert (m.vlm_config.lora, m.expert_config.lora) == (lora.LoraConfig(16, 16.0), lora.LoraConfig(32, 32.0))
  assert c.ema_decay is None
  trainable, frozen = _optimizer.partition(m.abstract_params(), m.freeze_filter)
  frozen = tree_lib.flatten(frozen)
  assert frozen and all(k.startswith("PaliGemma/llm/") and not lora.is_lora_param(k) for k in frozen)
  # Adapters: 2 x (q, kv, attn_vec, gating, linear) per expert, 2 experts.
  assert sum(lora.is_lora_param(k) for k in tree_lib.flatten(trainable)) == 20


@pytest.mark.parametrize("spec", ["pi0_apt_libero.py:stage2_vlm_lora", "pi05_apt_libero.py:stage2_vlm_lora"])
def test_stage2_vlm_lora_is_the_papers(spec):
  c, m = load(spec)
  assert m.apt_stage == "stage2" and m.vlm_config.lora == lora.LoraConfig(16, 16.0) and m.expert_config.lora is None
  assert c.schedule.peak_lr * m.vlm_lr_multiplier == pytest.approx(configs.VLM_LORA_LR)
  keys = tree_lib.flatten(m.abstract_params())
  trainable = {k for k in keys if not m.freeze_filter(k)}
  assert {k for k in keys if lora.is_lora_param(k)} <= trainable
  assert "PaliGemma/llm/layers/attn/q_einsum/w" not in trainable and "PaliGemma/llm/layers/fusion_1/gate" in trainable


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_pi05_apt_adds_only_a_state_token_and_fusion_to_pi05(stage):
  _, m = load(f"pi05_apt_libero.py:{stage}")
  assert m.pi05 and m.state_token and m.apt_stage == stage
  base, _ = read_tree("pi05_gemma_2b__gemma_300m")
  got = shapes(m)
  assert base.keys() <= got.keys()
  assert all(got[k] == v for k, v in base.items())
  extra = {k for k in got.keys() - base.keys() if "/fusion_1/" not in k}
  assert extra == {"state_proj/kernel", "state_proj/bias"}
  assert any("/fusion_1/" in k for k in got) == (stage == "stage2")
