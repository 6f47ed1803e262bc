r"""Testbed v2, the reduced protocol that `make demo` runs: both arms, development seed 0, the primary recipes
(π0 joint, KI, APT frozen, KI + 2-stage, 2-stage + VLM fine-tuning), fewer steps; the same VLM gate.

  python -m apt_jax.demo --config experiments/testbed_demo.py --workdir out/demo --resume   # == make demo
  python -m apt_jax.demo --config experiments/testbed_demo.py:tiny --workdir /tmp/tb_tiny --overwrite  # smoke size

One seed gives no interval: the demo shows the pipeline and its direction, the full runs (testbed_full.py) decide.
"""

from apt_jax.testbed import experiment


def get_config(arg=None):
  c = experiment.base_config()
  c.seeds = (0,)
  c.recipes = experiment.PRIMARY
  c.data.episodes = 300
  c.vlm.steps = 800
  c.vla.steps = 1000
  c.eval.episodes_per_split = 24
  c.eval.sweep_flow_steps = ()
  if arg == "tiny":   # every stage of the pipeline runs, nothing learns, and the gate is off
    c.data.update(episodes=12, episode_len=8, pool_factor=2)
    c.vlm.update(scenes=40, qa_per_scene=4, eval_scenes=10, steps=3, batch_size=8, probe_train_scenes=30,
                 probe_eval_scenes=8)
    c.vlm.gate.update(object=0.0, container=0.0)
    c.vla.update(steps=4, batch_size=4)
    c.eval.update(episodes_per_split=2, max_steps=8, sweep_flow_steps=(5,))
    c.recipes = tuple(r for r in experiment.RECIPES)
  elif arg:
    raise ValueError(f"config arg {arg!r}: expected none or 'tiny'")
  return c
