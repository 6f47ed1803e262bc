r"""Debug recipe for the GR00T-style head: a tiny DiT on a tiny PaliGemma, on the shipped LIBERO-spec sample.

  python -m apt_jax.train --config experiments/debug_gr00t.py:stage1 --workdir /tmp/debug_gr00t_s1
  python -m apt_jax.train --config experiments/debug_gr00t.py:stage2 --workdir /tmp/debug_gr00t_s2 \
      --config.init_from=/tmp/debug_gr00t_s1
  python -m apt_jax.train --config experiments/debug_gr00t.py:joint --workdir /tmp/debug_gr00t_joint
  # The paper's DDIM objective instead of GR00T's flow matching:
  python -m apt_jax.train --config experiments/debug_gr00t.py:stage1 --workdir /tmp/x \
      --config.model.kwargs.objective=ddim

Everything but the model block comes from experiments/debug.py (data, optimizer, 300 steps, batch 8).
Hardware: any CPU (2 cores: about a minute per 300 steps after ~30 s of compilation).
Expected: the flow loss falls slowly from ~2.4 (E|a - ε|² of normalised actions) to ~1.9 by step 300 in Stage 1
(measured); Stage 2 starts where Stage 1 ended (the language blocks' tanh gates start at 0).
"""

import pathlib

import ml_collections

from apt_jax import configs

# The tiny backbone of experiments/debug.py (π0's action expert variant is the one field left out).
TINY_VLM = ("apt_stage", "dtype", "action_dim", "action_horizon", "max_token_len", "vocab_size",
            "paligemma_variant", "siglip_variant", "remat_policy")


def get_config(arg=None):
  c = configs.load(pathlib.Path(__file__).with_name("debug.py"), arg)
  c.name = f"debug_gr00t_{arg or 'stage1'}"
  c.model.head = "gr00t"
  c.model.kwargs = ml_collections.ConfigDict({**{k: c.model.kwargs[k] for k in TINY_VLM}, "dit_variant": "dummy",
                                             "objective": "flow"})
  return c
