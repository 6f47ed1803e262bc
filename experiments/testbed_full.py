r"""Laptop-scale APT testbed, the longer run whose numbers the README reports (issue #7).

  python -m apt_jax.demo --config full --workdir out/testbed_full

Hardware: 2 CPU cores; about 35 min (estimated from the demo's per-step times: VLM 0.13 s/step, VLA 10-40 ms/step).
Same pipeline as experiments/testbed_demo.py with the VLM pretrained 3.3x longer on twice the scenes, 3.3x the VLA
step budget, twice the demonstrations, and more evaluation episodes (3 seeds).
Expected: see the README section (measured numbers, whichever way they go).
"""

import copy

from apt_jax.testbed import experiment


def get_config(arg=None):
  del arg
  c = copy.deepcopy(experiment.DEMO)
  c["seeds"] = (0, 1, 2)
  c["data"].update(episodes=600)
  c["vlm"].update(scenes=6000, steps=4000, batch_size=48)
  c["vla"].update(steps=5000, batch_size=32)
  c["eval"].update(episodes_per_split=40)
  return c
