r"""The APT paper's own expert (layer-wise gated fusion) for LIBERO at full size, on PaliGemma 3B.

  # Stage 1 (VA prior: 10 layers, dilated masks, odd VLM taps; VLM frozen), VLM from PaliGemma 3B:
  python -m apt_jax.train --config experiments/apt_expert_libero.py:stage1 --workdir $W/s1 \
      --config.weight_loader.path=$CKPT/paligemma-3b-pt-224.npz
  # Stage 2 (20 layers: Stage 1 layer i -> 2i+1, new language layers at the even places):
  python -m apt_jax.train --config experiments/apt_expert_libero.py:stage2 --workdir $W/s2 --config.init_from=$W/s1
  #   add --config.model.kwargs.stage2_init=paper for random new layers (the paper's fusion at once)

Model: base expert (width 768, 12 heads, N = 20 layers, 10 in Stage 1; 102M / 201M head params), Ta = 32,
DDIM (T = 100, squaredcos_cap_v2, ε-prediction, 20 sampling steps), L1 weights 30 / 10 / 10 on LIBERO's
translation (3) / rotation (3, axis-angle instead of the paper's rot6d) / gripper (1) dims; padding dims unweighted.
VLM taps (indices into [embeddings, gemma_2b layers 1..18]): round((j+1)·18/20), j = 0..19 =
(1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 14, 15, 16, 17, 18); Stage 1 fuses the odd j. The paper taps
Qwen3-VL layers 0..19 of 28 (appendix) or every 3rd layer (released code); 20 taps over 18 layers repeat two.
Left out: PRoPE camera-pose encoding (no extrinsics in the LIBERO RLDS data), end-effector position encodings.
Hardware: 8×H100 or TPU v5p-64 (`--config.mesh.fsdp_devices=8`); check memory first with
  python -m apt_jax.tools.aot_check --config experiments/apt_expert_libero.py:stage1
Recipe (paper §2): AdamW 1e-4, wd 1e-2 (none on biases, norms, embeddings), clip 1.0, constant after a 10k-step
warmup, batch 256, 100k steps per stage, EMA off. Expected (paper Table 1, LIBERO-PRO, Qwen3-VL backbone): APT 19%,
with VLM fine-tuning (`--config.model.kwargs.vlm_trainable=True`) 27%.
"""

from apt_jax import configs


def get_config(arg=None):
  stage = configs.parse_stage(arg)
  c = configs.base_config()
  c.name = f"apt_expert_libero_{arg or 'stage1'}"
  c.model.head = "apt_expert"
  c.model.kwargs.update(dict(apt_stage=stage, **configs.PALIGEMMA_3B, expert_variant="base", action_horizon=32,
                             objective="ddim", loss_weights=((3, 30.0), (3, 10.0), (1, 10.0)),
                             stage2_init="preserving"))
  # The VLM from PaliGemma 3B pt-224 (big_vision npz), the head from scratch: an openpi π0 checkpoint would bring
  # π0's action expert, which this head lacks.
  c.weight_loader = configs.stage_weight_loader(stage, "paligemma_npz", "/checkpoints/paligemma-3b-pt-224.npz")
  return configs.paper_recipe(c)
