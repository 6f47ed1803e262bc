r"""Laptop-scale APT testbed, the short version that `make demo` runs (issue #7).

  python -m apt_jax.demo --workdir out/demo            # == make demo
  python -m apt_jax.demo --config tiny --workdir /tmp/tb_tiny   # smoke size, ~2 min

Hardware: 2 CPU cores. Budget: <= 15 min in all (corpus + tokenizer, VLM pretraining, 6 recipes x 1 seed x 8000 VLA
steps, closed-loop evaluation on 4 splits). Measured (2 cores, 2026-11-24): 11.6 min wall (VLM 2500 steps 202 s,
recipes + eval 481 s). Result (48 episodes per split; README, Results): seen / paraphrase success π0 joint
0.52 / 0.06, APT S1->S2 with VLM fine-tuning 0.31 / 0.21, APT frozen 0.06 / 0.06. One seed; the 3-seed run
(experiments/testbed_full.py) is the one to read.
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
  c["data"].update(episodes=20, episode_len=16)
  c["vlm"].update(scenes=40, qa_per_scene=4, eval_scenes=10, steps=3, batch_size=8)
  c["vla"].update(steps=4, batch_size=4)
  c["eval"].update(episodes_per_split=2, max_steps=8)
  return c
