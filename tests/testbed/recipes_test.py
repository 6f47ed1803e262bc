"""The recipe grid's model options: the Stage 2 ablation changes only its own mask; Stage 1 is shared."""

from apt_jax import configs
from apt_jax.models import pi0
from apt_jax.testbed import experiment as E

DEMO = configs.load(configs.REPO_ROOT / "experiments" / "testbed_demo.py")


def _kw(stage, recipe):
  return E.recipe_model_kwargs(DEMO, 256, stage, recipe)


def test_stage2_options_per_recipe():
  assert DEMO.size["stage2_prefix_mask"] == "prefix_lm" and DEMO.size["fusion_gate"] == "tanh_zero_proj"
  base, ablation = _kw("stage2", "apt_frozen"), _kw("stage2", "apt_frozen_causal")
  assert base["stage2_prefix_mask"] == "prefix_lm" and ablation["stage2_prefix_mask"] == "causal"
  assert {k: v for k, v in base.items() if k != "stage2_prefix_mask"} == \
      {k: v for k, v in ablation.items() if k != "stage2_prefix_mask"}
  # One Stage 1 for every two-stage recipe of a seed (run_recipe_seed caches it): its options may not differ.
  assert _kw("stage1", "apt_frozen") == _kw("stage1", "apt_frozen_causal") == _kw("stage1", "apt_vlm_ft")
  for recipe in E.RECIPES:   # every recipe's options make a valid model config
    stage = "stage2" if E.RECIPES[recipe]["two_stage"] else "none"
    pi0.Pi0Config(**_kw(stage, recipe))
