"""Open-loop action error of a testbed run's saved policies: has a head learned the demonstrated mapping at all?

  python -m apt_jax.testbed.openloop --workdir out/testbed_v2_gr00t [--workdir ...] [--split seen]
      [--recipes r1,r2] [--out F.json]

Closed-loop success mixes two things: whether the head predicts the expert's action in the states the expert
visits, and what its errors do over an episode. This separates the first: on each seed's `--split` episodes the
noise-free expert is rolled out, and at the replan points (steps 0, 4, 8, 12) every saved policy predicts an action
chunk from the rendered frame, the state and the instruction; its first action is compared with the expert's
action in that state. Reported per arm/recipe, mean over seeds: the L1 error of the move (2 dims, in [-1, 1]),
whether the gripper command has the expert's sign, and the L1 move error of the zero action (the scale to read
the first against).

Letters: n episodes, S replan points.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import numpy as np

from apt_jax.models import tokenizer as _tokenizer
from apt_jax.testbed import evaluate as _evaluate
from apt_jax.testbed import experiment
from apt_jax.testbed import language as L
from apt_jax.testbed import tabletop as T
from apt_jax.testbed import vla

AT_STEPS = (0, 4, 8, 12)  # the closed-loop rollouts' replan points (eval.replan 4)


def action_error(policy, state: T.State, tokens, mask, *, at_steps=AT_STEPS, seed: int = 0) -> dict:
  """policy(rng, batch) -> actions [n, AH, 3]; the expert's episodes from `state` [n] -> {"move": L1 move error
  [S, n], "grip": gripper sign agrees [S, n], "zero": L1 move error of the zero action [S, n]}."""
  *_, scenes, _ = T.rollout_expert(state, max(at_steps) + 1, render_images=False)
  move, grip, zero = [], [], []
  for t in at_steps:
    s = scenes[t]
    expert = T.expert_action(s)                                                                        # [n, 3]
    batch = vla.make_batch(T.render(s), T.observe_state(s), tokens, mask)
    a = np.asarray(policy(jax.random.key(seed * 1009 + t), batch))[:, 0]                               # [n, 3]
    move.append(np.abs(a[:, :2] - expert[:, :2]).mean(-1))
    grip.append(np.sign(a[:, 2]) == np.sign(expert[:, 2]))
    zero.append(np.abs(expert[:, :2]).mean(-1))
  return dict(move=np.stack(move), grip=np.stack(grip), zero=np.stack(zero))


def openloop(workdirs, *, split: str = "seen", recipes=None, episodes: int | None = None, log=print) -> dict:
  """-> {"rows": one per (workdir, arm, recipe, seed), "table": {arm/recipe: mean over seeds}}."""
  if split not in L.SPLITS:
    raise ValueError(f"--split {split!r}; expected one of {L.SPLITS}")
  rows = []
  for workdir in map(pathlib.Path, workdirs):
    cfg_path = workdir / "config.json"
    if not cfg_path.exists():
      raise FileNotFoundError(f"{cfg_path} not found: not a testbed workdir")
    cfg = json.loads(cfg_path.read_text())
    policies = _evaluate.saved_policies(workdir, recipes=recipes)
    if not policies:
      raise FileNotFoundError(f"no saved policies under {workdir}/<arm>/<recipe>/s<seed>/checkpoints")
    for arm, recipe, seed, step_dir in policies:
      train = L.training_episodes(arm, cfg["data"]["episodes"], seed)
      eps = L.eval_episodes(arm, split, episodes or cfg["eval"]["episodes_per_split"], seed, train)
      mc, params = experiment.load_policy(step_dir)
      tokenizer = _tokenizer.PaligemmaTokenizer(str(step_dir / "assets" / "tokenizer.model"),
                                                max_len=mc.max_token_len)
      tok = [tokenizer.tokenize(s) for s in eps.instructions]
      err = action_error(vla.make_policy(mc, params, flow_steps=cfg["eval"]["flow_steps"]), eps.state,
                         np.stack([t for t, _ in tok]), np.stack([m for _, m in tok]), seed=seed)
      row = dict(head=cfg.get("head", "pi0"), objective=mc.objective, arm=arm, recipe=recipe, seed=seed, split=split,
                 flow_steps=cfg["eval"]["flow_steps"], **{k: float(v.mean()) for k, v in err.items()})
      rows.append(row)
      log(f"  {arm}/{recipe} s{seed}: move L1 {row['move']:.3f} (zero action {row['zero']:.3f}), "
          f"gripper sign {row['grip']:.2f}")
  return dict(split=split, rows=rows, table=table_of(rows))


def table_of(rows) -> dict:
  """{"head[objective]/arm/recipe": mean over seeds of move, grip, zero; number of seeds}."""
  name = lambda r: f"{r['head']}[{r['objective']}]/{r['arm']}/{r['recipe']}"
  table = {}
  for key in dict.fromkeys(map(name, rows)):
    rs = [r for r in rows if name(r) == key]
    table[key] = {k: float(np.mean([r[k] for r in rs])) for k in ("move", "grip", "zero")} | dict(seeds=len(rs))
  return table


def markdown(result: dict) -> str:
  lines = [f"Open-loop first action on the expert's {result['split']!r} states (steps {AT_STEPS}), mean over seeds.",
           "", "| head/arm/recipe | move L1 | zero action's move L1 | gripper sign agrees | seeds |",
           "|---|---|---|---|---|"]
  for name, c in result["table"].items():
    lines.append(f"| {name} | {c['move']:.3f} | {c['zero']:.3f} | {c['grip']:.2f} | {c['seeds']} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", action="append", required=True, help="a testbed workdir (repeat for several)")
  p.add_argument("--split", default="seen", choices=L.SPLITS)
  p.add_argument("--recipes", default=None, help="comma-separated (default: every saved recipe)")
  p.add_argument("--episodes", type=int, default=None, help="per seed (default: the run's episodes_per_split)")
  p.add_argument("--out", default=None, help="also write rows and table as JSON here")
  args = p.parse_args(argv)
  _evaluate.report_cli(lambda: openloop(args.workdir, split=args.split, episodes=args.episodes,
                                        recipes=args.recipes.split(",") if args.recipes else None,
                                        log=lambda m: print(m, file=sys.stderr)), markdown, args.out)


if __name__ == "__main__":
  main()
