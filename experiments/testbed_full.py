r"""Laptop-scale APT testbed, the longer run whose numbers the README reports (issue #7).

  python -m apt_jax.demo --config full --workdir out/testbed_full

Hardware: 2 CPU cores (shared with other jobs); about 30 min. Same pipeline as experiments/testbed_demo.py with the
VLM pretrained 4x longer on twice the scenes, 2.5x the VLA step budget, and more evaluation episodes (3 seeds).
Expected: see the README section (measured numbers, whichever way they go).
"""

import copy

from apt_jax.testbed import experiment


def get_config(arg=None):
  del arg
  c = copy.deepcopy(experiment.DEMO)
  c["seeds"] = (0, 1, 2)
  c["data"].update(episodes=400)
  c["vlm"].update(scenes=3000, steps=1200, batch_size=48)
  c["vla"].update(steps=600, batch_size=16)
  c["eval"].update(episodes_per_split=40)
  return c
