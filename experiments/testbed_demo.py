r"""Testbed v2, the reduced protocol that `make demo` runs: development seed 0, the shortcut arm (the primary
endpoint's), the primary endpoint's recipes (π0 joint, KI + 2-stage, 2-stage + VLM fine-tuning) with the shared pool
Stage 1, fewer steps; the same VLM gate. Sized for 10 min on 2 cores: every VLA run costs a compile (~100 s at load
15), so the demo keeps 4 VLA runs; the balanced arm and the other recipes are the full runs' (testbed_full.py).
Measured (2026-11-29, `make demo` on a fresh clone, venv build included, at load ~10): 5.7 min of CPU
(299 s user + 44 s system), so at most ~6 min on 2 quiet cores.

  python -m apt_jax.demo --config experiments/testbed_demo.py --workdir out/demo --resume   # == make demo
  python -m apt_jax.demo --config experiments/testbed_demo.py:tiny --workdir /tmp/tb_tiny --overwrite  # smoke size

One seed gives no interval: the demo shows the pipeline and its direction, the full runs (testbed_full.py) decide.
"""

from apt_jax.testbed import experiment
from apt_jax.testbed import language


def get_config(arg=None):
  c = experiment.base_config()
  c.seeds = (0,)
  c.arms = ("shortcut",)
  c.recipes = ("pi0_joint", "ki_2stage", "apt_vlm_ft")
  c.data.episodes = 300
  c.vlm.steps = 800
  c.vla.steps = 1500
  c.eval.episodes_per_split = 24
  c.eval.sweep_flow_steps = ()
  if arg == "tiny":   # every stage of the pipeline runs, nothing learns, and the gate is off
    c.arms = language.ARMS
    c.data.update(episodes=12, episode_len=8, pool_factor=2)
    c.vlm.update(scenes=40, qa_per_scene=4, eval_scenes=10, steps=3, batch_size=8, probe_train_scenes=30,
                 probe_eval_scenes=8)
    c.vlm.gate.update(object=0.0, container=0.0)
    c.vla.update(steps=4, batch_size=4)
    c.eval.update(episodes_per_split=2, max_steps=8, sweep_flow_steps=(5,))
    c.recipes = experiment.recipes_of("pi0")
  elif arg:
    raise ValueError(f"config arg {arg!r}: expected none or 'tiny'")
  return c
