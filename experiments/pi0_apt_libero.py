r"""APT on π0 for LIBERO at full size (PaliGemma 3B + Gemma-300M expert), with the paper's hyperparameters.

  # Stage 1 (VA prior; VLM frozen, language masked) from the π0 base checkpoint:
  python -m apt_jax.train --config experiments/pi0_apt_libero.py:stage1 --workdir $W/s1 \
      --config.data.datasets... (see configs.libero_data) --config.weight_loader.path=$PI0_BASE/params
  # Stage 2 (VLA likelihood; gated fusion layers added, prior restored):
  python -m apt_jax.train --config experiments/pi0_apt_libero.py:stage2 --workdir $W/s2 --config.init_from=$W/s1

Hardware: TPU v5p-64 or 8×H100 (FSDP over 8 devices: `--config.mesh.fsdp_devices=8`). Check memory first with
  python -m apt_jax.tools.aot_check --config experiments/pi0_apt_libero.py:stage1
Recipe (paper §2): AdamW lr 1e-4, wd 1e-2 (none on biases, norms, embeddings), clip 1.0, constant after a 10k-step
warmup, batch 256, 100k steps per stage; EMA off. Expected (paper Table 1, LIBERO-PRO avg over position and task
perturbations): APT 19%, APT with VLM fine-tuning (`--config.model.kwargs.vlm_trainable=True`) 27%, vs π0 0%.
"""

from apt_jax import configs


def get_config(arg=None):
  stage = configs.parse_stage(arg)
  c = configs.base_config()
  c.name = f"pi0_apt_libero_{arg or 'stage1'}"
  c.model.kwargs.update(dict(apt_stage=stage, **configs.PALIGEMMA_3B, action_expert_variant="gemma_300m",
                             action_horizon=50, fusion_gate="tanh", vlm_lr_multiplier=0.1))
  c.weight_loader = configs.stage_weight_loader(stage, "openpi", "/checkpoints/pi0_base/params")
  return configs.paper_recipe(c)
