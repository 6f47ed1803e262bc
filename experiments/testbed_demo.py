r"""Laptop-scale APT testbed, the short version that `make demo` runs (issue #7).

  python -m apt_jax.demo --config experiments/testbed_demo.py --workdir out/demo         # == make demo
  python -m apt_jax.demo --config experiments/testbed_demo.py:tiny --workdir /tmp/tb    # smoke size, ~2 min

Hardware: 2 CPU cores. Budget: <= 15 min in all (corpus + tokenizer, VLM pretraining, 6 recipes x 1 seed x 8000 VLA
steps, closed-loop evaluation on 4 splits). Measured (2 cores, 2026-11-24): 11.6 min wall (VLM 2500 steps 202 s,
recipes + eval 481 s). Result (48 episodes per split; README, Results): seen / paraphrase success π0 joint
0.52 / 0.06, APT S1->S2 with VLM fine-tuning 0.31 / 0.21, APT frozen 0.06 / 0.06. One seed; the 3-seed run
(experiments/testbed_full.py) is the one to read.
"""

import ml_collections

from apt_jax.testbed import corpus
from apt_jax.testbed import experiment


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  # The tiny π0 (apt_jax.testbed.vla.model_kwargs). 4 query = 4 KV heads: with MQA (1 KV head of 16) the frozen
  # VLM's values kept too little of an object's cell for the expert to read (linear probe, README). Stage 2 (README,
  # Results): PaliGemma's prefix-LM mask, so the frozen VLM grounds the prompt in the image tokens ("causal" hid it
  # from them: named-object grasps at chance), and the zero-projection tanh gate ("tanh" at α = 0 opened to 0.04 in
  # 3000 steps: the language path stayed unused).
  c.size = dict(vlm_width=64, expert_width=32, depth=2, num_heads=4, num_kv_heads=4, head_dim=16, siglip_width=32,
                siglip_depth=1, patch_size=16, action_horizon=8, max_token_len=16, flow_steps=5,
                stage2_prefix_mask="prefix_lm", fusion_gate="tanh_zero_proj")
  c.seeds = (0,)
  c.recipes = tuple(experiment.RECIPES)
  c.data = dict(episodes=300, episode_len=16, expert_noise=0.3, layout="fixed", clean_labels=True)
  c.tokenizer = dict(vocab_size=256)
  c.vlm = dict(scenes=3000, qa_per_scene=8, eval_scenes=150, steps=2500, batch_size=48, lr=3e-3, prefix_len=20,
               suffix_len=12, curriculum=corpus.CURRICULUM)
  c.vla = dict(steps=8000, batch_size=16, lr=2e-3)
  c.eval = dict(episodes_per_split=48, max_steps=20, replan=4)
  if arg == "tiny":  # Smoke size: every stage of the pipeline runs, nothing learns.
    c.data.update(episodes=20, episode_len=16)
    c.vlm.update(scenes=40, qa_per_scene=4, eval_scenes=10, steps=3, batch_size=8)
    c.vla.update(steps=4, batch_size=4)
    c.eval.update(episodes_per_split=2, max_steps=8)
  elif arg:
    raise ValueError(f"experiments/testbed_demo.py:{arg}: expected no arg or 'tiny'")
  return c
