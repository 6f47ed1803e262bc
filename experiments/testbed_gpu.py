r"""Testbed v2 Fig. 4 on one GPU (experiments/testbed_gpu.sh): a larger VLM (width 128, depth 4) and heads at 2x the CPU
widths (the same ratios between heads: docs/testbed_v2_heads/cost.json), 8 seeds, the shortcut arm, each head's
joint and Stage 1 -> 2 recipes (frozen VLM and VLM tuned; the APT expert's preserving init), 2000 VLA steps. Arg:
`<head>` or `<head>:tiny` (the CPU test's size, 2 seeds). Seeds are vmapped (vla.vmap_seeds): a recipe trains all
its seeds as one step over stacked states, to fill a GPU that one tiny seed leaves idle (the VLMs still pretrain one
seed at a time); apt_jax/testbed/gpu_fig4.py runs one head at a time and starts no head after its budget. Unmeasured
on a GPU so far (on 2 CPU cores vmapped seeds are slower than seeds in turn: benchmarks/testbed_vmap_seeds.py).
"""

from apt_jax.testbed import fig4
from experiments import testbed_heads

HEADS = tuple(fig4.FIG4)


def get_config(arg="pi0"):
  head, _, size = (arg or "").partition(":")
  if head not in HEADS or size not in ("", "tiny"):
    raise ValueError(f"config arg {arg!r}: expected '<head>[:tiny]' with head in {HEADS}")
  joint, two_stage = fig4.FIG4[head]
  c = testbed_heads.fig4_config(size or "shortcut", head, (joint, *(r for r in two_stage if "paper" not in r)))
  c.eval.sweep_flow_steps = ()
  c.vla.vmap_seeds = True
  if size:
    c.seeds = (0, 1)
    return c
  c.seeds = tuple(range(1, 9))
  c.size.update(vlm_width=128, expert_width=64, depth=4, head_dim=32, siglip_width=64, siglip_depth=2)
  c.head_size.gr00t.dit_variant.update(head_dim=32, output_dim=64, state_hidden=64)
  c.head_size.apt_expert.expert_variant.update(width=48, depth=8)
  c.vlm.update(steps=1500, batch_size=64)
  c.vla.update(steps=2000)
  return c
