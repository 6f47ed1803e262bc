r"""openpi's π0.5 LIBERO fine-tuning recipe (`pi05_libero`), the π0.5 baseline.

  python -m apt_jax.train --config experiments/pi05_libero.py --workdir $W/pi05_libero \
      --config.weight_loader.path=$PI05_BASE/params

Model: π0.5 (`Pi0Config(pi05=True)`: time MLP into adaptive RMSNorm of the Gemma-300M expert, 200-token prompts),
action horizon 10, and, as openpi's config, `discrete_state_input=False`: π0.5-LIBERO reads no robot state (no
state token, none in the prompt). Data (openpi `LeRobotLiberoDataConfig`, `extra_delta_transform=False`): absolute
actions, quantile normalization (openpi: every model but π0). Recipe: batch 256, 30k steps, AdamW (b1 .9, b2 .95,
wd 1e-10 on all params, clip 1.0), warmup-cosine 10k -> 5e-5 -> 5e-5 at 1M steps (constant after warmup), EMA 0.999,
from pi05_base. Hardware: 8×H100 / TPU v5p-16 (FSDP over 8). Memory: python -m apt_jax.tools.aot_check --config
experiments/pi05_libero.py. Expected: LIBERO avg 96.85% (openpi examples/libero/README.md: spatial 98.8, object
98.2, goal 98.0, libero_10 92.4).
"""

from apt_jax import configs


def get_config(arg=None):
  del arg
  c = configs.load(configs.REPO_ROOT / "experiments" / "pi0_libero.py")  # openpi's pi0_libero, but:
  c.name = "pi05_libero"
  c.model.kwargs.update(dict(pi05=True, discrete_state_input=False, action_horizon=10, max_token_len=200))
  c.data = configs.libero_data("/data/modified_libero_rlds", delta_action_dims=None, use_quantile_norm=True)
  c.weight_loader.path = "/checkpoints/pi05_base/params"
  c.batch_size = 256
  c.schedule = dict(kind="warmup_cosine", peak_lr=5e-5, warmup_steps=10_000, decay_steps=1_000_000, decay_lr=5e-5)
  c.ema_decay = 0.999
  return c
