"""Cost of each head at the testbed's tiny size (experiment.base_config: `size` and `head_size`), per training stage:
params (total, expert = everything but SigLIP and the VLM's Gemma, trainable), matmul GFLOP per compiled train step
(apt_jax.tools.hlo_flops: XLA's cost_analysis counts a scanned layer once) and CPU seconds per 100 steps at the
protocol's batch, with its ratio to the π-style head's at the same stage (one run, heads interleaved). Prints JSON.

  python benchmarks/testbed_heads.py [--steps 100] [--stages none,stage1,stage2] > docs/testbed_v2_heads/cost.json

Stages: "none" = one-stage joint (VLM tuned, lr x1), "stage1" = the language-free prior (VLM frozen), "stage2" =
Stage 2 with the VLM tuned at lr x0.1 (the costlier of the two Stage 2 variants).
"""

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np

from apt_jax import train
from apt_jax import tree as tree_lib
from apt_jax.data import batch as _batch
from apt_jax.models import model as _model
from apt_jax.testbed import experiment as E
from apt_jax.testbed import tabletop as T
from apt_jax.testbed import vla
from apt_jax.tools import hlo_flops

HEADS = ("pi0", "gr00t", "apt_expert")
_RECIPE = {"none": dict(), "stage1": dict(), "stage2": dict(fusion=True, vlm_lr=0.1)}


def _batch_of(cfg, rng):
  b, n = cfg.vla.batch_size, cfg.size.max_token_len
  scenes = T.State.concat([T.sample_scene(rng, (0, 0), layout="fixed") for _ in range(b)])
  return vla.make_batch(T.render(scenes), T.observe_state(scenes), rng.integers(1, 200, (b, n)),
                        np.arange(n)[None].repeat(b, 0) < 8, rng.normal(size=(b, cfg.size.action_horizon, 3)))


def measure(cfg, head, stage, steps) -> dict:
  cfg.head = head
  kw = E.model_kw(cfg, cfg.tokenizer.vocab_size, apt_stage=stage,
                  recipe=E.Recipe(stage, head=head, **_RECIPE[stage]) if stage != "stage1" else None)
  tc = vla.train_config(kw, steps=steps, batch_size=cfg.vla.batch_size, lr=cfg.vla.lr, seed=0)
  tc.model.head = head
  mc, setup, step_fn, spec = vla._compiled(tc)  # noqa: SLF001 (the testbed's own compiled step, as train_vla runs it)
  state = train.init_train_state(setup, jax.random.key(0), {})
  rng = np.random.default_rng(0)
  batch = _batch.to_global_batch(_batch_of(cfg, rng), spec)
  t = time.time()
  compiled = step_fn.lower(jax.random.key(1), state, batch).compile()
  compile_s = time.time() - t
  flops = hlo_flops.count(compiled.as_text())
  state, m = compiled(jax.random.key(1), state, batch)      # warm-up
  jax.block_until_ready(m)
  t0, c0 = time.time(), time.process_time()
  for i in range(steps):
    state, m = compiled(jax.random.key(i), state, batch)
  jax.block_until_ready(m)
  wall, cpu = time.time() - t0, time.process_time() - c0
  flat = tree_lib.flatten(mc.abstract_params())
  size = lambda keys: int(sum(np.prod(flat[k].shape) for k in keys))
  return dict(head=head, stage=stage, params_total=size(flat), params_expert=size(k for k in flat
                                                                                 if not _model.is_vlm_param(k)),
              params_trainable=size(k for k in flat if not setup.ctx.is_frozen(k)),
              gflop_per_step=round(flops.flops / 1e9, 4), unresolved_loops=len(flops.unresolved_loops),
              compile_s=round(compile_s, 1), wall_s_per_100=round(100 * wall / steps, 2),
              cpu_s_per_100=round(100 * cpu / steps, 2))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--stages", default="none,stage1,stage2")
  p.add_argument("--heads", default=",".join(HEADS))
  args = p.parse_args(argv)
  cfg = E.base_config()
  rows = [measure(cfg, h, s, args.steps) for s in args.stages.split(",") for h in args.heads.split(",")]
  for r in rows:
    ref = next((x for x in rows if x["head"] == "pi0" and x["stage"] == r["stage"]), None)
    if ref is not None:
      for k in ("params_expert", "gflop_per_step", "cpu_s_per_100"):
        r[f"{k}_vs_pi0"] = round(r[k] / ref[k], 3)
  print(json.dumps(dict(batch_size=cfg.vla.batch_size, steps_timed=args.steps, jax=jax.__version__,
                        cpu_count=os.cpu_count(), load_avg=os.getloadavg(), head_size=cfg.head_size.to_dict(),
                        rows=rows), indent=1))


if __name__ == "__main__":
  main()
