r"""Debug recipe: tiny π0 on the shipped LIBERO-spec sample, a few hundred steps on CPU in about a minute.

  python -m apt_jax.train --config experiments/debug.py:stage1 --workdir /tmp/debug_s1
  python -m apt_jax.train --config experiments/debug.py:stage2 --workdir /tmp/debug_s2 \
      --config.init_from=/tmp/debug_s1
  python -m apt_jax.train --config experiments/debug.py:joint --workdir /tmp/debug_joint

Hardware: any CPU (2 cores: ~1 min per 300 steps after ~20 s of compilation).
Expected: the loss falls from ~1.5 to well below 1 within 300 steps on every recipe; Stage 2 starts where Stage 1
ended (its step-0 loss equals Stage 1's, since the fusion gates start at 0).
"""

from apt_jax import configs
from apt_jax import testing


def get_config(arg=None):
  stage = configs.parse_stage(arg)
  c = configs.base_config()
  c.name = f"debug_{arg or 'stage1'}"
  c.model.kwargs.update(dict(apt_stage=stage, dtype="float32", action_dim=8, action_horizon=10, max_token_len=32,
                             remat_policy="none", **testing.SIZES["debug"]))
  c.data = configs.sample_data()
  c.tokenizer_path = str(configs.SAMPLE_TOKENIZER)
  c.asset_id = "libero_sample"
  c.batch_size = 8
  c.num_train_steps = 300
  c.log_every_steps = 10
  c.ckpt_every_steps = 100
  c.keep_period = None
  c.schedule = dict(kind="warmup_constant", peak_lr=1e-3, warmup_steps=20)
  c.optimizer.update(dict(weight_decay=1e-2, decay_all=False))
  c.frozen_dtype = ""
  c.train_augment = False
  return c
