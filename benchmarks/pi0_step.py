"""π0 compute_loss+grad and sample_actions time by APT stage, batch size and model size (CPU). Prints JSON.

  python benchmarks/pi0_step.py [--sizes small,medium] [--batches 2,8] [--reps 3]

Gradients are taken w.r.t. the trainable params only (as in training), so Stage 1's frozen VLM costs one forward
pass and no backward. Compile time (lower + compile) is reported apart from the steady-state time (median of reps).
"""

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np

from apt_jax import optimizer as _optimizer
from apt_jax import testing
from apt_jax.models import pi0


def timed(fn, *args, reps):
  """-> (compile seconds, median steady-state seconds over reps) of jit(fn)(*args). Also used by heads.py."""
  t = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
  return compile_s, float(np.median(times))


def bench(size, stage, batch, reps):
  config = pi0.Pi0Config(apt_stage=stage, dtype="bfloat16", remat_policy="nothing_saveable", **testing.SIZES[size])
  model = config.create(jax.random.key(0))
  obs = config.fake_obs(batch)
  acts = config.fake_act(batch)
  trainable, frozen = _optimizer.partition(model.params, config.freeze_filter)

  # Inputs are arguments, not closed-over constants (XLA would constant-fold them).
  def loss_and_grad(trainable, frozen, obs, acts):
    def loss_fn(p):
      m = model.replace(params=_optimizer.combine(p, frozen))
      return jnp.mean(m.compute_loss(jax.random.key(1), obs, acts))
    return jax.value_and_grad(loss_fn)(trainable)

  grad_compile, grad_s = timed(loss_and_grad, trainable, frozen, obs, acts, reps=reps)
  sample_compile, sample_s = timed(lambda m, obs: m.sample_actions(jax.random.key(2), obs, num_steps=10), model,
                                    obs, reps=reps)
  return {"size": size, "apt_stage": stage, "batch": batch, "grad_step_s": round(grad_s, 4),
          "grad_compile_s": round(grad_compile, 2), "sample_actions_s": round(sample_s, 4),
          "sample_compile_s": round(sample_compile, 2)}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--sizes", default="small,medium", help=f"of apt_jax.testing.SIZES: {sorted(testing.SIZES)}")
  p.add_argument("--batches", default="2,8")
  p.add_argument("--reps", type=int, default=3)
  args = p.parse_args()
  rows = []
  for size in args.sizes.split(","):
    for batch in map(int, args.batches.split(",")):
      for stage in ("none", "stage1", "stage2"):
        rows.append(bench(size, stage, batch, args.reps))
  ratios = {}
  for r in rows:
    if r["apt_stage"] == "none":
      for s in ("stage1", "stage2"):
        o = next(x for x in rows if (x["size"], x["batch"], x["apt_stage"]) == (r["size"], r["batch"], s))
        ratios[f"{r['size']}/b{r['batch']}/{s}_vs_joint_grad_step"] = round(o["grad_step_s"] / r["grad_step_s"], 3)
  print(json.dumps({"device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(), "dtype": "bfloat16",
                    "rows": rows, "ratios": ratios, "target": "stage1_vs_joint_grad_step <= 0.45"}, indent=1))


if __name__ == "__main__":
  main()
