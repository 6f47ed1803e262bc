r"""openpi's low-memory π0 LIBERO fine-tuning (`pi0_libero_low_mem_finetune`): LoRA on both Gemmas.

  python -m apt_jax.train --config experiments/pi0_libero_low_mem_finetune.py --workdir $W/pi0_lora \
      --config.weight_loader.path=$PI0_BASE/params
  # Fold the adapters into the weights: a plain π0 checkpoint (openpi's `pi0_libero` tree).
  python -m apt_jax.export --checkpoint $W/pi0_lora/checkpoints/30000 --out $W/pi0_merged --merge_lora

Model: π0 with `gemma_2b_lora` (rank 16, α 16) and `gemma_300m_lora` (rank 32, α 32): adapters on every attention
einsum and MLP weight of both Gemmas. Frozen (openpi's freeze filter): the Gemma weights of both experts (17 arrays,
no optimizer state); trained: the adapters, SigLIP and the projections. Otherwise openpi's `pi0_libero` (LIBERO data
with delta actions and z-score norm, batch 32, 30k steps, warmup-cosine 1k -> 2.5e-5 -> 2.5e-6), EMA off.
Hardware: one 24 GB GPU in openpi's claim (> 22.5 GB); memory per device: python -m apt_jax.tools.aot_check --config
experiments/pi0_libero_low_mem_finetune.py --config.mesh.fsdp_devices=1.
"""

from apt_jax import configs


def get_config(arg=None):
  del arg
  c = configs.load(configs.REPO_ROOT / "experiments" / "pi0_libero.py")
  c.name = "pi0_libero_low_mem_finetune"
  c.model.kwargs.update(dict(paligemma_variant="gemma_2b_lora", action_expert_variant="gemma_300m_lora"))
  c.ema_decay = None
  c.mesh.fsdp_devices = 1
  return c
