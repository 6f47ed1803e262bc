r"""Laptop-scale APT testbed, the longer run whose numbers the README reports (issue #7).

  python -m apt_jax.demo --config full --workdir out/testbed_full

Hardware: 2 CPU cores (shared); about an hour. Same pipeline as experiments/testbed_demo.py with a VLM pretrained
longer, 4x the VLA step budget, 5 seeds and more evaluation episodes.
"""

import copy

from apt_jax.testbed import experiment


def get_config(arg=None):
  del arg
  c = copy.deepcopy(experiment.DEMO)
  c["seeds"] = (0, 1, 2, 3, 4)
  c["data"].update(episodes=600)
  c["vlm"].update(scenes=4000, steps=2000, batch_size=64)
  c["vla"].update(steps=1000, batch_size=32)
  c["eval"].update(episodes_per_split=40)
  return c
