r"""Laptop-scale APT testbed, the short version that `make demo` runs (issue #7).

  python -m apt_jax.demo --workdir out/demo            # == make demo
  python -m apt_jax.demo --config tiny --workdir /tmp/tb_tiny   # smoke size, ~2 min

Hardware: 2 CPU cores. Budget: <= 15 min in all (corpus + tokenizer, VLM pretraining, 5 recipes x 3 seeds, closed-loop
evaluation on 4 splits). Expected: the scripted expert succeeds on ~100% of training episodes; at this budget the
VLA policies are weak and the intervals wide (see the README section for the measured numbers); the full run is
experiments/testbed_full.py.
"""

import copy

from apt_jax.testbed import experiment


def get_config(arg=None):
  del arg
  return copy.deepcopy(experiment.DEMO)


def tiny_config(arg=None):
  """Smoke size: every stage of the pipeline runs, nothing learns."""
  del arg
  c = copy.deepcopy(experiment.DEMO)
  c["seeds"] = (0,)
  c["data"].update(episodes=20, episode_len=14)
  c["vlm"].update(scenes=40, qa_per_scene=4, eval_scenes=10, steps=3, batch_size=8)
  c["vla"].update(steps=4, batch_size=4)
  c["eval"].update(episodes_per_split=2, max_steps=8)
  return c
