r"""openpi's π0 LIBERO fine-tuning recipe (`pi0_libero`), the baseline APT is compared with.

  python -m apt_jax.train --config experiments/pi0_libero.py --workdir $W/pi0_libero \
      --config.weight_loader.path=$PI0_BASE/params

Hardware: 8×H100 / TPU v5p-16 (openpi uses FSDP for full fine-tuning). Recipe (openpi `pi0_libero`): batch 32,
30k steps, AdamW (b1 .9, b2 .95, wd 1e-10 on all params, clip 1.0), warmup-cosine 1k → 2.5e-5 → 2.5e-6, EMA 0.99,
from pi0_base. Expected: LIBERO avg 94.15% (spatial 96.8, object 98.8, goal 95.8, libero_10 85.2; openpi README).
"""

from apt_jax import configs


def get_config(arg=None):
  del arg
  c = configs.base_config()
  c.name = "pi0_libero"
  c.model.kwargs.update(dict(apt_stage="none", **configs.PALIGEMMA_3B, action_expert_variant="gemma_300m",
                             action_horizon=50))
  c.data = configs.libero_data("/data/modified_libero_rlds")
  c.tokenizer_path = "/data/paligemma_tokenizer.model"
  c.asset_id = "libero"
  c.weight_loader = dict(kind="openpi", path="/checkpoints/pi0_base/params")
  c.batch_size = 32
  c.num_train_steps = 30_000
  c.schedule = dict(kind="warmup_cosine", peak_lr=2.5e-5, warmup_steps=1000, decay_steps=30_000, decay_lr=2.5e-6)
  c.ema_decay = 0.99
  c.mesh.fsdp_devices = 8
  return c
