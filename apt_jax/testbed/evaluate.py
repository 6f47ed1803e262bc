"""Evaluate a testbed run's saved policies on your own phrasings, without retraining.

  python -m apt_jax.testbed.evaluate --workdir out/demo --instructions my_phrasings.txt [--split seen] [--arm A]
      [--recipes pi0_joint,ki_2stage] [--episodes 24] [--flow_steps 10] [--out results.json]

The instruction file holds one template per line with {object} and {container} slots, e.g.
"could you put the {object} into the {container}"; blank lines and lines starting with # are skipped. Each
template is filled with the canonical names of every episode's target ("red block", "bowl") on the split's scenes
(the run's own constructions and seeds), and every saved policy (<workdir>/<arm>/<recipe>/s<seed>/checkpoints/<step>)
is rolled out closed-loop. Output: success per template and recipe, pooled over seeds with a Wilson 95% interval,
and the mean over seeds with a t-interval when there are several.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import string
import sys

import numpy as np

from apt_jax.models import tokenizer as _tokenizer
from apt_jax.testbed import experiment
from apt_jax.testbed import language as L
from apt_jax.testbed import stats
from apt_jax.testbed import tabletop as T
from apt_jax.testbed import vla

SLOTS = ("object", "container")


def read_templates(path) -> list[str]:
  """Templates from a file; raises ValueError naming the file and line for a template without both slots or with
  another slot."""
  out = []
  for n, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    try:
      fields = {f for _, f, _, _ in string.Formatter().parse(line) if f is not None}
    except ValueError as e:
      raise ValueError(f"{path}:{n}: malformed template {line!r}: {e}") from None
    if fields != set(SLOTS):
      raise ValueError(f"{path}:{n}: template {line!r} must use exactly the slots {{object}} and {{container}}; "
                       f"has {sorted(fields)}")
    out.append(line)
  if not out:
    raise ValueError(f"{path}: no templates")
  return out


def fill(template: str, pair) -> str:
  colour, shape = T.OBJECTS[pair[0]]
  return template.format(object=f"{colour} {shape}", container=T.CONTAINERS[pair[1]])


def saved_policies(workdir: pathlib.Path, arms=None, recipes=None) -> list[tuple[str, str, int, pathlib.Path]]:
  """-> [(arm, recipe, seed, step dir)] of the run's saved policies (latest step of each)."""
  found = []
  for ckpt in sorted(workdir.glob("*/*/s*/checkpoints")):
    arm, recipe, seed = ckpt.parts[-4], ckpt.parts[-3], int(ckpt.parts[-2][1:])
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit() and (p / "params").exists())
    if arm in L.ARMS and steps and (arms is None or arm in arms) and (recipes is None or recipe in recipes):
      found.append((arm, recipe, seed, ckpt / str(steps[-1])))
  return found


