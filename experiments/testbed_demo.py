r"""Laptop-scale APT testbed, the short version that `make demo` runs (issue #7).

  python -m apt_jax.demo --workdir out/demo            # == make demo
  python -m apt_jax.demo --config tiny --workdir /tmp/tb_tiny   # smoke size, ~2 min

Hardware: 2 CPU cores. Budget: <= 15 min in all (corpus + tokenizer, VLM pretraining, 5 recipes x 3 seeds, closed-loop
evaluation on 4 splits). Measured (2 cores, 2026-11-24): 8.8 min wall (VLM 2500 steps 186 s, recipes + eval 332 s).
Result at this budget: the noisy scripted expert succeeds on 99.3% of the demonstrations and the VLM grounds
(held-out exact match on the 25 board cells: refer 0.87, container 0.99, instruction 0.77), but the policies do not
learn the task: success is 0/72 on every split for every recipe but two single episodes, target grasp 0-10% with
overlapping intervals. The demo checks the pipeline, not the claim (README, Results).
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
