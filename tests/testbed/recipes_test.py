"""The recipe grid's model options: every stage of every recipe builds a valid model; the mask ablation changes only
its mask; Stage 1 is the same for every recipe (it is shared); KI and VLM options follow the protocol's table."""

from apt_jax.models import registry
from apt_jax.testbed import experiment as E

CFG = E.base_config()


def _kw(stage, recipe):
  return E.model_kw(CFG, 256, apt_stage=stage, recipe=E.RECIPES[recipe])


def test_every_recipe_stage_builds_and_stage1_is_shared():
  stage1 = {repr(registry.create_config("pi0", **E.model_kw(CFG, 256, apt_stage="stage1"))) for _ in E.RECIPES}
  assert len(stage1) == 1
  for name, r in ((n, E.RECIPES[n]) for n in E.recipes_of("pi0")):   # other heads: heads_test.py
    mc = registry.create_config("pi0", **_kw("stage2" if r.fusion else "none", name))
    assert mc.vlm_trainable == (r.vlm == "tuned") and mc.knowledge_insulation == r.ki, name
    if mc.vlm_trainable:
      assert mc.vlm_lr_multiplier == r.vlm_lr


def test_protocol_table():
  R = E.RECIPES
  assert R["pi0_joint"].vlm_lr == 1.0 and not R["pi0_joint"].stage1 and not R["pi0_joint"].ki
  assert R["ki_2stage"].ki and R["ki_2stage"].cotrain and R["ki_2stage"].stage1 == "pool" and R["ki_2stage"].fusion
  assert R["apt_vlm_ft"].vlm == "tuned" and not R["apt_vlm_ft"].ki and R["apt_vlm_ft"].vlm_lr == 0.1
  assert R["abl_ki_sg_only"].ki and not R["abl_ki_sg_only"].cotrain
  assert R["ctrl_taskonly_s1"].stage1 == "task" and R["ctrl_s1_pi0"].stage1 == "pool" and not R["ctrl_s1_pi0"].fusion
  assert R["ctrl_pi0_equal_compute"].pool_first and not R["ctrl_pi0_equal_compute"].stage1
  assert set(CFG.stats.recipes) == {"ki_2stage", "apt_vlm_ft"} and CFG.stats.baseline == "pi0_joint"


def test_mask_ablation_changes_only_its_mask():
  base, ablation = _kw("stage2", "apt_frozen"), _kw("stage2", "abl_causal_mask")
  assert base["stage2_prefix_mask"] == "prefix_lm" and ablation["stage2_prefix_mask"] == "causal"
  assert {k: v for k, v in base.items() if k != "stage2_prefix_mask"} == \
      {k: v for k, v in ablation.items() if k != "stage2_prefix_mask"}
