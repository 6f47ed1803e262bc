r"""Laptop-scale APT testbed, the longer run whose numbers the README reports (issue #7).

  python -m apt_jax.demo --config full --workdir out/testbed_full

Hardware: 2 CPU cores. Measured (2026-11-24): 30.0 min wall (VLM 4000 steps 308 s; 5 recipes x 3 seeds x 5000 VLA
steps at batch 32 + evaluation 1466 s). Same pipeline as experiments/testbed_demo.py with the VLM pretrained 1.6x
longer on twice the scenes, 2.5x the VLA steps at twice the batch, twice the demonstrations, and 40 evaluation
episodes per split and seed.
Result (README, Results; outputs in docs/testbed_full/): VLM held-out exact match refer 0.92, container 1.00,
instruction 0.39; every recipe succeeds on 0-3% of episodes per split (<= 3/120) and grasps the target in 2-11%, with
overlapping intervals: no recipe learns the task at this budget, so the run neither confirms nor refutes the claim.
"""

import copy

from apt_jax.testbed import experiment


def get_config(arg=None):
  del arg
  c = copy.deepcopy(experiment.DEMO)
  c["seeds"] = (0, 1, 2)
  c["data"].update(episodes=600)
  c["vlm"].update(scenes=6000, steps=4000, batch_size=48)
  c["vla"].update(steps=10000, batch_size=16)
  c["eval"].update(episodes_per_split=40)
  return c
