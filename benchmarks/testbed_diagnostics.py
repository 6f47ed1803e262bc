"""Where the testbed's policies fall short: one recipe trained on a simplified task (a probe), evaluated closed loop,
as JSON.

    .venv/bin/python benchmarks/testbed_diagnostics.py --workdir out/demo [--probe base] [--recipe pi0_joint]
        [--steps 2000] [--batch_size 16] [--episodes 64] [--splits seen,paraphrase] [--layout fixed]
        [--clean_labels 1] [--stage2_prefix_mask prefix_lm] [--fusion_gate tanh_zero_proj] [--seed 0]

Reads the VLM npz and tokenizer that `make demo` (or `python -m apt_jax.demo --config full`) left in --workdir, makes
the demo's demonstrations (300 episodes, seed 0) under the probe, trains --recipe for --steps VLA steps (two-stage
recipes split them as the experiment does) and rolls it out for 20 steps on --episodes scenes of each split.
--layout (tabletop.LAYOUTS) and --clean_labels (1: the noise-free expert action is the label while the noisy one is
executed, DART; 0: the executed action) default to the demo's config (fixed, 1); sessions 1-4 ran `random`, 0.
--stage2_prefix_mask and --fusion_gate (Pi0Config's) also default to the demo's (prefix_lm, tanh_zero_proj).
Probes (each changes one thing of the task; `base` changes nothing):
  goal_in_state  the state also holds the current goal's (x, y) (the target object, then once held the target
                 container): the policy need not see or read anything, only move. Tests the motor half.
  one_object     one object, no distractor: finding the only object in the image, no language needed to pick it.
(The earlier `fixed_layout` probe is now `--layout fixed`, the testbed's default.)
Prints {"probe", "recipe", "steps", "batch_size", "layout", "clean_labels", "train_s", "splits": {split:
{"success", "target_grasped", "any_held", "n"}}}: "any_held" counts episodes where some object (not necessarily the
named one) was held.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from apt_jax import configs  # noqa: E402
from apt_jax.models import gemma as _gemma  # noqa: E402
from apt_jax.models import pi0 as _pi0  # noqa: E402
from apt_jax.models import tokenizer as _tokenizer  # noqa: E402
from apt_jax.testbed import experiment as E  # noqa: E402
from apt_jax.testbed import language as L  # noqa: E402
from apt_jax.testbed import tabletop as T  # noqa: E402
from apt_jax.testbed import vla  # noqa: E402

DEMO = configs.load(REPO / "experiments" / "testbed_demo.py")
PROBES = ("base", "goal_in_state", "one_object")


@contextlib.contextmanager
def probe(name: str):
  """Patches the simulator (and, for goal_in_state, the model's action_dim) for the duration of the probe."""
  if name not in PROBES:
    raise ValueError(f"--probe={name!r}; expected one of {PROBES}")
  saved = dict(observe_state=T.observe_state, NUM_OBJECTS=T.NUM_OBJECTS)
  model_kwargs = vla.model_kwargs
  try:
    if name == "goal_in_state":
      observe = T.observe_state
      T.observe_state = lambda s: np.concatenate([observe(s), T.goal(s).astype(np.float32)], axis=-1)
      # π0 pads the state to action_dim: 5 = dx, dy, grip + 2 zero-padded action dims.
      vla.model_kwargs = lambda *a, **k: {**model_kwargs(*a, **k), "action_dim": 5}
    elif name == "one_object":
      T.NUM_OBJECTS = 1
    yield
  finally:
    for k, v in saved.items():
      setattr(T, k, v)
    vla.model_kwargs = model_kwargs


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="out/demo", help="a finished demo/full run (vlm_paligemma.npz, tokenizer.model)")
  p.add_argument("--probe", default="base", choices=PROBES)
  p.add_argument("--recipe", default="pi0_joint", choices=tuple(E.RECIPES))
  p.add_argument("--steps", type=int, default=2000)
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--lr", type=float, default=DEMO.vla.lr)
  p.add_argument("--episodes", type=int, default=64)
  p.add_argument("--splits", default="seen,paraphrase")
  p.add_argument("--layout", default=DEMO.data.layout, choices=T.LAYOUTS)
  p.add_argument("--clean_labels", type=int, default=int(DEMO.data.clean_labels), choices=(0, 1))
  p.add_argument("--stage2_prefix_mask", default=DEMO.size.stage2_prefix_mask, choices=_pi0.STAGE2_PREFIX_MASKS)
  p.add_argument("--fusion_gate", default=DEMO.size.fusion_gate, choices=_gemma.FUSION_GATES)
  p.add_argument("--seed", type=int, default=0, help="training seed and evaluation scenes (the demo's data either way)")
  args = p.parse_args(argv)
  wd = pathlib.Path(args.workdir)
  npz, tok_path = wd / "vlm_paligemma.npz", wd / "tokenizer.model"
  for f in (npz, tok_path):
    if not f.exists():
      raise FileNotFoundError(f"{f} not found: run `make demo` (or the full testbed) with --workdir {wd} first")
  splits = args.splits.split(",")
  for s in splits:
    if s not in L.SPLITS:
      raise ValueError(f"--splits: unknown split {s!r}; expected some of {L.SPLITS}")
  cfg = copy.deepcopy(DEMO)
  cfg["vla"].update(steps=args.steps, batch_size=args.batch_size, lr=args.lr)
  cfg["eval"].update(episodes_per_split=args.episodes)
  cfg["data"].update(clean_labels=bool(args.clean_labels), layout=args.layout)
  cfg["size"].update(stage2_prefix_mask=args.stage2_prefix_mask, fusion_gate=args.fusion_gate)
  tokenizer = _tokenizer.PaligemmaTokenizer(str(tok_path), max_len=cfg["size"]["max_token_len"])
  vocab = max(cfg["tokenizer"]["vocab_size"], tokenizer.vocab_size)
  with probe(args.probe), tempfile.TemporaryDirectory() as tmp:
    arrays, meta = E.make_vla_data(cfg, tokenizer, pathlib.Path(tmp))
    if args.probe == "goal_in_state":   # pad the action chunks to the model's action_dim
      arrays["actions"] = np.pad(arrays["actions"], ((0, 0), (0, 0), (0, 2)))
    t = time.time()
    mc, params, _ = E.run_recipe_seed(cfg, args.recipe, args.seed, arrays, str(npz), vocab, {}, lambda m: None)
    train_s = time.time() - t
    policy = vla.make_policy(mc, params, flow_steps=cfg["size"]["flow_steps"])
    out, e = {}, cfg["eval"]
    for split, (state, tokens, masks, _) in E.eval_sets(cfg, tokenizer, meta, args.seed, splits).items():
      ok, target, anyh = vla.rollout(policy, state, tokens, masks, steps=e["max_steps"], replan=e["replan"],
                                     seed=args.seed, chunk=len(tokens), return_grasp=True, return_any_held=True)
      out[split] = dict(success=float(ok.mean()), target_grasped=float(target.mean()), any_held=float(anyh.mean()),
                        n=len(ok))
  print(json.dumps(dict(probe=args.probe, recipe=args.recipe, steps=args.steps, batch_size=args.batch_size,
                        layout=args.layout, clean_labels=bool(args.clean_labels),
                        stage2_prefix_mask=args.stage2_prefix_mask, fusion_gate=args.fusion_gate, seed=args.seed,
                        expert_success=meta["expert_success"], train_s=round(train_s, 1), splits=out)))


if __name__ == "__main__":
  main()
