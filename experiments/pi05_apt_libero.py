r"""APT on π0.5 for LIBERO at full size (PaliGemma 3B + Gemma-300M expert with adaptive RMSNorm), the paper's recipe.

  # Stage 1 (VA prior: VLM frozen, prompt dropped) from the π0.5 base checkpoint:
  python -m apt_jax.train --config experiments/pi05_apt_libero.py:stage1 --workdir $W/s1 \
      --config.weight_loader.path=$PI05_BASE/params
  # Stage 2 (VLA likelihood; gated fusion layers added, prior restored, equal to Stage 1 at init):
  python -m apt_jax.train --config experiments/pi05_apt_libero.py:stage2 --workdir $W/s2 --config.init_from=$W/s1
  # Stage 2 with the VLM fine-tuned through LoRA (r=16, α=16 on q/k/v/o/gate/up/down, VLM lr 5e-6):
  python -m apt_jax.train --config experiments/pi05_apt_libero.py:stage2_vlm_lora --workdir $W/s2l \
      --config.init_from=$W/s1

Model: π0.5 as experiments/pi05_libero.py (action horizon 10, quantile norm, absolute actions, no discrete state in
the prompt), plus, under APT, a continuous state token (`state_proj`, new: pi05_base has none): Stage 1 drops the
prompt, and π0.5's only other state path (the discrete state in the prompt) with it, so the prior reads the state as
π0's does (pi0.Pi0Config.state_token). Stage 2 brings the prompt back through gated fusion only.
Hardware: TPU v5p-64 or 8×H100 (FSDP over 8). Memory: python -m apt_jax.tools.aot_check --config
experiments/pi05_apt_libero.py:stage1
Recipe (paper §2): AdamW lr 1e-4, wd 1e-2 (none on biases, norms, embeddings), clip 1.0, constant after a 10k-step
warmup, batch 256, 100k steps per stage; EMA off. Expected: not reported by the paper on π0.5 (its Table 1 has
π0.5 as a baseline only); the π0.5 baseline is experiments/pi05_libero.py.
"""

from apt_jax import configs


def get_config(arg=None):
  arg = arg or "stage1"
  stage = configs.parse_stage(arg.removesuffix("_vlm_lora"))
  c = configs.base_config()
  c.name = f"pi05_apt_libero_{arg}"
  c.model.kwargs.update(dict(configs.PALIGEMMA_3B, apt_stage=stage, action_expert_variant="gemma_300m", pi05=True,
                             discrete_state_input=False, action_horizon=10, max_token_len=200, fusion_gate="tanh",
                             vlm_lr_multiplier=0.1))
  c.weight_loader = configs.stage_weight_loader(stage, "openpi", "/checkpoints/pi05_base/params")
  configs.paper_recipe(c)
  c.data = configs.libero_data("/data/modified_libero_rlds", delta_action_dims=None, use_quantile_norm=True)
  return configs.vlm_lora(c) if arg.endswith("_vlm_lora") else c
