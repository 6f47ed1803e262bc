r"""Debug recipe for the APT paper's expert (layer-wise gated fusion), on the shipped LIBERO-spec sample.

  python -m apt_jax.train --config experiments/debug_apt_expert.py:stage1 --workdir /tmp/debug_apt_s1
  python -m apt_jax.train --config experiments/debug_apt_expert.py:stage2 --workdir /tmp/debug_apt_s2 \
      --config.init_from=/tmp/debug_apt_s1      # add --config.model.kwargs.stage2_init=paper for the paper's init
  python -m apt_jax.train --config experiments/debug_apt_expert.py:joint --workdir /tmp/debug_apt_joint

Dummy expert: width 32, 2 heads, 4 layers (2 in Stage 1), taps spread over the 2 debug VLM layers; DDIM objective
(100 steps, ε-prediction, L1) as the paper. Everything but the head comes from experiments/debug.py (through
debug_gr00t.py).
Hardware: any CPU (2 cores: about a minute per 300 steps after ~30 s of compilation).
Expected: the L1 loss falls from ~0.8 within the first hundred steps; a "preserving" Stage 2 starts where Stage 1
ended.
"""

import pathlib

import ml_collections

from apt_jax import configs


def get_config(arg=None):
  c = configs.load(pathlib.Path(__file__).with_name("debug_gr00t.py"), arg)  # the tiny VLM of debug.py
  vlm = {k: v for k, v in c.model.kwargs.items() if k != "dit_variant"}
  c.name = f"debug_apt_expert_{arg or 'stage1'}"
  c.model.head = "apt_expert"
  c.model.kwargs = ml_collections.ConfigDict({**vlm, "expert_variant": "dummy", "objective": "ddim"})
  return c
