"""Seeds vmapped vs one after another: wall and CPU seconds of `vla.train_vla_seeds` training S seeds together (one
step vmapped over them) and of `vla.train_vla` training them in turn, at the testbed's size (experiment.base_config,
π-style head, one-stage joint, the protocol's batch), each timed twice: the first call compiles, the second reuses the
compiled step (the steady cost a recipe's seeds pay). One run; prints JSON.

  python benchmarks/testbed_vmap_seeds.py [--seeds 4] [--steps 50]
"""

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np

from apt_jax.testbed import experiment as E
from apt_jax.testbed import tabletop as T
from apt_jax.testbed import vla


def _frames(cfg, seed, episodes=8, steps=4) -> dict:
  """Stored frames of random scenes (no rendering in the timed loop), vla.EpisodeData's layout."""
  rng = np.random.default_rng(seed)
  n, ah, tl = episodes * steps, cfg.size.action_horizon, cfg.size.max_token_len
  scenes = T.State.concat([T.sample_scene(rng, (0, 0), layout="fixed") for _ in range(n)])
  return dict(images=T.render(scenes), state=T.observe_state(scenes), actions=rng.normal(size=(n, ah, 3)),
              steps_per_episode=steps, tokens=rng.integers(1, 200, (episodes, tl)),
              mask=np.arange(tl)[None].repeat(episodes, 0) < 8)


def _timed(fn) -> dict:
  t0, c0 = time.time(), time.process_time()
  fn()
  return dict(wall_s=round(time.time() - t0, 2), cpu_s=round(time.process_time() - c0, 2))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seeds", type=int, default=4)
  p.add_argument("--steps", type=int, default=50)
  args = p.parse_args(argv)
  cfg = E.base_config()
  kw = E.model_kw(cfg, cfg.tokenizer.vocab_size)
  seeds = range(1, args.seeds + 1)
  configs = [vla.train_config(kw, steps=args.steps, batch_size=cfg.vla.batch_size, lr=cfg.vla.lr, seed=s,
                              name=f"s{s}") for s in seeds]
  frames = {s: _frames(cfg, s) for s in seeds}
  data = lambda s: vla.EpisodeData(frames[s], cfg.vla.batch_size, [s, 3])
  quiet = lambda m: None
  together = lambda: vla.train_vla_seeds(configs, [data(s) for s in seeds], log=quiet)
  in_turn = lambda: [vla.train_vla(c, data(s), log=quiet) for c, s in zip(configs, seeds)]
  out = dict(seeds=args.seeds, steps=args.steps, batch_size=cfg.vla.batch_size, device=str(jax.devices()[0]),
             cpu_count=os.cpu_count())
  for name, fn in (("vmapped", together), ("sequential", in_turn)):
    out[name] = dict(first=_timed(fn), steady=_timed(fn))
  out["steady_wall_ratio_vmapped_over_sequential"] = round(out["vmapped"]["steady"]["wall_s"]
                                                           / out["sequential"]["steady"]["wall_s"], 3)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
