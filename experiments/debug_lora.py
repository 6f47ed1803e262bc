r"""Debug recipe for LoRA: experiments/debug.py's tiny π0 with LoRA adapters, on CPU in about a minute.

  # openpi's low-memory fine-tune at debug size: LoRA on both Gemmas, their weights frozen.
  python -m apt_jax.train --config experiments/debug_lora.py:joint --workdir /tmp/debug_lora
  python -m apt_jax.export --checkpoint /tmp/debug_lora/checkpoints/300 --out /tmp/debug_lora_merged --merge_lora
  # APT Stage 2 with VLM LoRA (the paper's VLM fine-tuning option), from a debug Stage 1 run:
  python -m apt_jax.train --config experiments/debug.py:stage1 --workdir /tmp/debug_s1
  python -m apt_jax.train --config experiments/debug_lora.py:stage2 --workdir /tmp/debug_s2_lora \
      --config.init_from=/tmp/debug_s1

Adapters: rank 4, α 4 on the VLM, rank 8, α 8 on the expert (joint; the expert trains in full in Stage 2).
Expected: the loss falls as in experiments/debug.py; the merged export loads as plain π0 and samples what the LoRA
checkpoint samples.
"""

from apt_jax import configs


def get_config(arg=None):
  arg = arg or "joint"
  if arg not in ("joint", "stage2"):
    raise ValueError(f"Config arg {arg!r}: expected joint or stage2")
  c = configs.load(configs.REPO_ROOT / "experiments" / "debug.py", arg)
  c.name = f"debug_lora_{arg}"
  kw = c.model.kwargs
  kw.paligemma_variant = dict(kw.paligemma_variant.to_dict(), lora_rank=4, lora_alpha=4.0)
  if arg == "joint":
    kw.action_expert_variant = dict(kw.action_expert_variant.to_dict(), lora_rank=8, lora_alpha=8.0)
  else:
    kw.vlm_lr_multiplier = 0.1
  return c
