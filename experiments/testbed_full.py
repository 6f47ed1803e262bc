r"""Testbed v2, the named full runs (docs/testbed_v2_protocol.md): one per data arm, 5 evaluation seeds, every recipe
and control, the {5, 10, 20} flow-step sweep on the saved checkpoints.

  python -m apt_jax.demo --config experiments/testbed_full.py:shortcut --workdir out/testbed_v2 --resume
  python -m apt_jax.demo --config experiments/testbed_full.py:balanced --workdir out/testbed_v2 --resume

Both share the workdir: each seed's VLM and pool Stage 1 are trained once and reused by the second run.
"""

from apt_jax.testbed import experiment
from apt_jax.testbed import language


def get_config(arg=None):
  c = experiment.base_config()
  if arg:
    if arg not in language.ARMS:
      raise ValueError(f"config arg {arg!r}: expected one of {language.ARMS}")
    c.arms = (arg,)
  return c