def evaluate(workdir, templates, *, split="seen", arms=None, recipes=None, episodes=None, flow_steps=None,
             log=print) -> dict:
  """-> {"rows": per-episode rows, "table": {template: {arm/recipe: cell}}}."""
  workdir = pathlib.Path(workdir)
  cfg_path = workdir / "config.json"
  if not cfg_path.exists():
    raise FileNotFoundError(f"{cfg_path} not found: not a testbed workdir")
  cfg = json.loads(cfg_path.read_text())
  if split not in L.SPLITS:
    raise ValueError(f"--split {split!r}; expected one of {L.SPLITS}")
  policies = saved_policies(workdir, arms, recipes)
  if not policies:
    raise FileNotFoundError(f"no saved policies under {workdir}/<arm>/<recipe>/s<seed>/checkpoints")
  n = episodes or cfg["eval"]["episodes_per_split"]
  flow_steps = flow_steps or cfg["eval"]["flow_steps"]
  rows = []
  for arm, recipe, seed, step_dir in policies:
    train = L.training_episodes(arm, cfg["data"]["episodes"], seed)
    eps = L.eval_episodes(arm, split, n, seed, train)
    mc, params = experiment.load_policy(step_dir)
    tokenizer = _tokenizer.PaligemmaTokenizer(str(step_dir / "assets" / "tokenizer.model"), max_len=mc.max_token_len)
    policy = vla.make_policy(mc, params, flow_steps=flow_steps)
    for template in templates:
      instr = [fill(template, p) for p in eps.pairs]
      tok = [tokenizer.tokenize(s) for s in instr]
      ok = vla.rollout(policy, eps.state, np.stack([t for t, _ in tok]), np.stack([m for _, m in tok]),
                       steps=cfg["eval"]["max_steps"], replan=cfg["eval"]["replan"], seed=seed, chunk=len(instr))
      rows += [dict(arm=arm, recipe=recipe, seed=seed, split=template, episode=i, flow_steps=flow_steps,
                    success=bool(x), grasp=False, instruction=s) for i, (x, s) in enumerate(zip(ok, instr))]
      log(f"  {arm}/{recipe} s{seed} {template!r}: {np.mean(ok):.2f}")
  table = {}
  for template in templates:
    for arm, recipe in sorted({(a, r) for a, r, _, _ in policies}):
      per_seed = stats.success_by_seed(rows, arm=arm, recipe=recipe, split=template)
      xs = [r["success"] for r in rows if (r["arm"], r["recipe"], r["split"]) == (arm, recipe, template)]
      t = stats.t_interval(list(per_seed.values()))
      table.setdefault(template, {})[f"{arm}/{recipe}"] = dict(
          k=int(sum(xs)), n=len(xs), wilson=stats.wilson(int(sum(xs)), len(xs)), per_seed=per_seed, mean=t["mean"],
          lo=t["lo"], hi=t["hi"])
  return dict(split=split, flow_steps=flow_steps, rows=rows, table=table)


def markdown(result: dict) -> str:
  cols = list(next(iter(result["table"].values())))
  lines = [(f"Split {result['split']!r} scenes, {result['flow_steps']} flow steps; pooled success k/n [Wilson 95%]"
           "; mean over seeds [t 95%] when several."), "", "| template | " + " | ".join(cols) + " |",
           "|---|" + "---|" * len(cols)]
  for template, row in result["table"].items():
    cells = []
    for c in row.values():
      s = f"{c['k'] / c['n']:.2f} ({c['k']}/{c['n']}) [{c['wilson'][0]:.2f}, {c['wilson'][1]:.2f}]"
      if len(c["per_seed"]) >= 2:
        s += f"; {c['mean']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}]"
      cells.append(s)
    lines.append(f"| {template} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--instructions", required=True, help="one template per line with {object} and {container}")
  p.add_argument("--split", default="seen", choices=L.SPLITS, help="whose scenes and targets to use")
  p.add_argument("--arm", choices=L.ARMS, default=None)
  p.add_argument("--recipes", default=None, help="comma-separated (default: every saved recipe)")
  p.add_argument("--episodes", type=int, default=None, help="per seed (default: the run's episodes_per_split)")
  p.add_argument("--flow_steps", type=int, default=None)
  p.add_argument("--out", default=None, help="also write the result (rows and table) as JSON here")
  args = p.parse_args(argv)
  report_cli(lambda: evaluate(args.workdir, read_templates(args.instructions), split=args.split,
                              arms=[args.arm] if args.arm else None,
                              recipes=args.recipes.split(",") if args.recipes else None, episodes=args.episodes,
                              flow_steps=args.flow_steps, log=lambda m: print(m, file=sys.stderr)),
             markdown, args.out)


def report_cli(compute, markdown_fn, out) -> None:
  """The testbed CLIs' tail: `compute()` (bad input -> exit with its error), its markdown printed, its JSON to `out`."""
  try:
    result = compute()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(markdown_fn(result))
  if out:
    pathlib.Path(out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
