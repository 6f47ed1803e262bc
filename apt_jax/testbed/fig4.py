"""The paper's Fig. 4 in the testbed: success per head x recipe x split, and the two-stage gain per head (Stage 1 -> 2
minus one-stage joint, per seed, paired) with seed-level t-intervals (stats.py, the protocol's statistics).

  python -m apt_jax.testbed.fig4 --results docs/testbed_v2_shortcut/results.jsonl.gz \
      out/testbed_v2_gr00t/results.jsonl out/testbed_v2_apt_expert/results.jsonl --out docs/testbed_v2_heads

Rows from several runs (results.jsonl[.gz]) are pooled; a row's head is its recipe's. A file given as NAME=PATH is
a variant of its head (e.g. `apt_expert_flow=out/x/results.jsonl`: the APT expert trained with another objective):
its rows become head NAME with recipes NAME:<recipe>, reported beside the others, never pooled with them. Each head
is read at its own sampler's protocol steps (flow 10, DDIM 20; a variant at its rows' one step count; `--steps
head=N` overrides). Split "all" = every split's episodes pooled per seed. Writes fig4.md, fig4.json,
fig4_success_<head>.png and fig4_gain.png in --out.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from apt_jax.testbed import experiment as E
from apt_jax.testbed import language as L
from apt_jax.testbed import report
from apt_jax.testbed import stats

# head -> (one-stage joint, its Stage 1 -> 2 recipes). The π row: Table 2's π0 / "2-stage only" / "+ VLM fine-tuning".
FIG4 = {
    "pi0": ("pi0_joint", ("apt_frozen", "apt_vlm_ft")),
    "gr00t": ("gr00t_joint", ("gr00t_2stage_frozen", "gr00t_2stage_vlm_ft")),
    "apt_expert": ("aptx_joint", ("aptx_2stage_frozen", "aptx_2stage_vlm_ft", "aptx_paper_2stage_frozen",
                                  "aptx_paper_2stage_vlm_ft")),
}
ALL = "all"


def default_steps() -> dict:
  """head -> the protocol's sampling steps: eval.flow_steps, or the head's own (DDIM: 20) where its size sets one."""
  cfg = E.base_config()
  return {h: cfg.head_size.to_dict().get(h, {}).get("flow_steps", cfg.eval.flow_steps) for h in FIG4}


def _head_of(heads: dict) -> dict:
  """recipe -> its head, over every head's joint and Stage 2 recipes."""
  return {r: h for h, (joint, two) in heads.items() for r in (joint, *two)}


def read_rows(paths) -> list[dict]:
  """Rows of every results file; `NAME=PATH`: a variant's rows, relabelled head NAME, recipe NAME:<recipe>."""
  head_of = _head_of(FIG4)
  out = []
  for spec in map(str, paths):
    name, _, path = spec.rpartition("=")
    path = pathlib.Path(path)
    if not path.exists():
      raise FileNotFoundError(f"--results: {path} does not exist")
    if name in FIG4:
      raise ValueError(f"--results {spec!r}: variant name {name!r} is a head's own; choose another")
    for row in E.read_rows(path):
      if name:
        if row["recipe"] not in head_of:
          raise ValueError(f"--results {spec!r}: recipe {row['recipe']!r} of a variant is not a Fig. 4 recipe")
        row = dict(row, head=name, variant_of=head_of[row["recipe"]], recipe=f"{name}:{row['recipe']}")
      out.append(row)
  return out


def heads_of(rows) -> dict:
  """FIG4 plus one entry per variant in `rows`: NAME -> its head's recipes, prefixed NAME:."""
  heads = dict(FIG4)
  for name, base in sorted({(r["head"], r["variant_of"]) for r in rows if "variant_of" in r}):
    joint, two = FIG4[base]
    heads[name] = (f"{name}:{joint}", tuple(f"{name}:{r}" for r in two))
  return heads


def variant_steps(rows) -> dict:
  """A variant's default steps: its rows' one step count, else its head's."""
  steps = {}
  for name in {r["head"] for r in rows if "variant_of" in r}:
    mine = [r for r in rows if r.get("head") == name]   # the π run's rows predate the head field
    counts, base = {r["flow_steps"] for r in mine}, mine[0]["variant_of"]
    steps[name] = counts.pop() if len(counts) == 1 else default_steps()[base]
  return steps


def select(rows, *, arm: str, steps: dict, heads: dict = FIG4) -> list[dict]:
  """The Fig. 4 recipes' rows of `arm` at each head's steps, plus every row again under split "all"."""
  head_of = _head_of(heads)
  out = [r for r in rows if r["arm"] == arm and r["recipe"] in head_of
         and r["flow_steps"] == steps[head_of[r["recipe"]]]]
  return out + [dict(r, split=ALL) for r in out]


def gains(rows, *, arm: str, level: float = 0.95, heads: dict = FIG4) -> list[dict]:
  """Paired two-stage gain per head, Stage 2 recipe and split (+ "all"): d_s = success(2-stage) - success(joint)."""
  present = {r["recipe"] for r in rows}
  out = []
  for head, (joint, two) in heads.items():
    for recipe in (r for r in two if r in present and joint in present):
      out += [dict(stats.paired_contrast(rows, arm=arm, recipe=recipe, baseline=joint, split=s, level=level),
                   head=head) for s in (*L.SPLITS, ALL)]
  return out


