"""Full-size shapes without allocating (jax.eval_shape of `create`), with parameter counts computed by hand.

VLM (shared by every head): PaliGemma = gemma_2b (width 2048, 18 layers, MLP 16384, 8 heads, 1 KV head, head dim
256, vocab 257 152) + SigLIP So400m/14 at 224 px (256 patches).
  Gemma   embedder 257152·2048 = 526 647 296; per layer q 8·2048·256 + kv 2·2048·256 + out 8·256·2048 + MLP
          3·2048·16384 + 2 norms·2048 = 110 104 576 (x18 = 1 981 882 368); final norm 2048 => 2 508 531 712.
  SigLIP  patch conv 14·14·3·1152 + 1152 = 678 528; position 256·1152 = 294 912; per block 2 LayerNorms 4608 +
          attention 4·(1152² + 1152) = 5 313 024 + MLP 2·1152·4304 + 4304 + 1152 = 9 921 872 => 15 239 504
          (x27 = 411 466 608); encoder norm 2304; head 1152·2048 + 2048 = 2 361 344 => 414 803 696.
"""

import numpy as np
import param_counts
import pytest

from apt_jax import tree as tree_lib
from apt_jax.models import apt_expert
from apt_jax.models import gr00t
from apt_jax.models import pi0

GEMMA_2B = 2_508_531_712
SO400M_224 = 414_803_696


def _counts(config):
  flat = tree_lib.flatten(config.abstract_params())
  size = lambda pred: sum(int(np.prod(v.shape)) for k, v in flat.items() if pred(k))
  return (size(lambda k: k.startswith("PaliGemma/llm/")), size(lambda k: k.startswith("PaliGemma/img/")),
          size(lambda k: not k.startswith("PaliGemma/")), flat)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_gr00t_n15_full_size(stage):
  config = gr00t.Gr00tConfig(apt_stage=stage)
  llm, img, head, flat = _counts(config)
  assert (llm, img) == (GEMMA_2B, SO400M_224)
  # N1.5 DiT at H=16, AD=32 (by hand): VL LayerNorm 4096; adapter 4·(8192 + 4·(2048²+2048) + 2048·8192·2 + 8192
  # + 2048) = 201 433 088; state MLP 1 608 192; action encoder 7 131 648; position + 32 future tokens 73 728;
  # timestep encoder 2 755 584; FFN 1536·6144 + 6144 + 6144·1536 + 1536 = 18 882 048, so 8 cross blocks of
  # 34 619 904 + 8 self blocks of 33 047 040 = 541 335 552; output
  # (proj_out_1, proj_out_2, decoder) 7 377 952 => 761 719 840. Stage 2 adds 8 language blocks of 34 619 906
  # (a cross block + 2 gates).
  want = 761_719_840 + (8 * 34_619_906 if stage == "stage2" else 0)
  assert head == want == param_counts.gr00t_head(config)
  assert flat["blocks_0/attn1/to_k/kernel"].shape == (2048, 1536)  # cross-attends to the 2048-d VL features
  assert flat["blocks_1/attn1/to_k/kernel"].shape == (1536, 1536)
  assert flat["vl_adapter_3/attn1/to_q/kernel"].shape == (2048, 2048)
  print(f"gr00t {stage}: VLM {llm + img:,} + head {head:,} = {llm + img + head:,}")


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_apt_expert_base_full_size(stage):
  config = apt_expert.AptExpertConfig(apt_stage=stage)
  llm, img, head, flat = _counts(config)
  assert (llm, img) == (GEMMA_2B, SO400M_224)
  # Base expert (W 768, 12 heads, N = 20), AD = 32 (by hand): one layer = QKV 768·2304 + 2304, out 768² + 768,
  # FFN 768·1536 + 1536 + 1536·768 + 768, 2 RMSNorm scales 1536, 2 AdaRMSNorm Dense(768 -> 2304) 3 543 552,
  # qk-norm 128 => 8 269 184 (the paper's 82.67M / 10 layers ≈ 8.27M). Projections 2048 -> 768: 1 573 632 each
  # (vl_in + one per used tap: 10 in Stage 1, 20 in Stage 2). Gate 20·768; time MLP 1 181 184; state/action
  # MLPs 2·617 472; final norm + head 25 376. Stage 2: 10 new layers + their fusion_open (768 each).
  layers = 10 * 8_269_184 if stage == "stage1" else 20 * 8_269_184 + 10 * 768
  context = (11 if stage == "stage1" else 21) * 1_573_632
  want = layers + context + 15_360 + 1_181_184 + 2 * 617_472 + 25_376
  assert head == want == param_counts.apt_expert_head(config)
  assert sum(k.endswith("/qkv/kernel") for k in flat) == (10 if stage == "stage1" else 20)
  assert flat["gate"].shape == (20, 768) and flat["layer_0/qkv/kernel"].shape == (768, 2304)
  print(f"apt_expert {stage}: VLM {llm + img:,} + head {head:,} = {llm + img + head:,}")


def test_pi0_ddim_has_the_same_params_as_flow():
  flow = tree_lib.shapes(pi0.Pi0Config(apt_stage="stage1").abstract_params())
  ddim = tree_lib.shapes(pi0.Pi0Config(apt_stage="stage1", objective="ddim").abstract_params())
  assert flow == ddim
  assert sum(int(np.prod(s)) for k, s in flow.items() if k.startswith("PaliGemma/llm/layers/")
             and not any(p.endswith("_1") for p in k.split("/"))) == 18 * 110_104_576


def test_stage2_expansion_at_full_size_without_allocation():
  """The 2i+1 remapping type-checks on abstract trees (ShapeDtypeStructs) of the full-size model."""
  s1 = apt_expert.AptExpertConfig(apt_stage="stage1").abstract_params()
  s2_config = apt_expert.AptExpertConfig(apt_stage="stage2", stage2_init="paper")
  _, restored, new = s2_config.stage2_partial_params(s1, s2_config.abstract_params())
  assert len([k for k in new if k.endswith("/qkv/kernel")]) == 10
  assert "layer_19/qkv/kernel" in restored and "layer_18/qkv/kernel" in new
