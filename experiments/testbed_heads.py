r"""Testbed v2, Fig. 4 (issue 17): the GR00T-style and APT-expert heads through the π-style head's protocol
(docs/testbed_v2_protocol.md): the same arm, splits, budgets, pool, VLM gate and statistics, each head at its tiny
size (experiment.HEAD_SIZE, costs in docs/testbed_v2_heads/cost.json). Arg: `<arm>:<head>`, or `tiny:<head>` (every
stage at a minuscule size, the gate off: the pipeline test).

Recipes per head (the π row of Fig. 4 is pi0_joint / apt_frozen / apt_vlm_ft of the shortcut run):
  gr00t       gr00t_joint, gr00t_2stage_frozen, gr00t_2stage_vlm_ft
  apt_expert  aptx_joint, aptx_2stage_frozen, aptx_2stage_vlm_ft (Stage 2 init "preserving"),
              aptx_paper_2stage_frozen, aptx_paper_2stage_vlm_ft (Stage 2 init "paper")
One-stage joint runs tune the VLM (lr x1, as π0 joint); Stage 2 runs have a frozen-VLM and a VLM-tuned (lr x0.1)
variant, as Table 2's "2-stage only" and "2-stage + joint VLM fine-tuning". The statistics block names the head's
two-stage recipes against its joint run (the Fig. 4 quantity); apt_expert samples with 20 DDIM steps (sweep 5, 10).

Each head reuses the π run's VLMs (paired across heads: same VLM, demos, pool and evaluation scenes per seed),
gated again on the features the head reads; the π shortcut run must have trained seed s's VLM first:

  python -m apt_jax.demo --config experiments/testbed_heads.py:shortcut:gr00t --workdir out/testbed_v2_gr00t \
      --resume --config.vlm.reuse_from=out/testbed_v2
  python -m apt_jax.demo --config experiments/testbed_heads.py:shortcut:apt_expert \
      --workdir out/testbed_v2_apt_expert --resume --config.vlm.reuse_from=out/testbed_v2
  python -m apt_jax.testbed.fig4 --results docs/testbed_v2_shortcut/results.jsonl.gz \
      out/testbed_v2_gr00t/results.jsonl out/testbed_v2_apt_expert/results.jsonl --out docs/testbed_v2_heads
"""

from apt_jax.testbed import experiment
from apt_jax.testbed import fig4
from apt_jax.testbed import language
from experiments import testbed_demo

HEADS = ("gr00t", "apt_expert")


def fig4_config(arm: str, head: str, recipes=None):
  """The protocol's config for `head` on `arm` ("tiny": the demo's smoke size on the shortcut arm): its Fig. 4
  recipes (default: all), the statistics of its two-stage recipes against its joint run, its sampler's steps."""
  c = experiment.base_config()
  c.head = head
  c.arms = ("shortcut",) if arm == "tiny" else (arm,)
  joint, two_stage = fig4.FIG4[head]
  c.recipes = tuple(recipes or (joint, *two_stage))
  c.stats.update(baseline=joint, recipes=tuple(r for r in c.recipes if r != joint))
  c.eval.flow_steps = fig4.default_steps()[head]
  if c.eval.flow_steps != experiment.base_config().eval.flow_steps:   # DDIM: 20 steps, swept at 5 and 10
    c.eval.sweep_flow_steps = (5, 10)
  if arm == "tiny":   # the demo's smoke size: every stage runs, nothing learns, the gate is off
    tiny = testbed_demo.get_config("tiny")
    for k in ("seeds", "data", "vlm", "vla"):
      c[k] = tiny[k]
    c.eval.update(episodes_per_split=tiny.eval.episodes_per_split, max_steps=tiny.eval.max_steps,
                  sweep_flow_steps=())
  return c


def get_config(arg="shortcut:gr00t"):
  arm, _, head = (arg or "").partition(":")
  if arm not in (*language.ARMS, "tiny") or head not in HEADS:
    raise ValueError(f"config arg {arg!r}: expected '<arm>:<head>' with arm in {(*language.ARMS, 'tiny')} and head "
                     f"in {HEADS}")
  return fig4_config(arm, head)
