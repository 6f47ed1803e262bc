"""The GR00T-style and APT-expert heads in the testbed protocol: every recipe of each head builds its model, Stage 1
is shared by a head's recipes, the two APT-expert inits differ only in stage2_init, a recipe of another head is
refused by name; the VLM gate probes the layers each head reads, with the mask it runs the VLM with; a reused VLM
must come from the same VLM recipe."""

import json

import jax
import numpy as np
import pytest

from apt_jax.models import registry
from apt_jax.testbed import experiment as E
from apt_jax.testbed import probes
from experiments import testbed_heads


@pytest.mark.parametrize("head", testbed_heads.HEADS)
def test_every_recipe_of_the_head_builds_and_shares_stage1(head):
  cfg = testbed_heads.get_config(f"shortcut:{head}")
  assert cfg.recipes == E.recipes_of(head)
  stage1 = registry.create_config(head, **E.model_kw(cfg, 256, apt_stage="stage1"))
  assert not stage1.vlm_trainable
  for name in cfg.recipes:
    r = E.RECIPES[name]
    mc = registry.create_config(head, **E.model_kw(cfg, 256, apt_stage="stage2" if r.fusion else "none", recipe=r))
    assert registry.head_name(mc) == head
    assert mc.vlm_trainable == (r.vlm == "tuned") and (not mc.vlm_trainable or mc.vlm_lr_multiplier == r.vlm_lr)
    assert mc.stage2_prefix_mask == "prefix_lm" and not mc.language_block   # the VLM's pretraining mask
    if r.stage1:   # the Stage 2 model takes every Stage 1 param (it raises, naming them, otherwise) and adds some
      s1 = stage1.abstract_params()
      _, restored, new = mc.stage2_partial_params(s1, mc.abstract_params())
      assert len(restored) == len(jax.tree.leaves(s1)) and new


def test_apt_expert_inits_differ_only_in_stage2_init():
  cfg = testbed_heads.get_config("shortcut:apt_expert")
  kw = {n: E.model_kw(cfg, 256, apt_stage="stage2", recipe=E.RECIPES[n])
        for n in ("aptx_2stage_frozen", "aptx_paper_2stage_frozen")}
  assert kw["aptx_2stage_frozen"]["stage2_init"] == "preserving" and kw["aptx_paper_2stage_frozen"]["stage2_init"] \
      == "paper"
  assert {k: v for k, v in kw["aptx_2stage_frozen"].items() if k != "stage2_init"} == \
      {k: v for k, v in kw["aptx_paper_2stage_frozen"].items() if k != "stage2_init"}
  assert kw["aptx_2stage_frozen"]["objective"] == "ddim" and cfg.eval.flow_steps == 20


def test_a_recipe_of_another_head_is_refused(tmp_path):
  cfg = testbed_heads.get_config("shortcut:gr00t")
  with pytest.raises(ValueError, match=r"recipe 'aptx_joint' trains head 'apt_expert'.*config\.head = 'gr00t'"):
    E.run(_with(cfg, recipes=("aptx_joint",)), tmp_path)
  with pytest.raises(ValueError, match=r"config\.head = 'gr00t'"):
    E.model_kw(cfg, 256, recipe=E.RECIPES["pi0_joint"])


def _with(cfg, **kw):
  c = cfg.copy_and_resolve_references()
  c.unlock()
  c.update(kw)
  return c


def _tiny(head):
  cfg = E.base_config()
  cfg.head = head
  cfg.size.update(vlm_width=16, depth=2, num_heads=2, num_kv_heads=1, head_dim=8, siglip_width=16)
  cfg.head_size.gr00t.dit_variant.adapter_num_heads = 2
  return registry.create_config(head, **E.model_kw(cfg, 64, apt_stage="stage2", recipe=E.Recipe(
      "gate", head=head, fusion=True, vlm="frozen")))


def _feats(mc, params, tokens):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (2, *mc.image_resolution, 3)).astype(np.uint8)
  return probes.features(params, mc, images, tokens, np.ones_like(tokens, bool))[0]


@pytest.mark.parametrize("head, reads_last", [("pi0", False), ("gr00t", True), ("apt_expert", True)])
def test_gate_probes_the_layers_the_head_reads(head, reads_last):
  """π's expert reads every layer's input (never the last layer's output); GR00T reads the last layer (the paper's
  port); the APT expert's taps end at the last layer. So changing the last layer's weights moves the probed features
  exactly for the heads that read its output. Image tokens see the prompt (prefix-LM, as the VLM was pretrained)."""
  mc = _tiny(head)
  assert probes.read_layers(mc) == {"pi0": (0, 1), "gr00t": (2,), "apt_expert": (1, 2)}[head]
  params = jax.tree.map(np.asarray, jax.device_get(mc.create(jax.random.key(0)).params["PaliGemma"]))
  tokens = np.tile(np.arange(1, 9), (2, 1))
  base = _feats(mc, params, tokens)
  moved = jax.tree.map(lambda x: x, params)
  w = moved["llm"]["layers"]["mlp"]["linear"]                    # [L, F, D], layers stacked
  moved["llm"]["layers"]["mlp"]["linear"] = np.concatenate([w[:-1], w[-1:] + 0.5], 0)
  assert (np.abs(_feats(mc, moved, tokens) - base).max() > 1e-3) == reads_last
  other_prompt = _feats(mc, params, tokens + 20)
  assert np.abs(other_prompt - base).max() > 1e-3               # image-token features depend on the prompt


def test_reused_vlm_must_match_the_recipe(tmp_path):
  cfg = testbed_heads.get_config("shortcut:gr00t")
  cfg.vlm.reuse_from = str(tmp_path / "pi")
  with pytest.raises(FileNotFoundError, match="no gated VLM for seed 3"):
    E.pretrain_vlm(cfg, 3, tmp_path / "run", log=print)
  src = tmp_path / "pi" / "vlm" / "s3"
  src.mkdir(parents=True)
  (src / "vlm.json").write_text(json.dumps(dict(attempt=0, recipe=dict(E.vlm_recipe(cfg), steps=7))))
  with pytest.raises(ValueError, match=r"another VLM recipe \(config.vlm keys \['steps'\] differ\)"):
    E.pretrain_vlm(cfg, 3, tmp_path / "run", log=print)
