"""Step time (loss + grad w.r.t. trainable params) and sample_actions time of every action head, side by side, at the
debug size (experiments/debug*.py) and a medium CPU size, for APT Stage 1 and Stage 2. Prints JSON.

  python benchmarks/heads.py [--sizes debug,medium] [--stages stage1,stage2] [--batch 4] [--reps 3]

Each head uses its own default objective and sampler (π0: flow, 10 Euler steps; GR00T: flow, 4 steps; APT expert:
DDIM, 20 steps), as configured in its experiments file. Compile time is reported apart from the steady-state time
(median of reps).
"""

import argparse
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
from pi0_step import timed

from apt_jax import optimizer as _optimizer
from apt_jax import testing
from apt_jax.models import registry

# The VLM of each size (apt_jax.testing.SIZES) with the settings of that size's π0 runs.
_VLM = {
    "debug": dict(action_dim=8, max_token_len=32),
    "medium": dict(action_dim=32, max_token_len=48),
}
_HEAD = {
    ("pi0", "debug"): dict(action_expert_variant=testing.SIZES["debug"]["action_expert_variant"], action_horizon=10),
    ("pi0", "medium"): dict(action_expert_variant=testing.SIZES["medium"]["action_expert_variant"],
                            action_horizon=50),
    ("gr00t", "debug"): dict(dit_variant="dummy", action_horizon=10),
    ("gr00t", "medium"): dict(dit_variant=dict(num_heads=8, head_dim=32, depth=8, output_dim=256, state_hidden=256,
                                               num_future_tokens=16, adapter_depth=2, adapter_num_heads=8),
                              action_horizon=16),
    ("apt_expert", "debug"): dict(expert_variant="dummy", action_horizon=10),
    ("apt_expert", "medium"): dict(expert_variant=dict(width=256, num_heads=4, depth=12), action_horizon=32),
}


def bench(head, size, stage, batch, reps):
  vlm = {k: v for k, v in testing.SIZES[size].items() if k != "action_expert_variant"}
  config = registry.create_config(head, apt_stage=stage, dtype="float32", remat_policy="none", **vlm, **_VLM[size],
                                  **_HEAD[(head, size)])
  model = config.create(jax.random.key(0))
  obs, acts = config.fake_obs(batch), config.fake_act(batch)
  trainable, frozen = _optimizer.partition(model.params, config.freeze_filter)

  def loss_and_grad(trainable, frozen, obs, acts):
    def loss_fn(p):
      m = model.replace(params=_optimizer.combine(p, frozen))
      return jnp.mean(m.compute_loss(jax.random.key(1), obs, acts, train=True))
    return jax.value_and_grad(loss_fn)(trainable)

  grad_compile, grad_s = timed(loss_and_grad, trainable, frozen, obs, acts, reps=reps)
  sample_compile, sample_s = timed(lambda m, obs: m.sample_actions(jax.random.key(2), obs), model, obs, reps=reps)
  count = lambda t: int(sum(np.prod(x.shape) for x in jax.tree.leaves(t)))
  return {"head": head, "size": size, "apt_stage": stage, "batch": batch, "objective": config.objective,
          "trainable_params": count(trainable), "frozen_params": count(frozen),
          "grad_step_s": round(grad_s, 4), "grad_compile_s": round(grad_compile, 2),
          "sample_actions_s": round(sample_s, 4), "sample_compile_s": round(sample_compile, 2)}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--heads", default="pi0,gr00t,apt_expert")
  p.add_argument("--sizes", default="debug,medium")
  p.add_argument("--stages", default="stage1,stage2")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--reps", type=int, default=3)
  args = p.parse_args()
  rows = [bench(h, size, stage, args.batch, args.reps)
          for size in args.sizes.split(",") for stage in args.stages.split(",") for h in args.heads.split(",")]
  print(json.dumps({"device": str(jax.devices()[0].platform), "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
