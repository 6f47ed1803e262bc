r"""Laptop-scale APT testbed, the longer run whose numbers the README reports (issue #7).

  python -m apt_jax.demo --config experiments/testbed_full.py --workdir out/testbed_full

Hardware: 2 CPU cores. Measured (2026-11-24): 29.2 min wall (VLM 2500 steps 199 s; 6 recipes x 3 seeds x 10 000 VLA
steps at batch 16 + evaluation 1535 s). Same pipeline and VLM as experiments/testbed_demo.py with 3 seeds instead
of 1, 1.25x the VLA steps, twice the demonstrations, and 40 evaluation episodes per split and seed.
Result (README, Results; outputs in docs/testbed_full/), success pooled over 3 seeds, seen / paraphrase: π0 joint
0.44 / 0.19 (named object grasped 0.73 / 0.45, disjoint intervals); APT S1->S2 with VLM fine-tuning 0.26 / 0.20
(0.57 / 0.55); APT frozen 0.11 / 0.11; KI only 0.17 / 0.21. π0's gap on unseen words reproduces and APT closes it,
but APT does not beat π0 on any split (it ties on paraphrases and trails elsewhere).
"""

import pathlib

from apt_jax import configs


def get_config(arg=None):
  del arg
  c = configs.load(pathlib.Path(__file__).with_name("testbed_demo.py"))
  c.seeds = (0, 1, 2)
  c.data.episodes = 600
  c.vla.update(steps=10000, batch_size=16)
  c.eval.episodes_per_split = 40
  return c
