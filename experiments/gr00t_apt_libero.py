r"""APT on the GR00T-style head for LIBERO at full size: PaliGemma 3B (gemma_2b + So400m/14) + GR00T N1.5's DiT.

  # Stage 1 (VA prior: cross-attention to vision tokens only, VLM frozen), VLM from PaliGemma 3B:
  python -m apt_jax.train --config experiments/gr00t_apt_libero.py:stage1 --workdir $W/s1 \
      --config.weight_loader.path=$CKPT/paligemma-3b-pt-224.npz
  # Stage 2 (gated language cross-attention blocks added; Stage 1 restored, equal to it at init):
  python -m apt_jax.train --config experiments/gr00t_apt_libero.py:stage2 --workdir $W/s2 --config.init_from=$W/s1
  # One-stage GR00T baseline (VLM frozen as in N1.5):
  python -m apt_jax.train --config experiments/gr00t_apt_libero.py:joint --workdir $W/joint \
      --config.model.kwargs.vlm_trainable=False

Model: DiT 32 heads x 48 = 1536 wide, 16 blocks (cross/self alternating), AdaLN, 32 future tokens, VL LayerNorm +
4-layer VL self-attention adapter; H = 16 (GR00T's LIBERO chunk), 4 Euler steps; 762M head params (1.04B in Stage 2).
VLM layer: the last of gemma_2b's 18 (`vlm_layer=18`), as the APT paper's GR00T-style port ("conditions only on the
final VLM layer"). GR00T N1.5 itself reads layer 12 of 28 (≈0.43 depth); its proportional choice here is
`--config.model.kwargs.vlm_layer=8`.
Hardware: 8×H100 or TPU v5p-64 (FSDP: `--config.mesh.fsdp_devices=8`); check memory first with
  python -m apt_jax.tools.aot_check --config experiments/gr00t_apt_libero.py:stage1
Recipe: the APT paper's (§2: AdamW 1e-4, wd 1e-2 sparing biases/norms/embeddings, clip 1.0, constant after 10k
warmup, batch 256, 100k steps per stage). GR00T's own LIBERO fine-tune uses batch 128 for 20k-60k steps.
Expected: not reported numerically; the paper's Fig. 4 shows the largest 2-stage gains for the GR00T style.
"""

from apt_jax import configs


def get_config(arg=None):
  stage = configs.parse_stage(arg)
  c = configs.base_config()
  c.name = f"gr00t_apt_libero_{arg or 'stage1'}"
  c.model.head = "gr00t"
  c.model.kwargs.update(dict(apt_stage=stage, **configs.PALIGEMMA_3B, dit_variant="n1.5", vlm_layer=18,
                             action_horizon=16, objective="flow"))
  # As experiments/apt_expert_libero.py: the VLM from the PaliGemma 3B npz, the head from scratch.
  c.weight_loader = configs.stage_weight_loader(stage, "paligemma_npz", "/checkpoints/paligemma-3b-pt-224.npz")
  return configs.paper_recipe(c)