def gain_table(contrasts, heads: dict = FIG4) -> str:
  """Markdown: one row per head and Stage 2 recipe, one column per split (+ all): mean [95% interval]."""
  splits = (*L.SPLITS, ALL)
  lines = ["| head | Stage 1 -> 2 recipe (minus joint) | " + " | ".join(splits) + " |",
           "|---|---|" + "---|" * len(splits)]
  by = {(c["recipe"], c["split"]): c for c in contrasts}
  for head, (_, two) in heads.items():
    for r in (r for r in two if (r, ALL) in by):
      cells = [by[r, s] for s in splits]
      lines.append(f"| {head} | {r} | " + " | ".join(
          "-" if not c["n"] else f"{c['mean']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}]" if np.isfinite(c["lo"])
          else f"{c['mean']:+.2f}" for c in cells) + " |")
  return "\n".join(lines)


def plot_gains(contrasts, path, heads: dict = FIG4) -> None:
  import matplotlib as mpl
  mpl.use("Agg")
  import matplotlib.pyplot as plt

  order = [x for _, two in heads.values() for x in two]
  variants = sorted({c["recipe"] for c in contrasts}, key=order.index)
  splits = (*L.SPLITS, ALL)
  fig, ax = plt.subplots(figsize=(12, 4.5))
  w = 0.8 / len(variants)
  for i, recipe in enumerate(variants):
    cs = {c["split"]: c for c in contrasts if c["recipe"] == recipe}
    x = np.arange(len(splits)) + (i - (len(variants) - 1) / 2) * w
    m = np.array([cs[s]["mean"] if s in cs else np.nan for s in splits])
    lo = np.array([cs[s]["lo"] if s in cs else np.nan for s in splits])
    hi = np.array([cs[s]["hi"] if s in cs else np.nan for s in splits])
    finite = np.isfinite(lo) & np.isfinite(hi)                 # one seed: no interval, no bar
    err = [np.where(finite, np.clip(m - lo, 0, 2), 0), np.where(finite, np.clip(hi - m, 0, 2), 0)]
    head = next(h for h, (_, two) in heads.items() if recipe in two)
    ax.errorbar(x, m, yerr=err, fmt="o", capsize=2, label=f"{head}: {recipe} - {heads[head][0]}")
  ax.axhline(0, color="grey", lw=1)
  ax.set_xticks(np.arange(len(splits)), splits, rotation=15)
  ax.set_ylabel("gain: mean over seeds, 95% paired t-CI")
  ax.set_title("Fig. 4 in the testbed: Stage 1 -> 2 minus one-stage joint, per head")
  ax.legend(fontsize=7, ncol=2)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(rows, out, *, arm: str = "shortcut", steps: dict | None = None, level: float = 0.95) -> dict:
  """Tables, gains and plots of `rows` (all runs' rows) into `out`; returns the summary written to fig4.json."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  table = heads_of(rows)
  steps = {**default_steps(), **variant_steps(rows), **(steps or {})}
  rows = select(rows, arm=arm, steps=steps, heads=table)
  if not rows:
    raise ValueError(f"no Fig. 4 rows in arm {arm!r} at steps {steps} (recipes {table})")
  labels = {r: E.RECIPES[r].label for r in E.RECIPES}
  labels.update({f"{h}:{r}": f"{labels[r]} [{h}]" for h in table if h not in FIG4 for r in labels})
  heads = [h for h, (joint, two) in table.items() if any(r["recipe"] in (joint, *two) for r in rows)]
  seeds = sorted({r["seed"] for r in rows})
  md = [f"# Fig. 4 in the testbed ({arm} arm)\n",
        (f"Seeds {seeds}; sampling steps {steps}. Cells: mean success over seeds [95% t-interval over seeds]; with "
         "one seed, k/n episodes.\n")]
  summary = dict(arm=arm, steps=steps, seeds=seeds, tables={})
  for head in heads:
    joint, two = table[head]
    recipes = [r for r in (joint, *two) if any(x["recipe"] == r for x in rows)]
    text, cells = report.table(rows, arm, recipes, labels, steps[head])
    summary["tables"][head] = cells
    report.plot_arm(cells, out / f"fig4_success_{head}.png", labels, f"{head}: success per split ({arm} arm)")
    md += [f"## {head}: success\n", text, ""]
  summary["gains"] = gains(rows, arm=arm, level=level, heads=table)
  md += ["## Two-stage gain per head (Stage 1 -> 2 minus joint, paired over seeds)\n",
         gain_table(summary["gains"], table),
         "\nPer seed:\n", report.contrasts_markdown(summary["gains"]), ""]
  if summary["gains"]:
    plot_gains(summary["gains"], out / "fig4_gain.png", table)
  summary["markdown"] = "\n".join(md)
  (out / "fig4.md").write_text(summary["markdown"] + "\n")
  (out / "fig4.json").write_text(json.dumps(summary, indent=1, default=str))
  return summary


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--results", nargs="+", required=True,
                 help="results.jsonl[.gz] files of the runs to pool; NAME=PATH: a variant of its rows' head")
  p.add_argument("--out", required=True)
  p.add_argument("--arm", default="shortcut", choices=L.ARMS)
  p.add_argument("--steps", nargs="*", default=[], help="head=N: read head at N sampling steps")
  args = p.parse_args(argv)
  try:
    rows = read_rows(args.results)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  steps, known = {}, heads_of(rows)
  for s in args.steps:
    head, _, n = s.partition("=")
    if head not in known or not n.isdigit():
      raise SystemExit(f"--steps {s!r}: expected head=N with head in {tuple(known)}")
    steps[head] = int(n)
  print(write(rows, args.out, arm=args.arm, steps=steps)["markdown"])


if __name__ == "__main__":
  main()
