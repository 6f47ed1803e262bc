"""Success rates with Wilson 95% intervals (episodes pooled over seeds): markdown, JSON and a PNG bar plot."""

from __future__ import annotations

import json
import math
import pathlib


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
  if n == 0:
    return (0.0, 1.0)
  p = k / n
  d = 1 + z * z / n
  c = (p + z * z / (2 * n)) / d
  h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
  return (max(0.0, c - h), min(1.0, c + h))


def table(results: dict) -> dict:
  """results: recipe -> split -> list of 0/1 -> recipe -> split -> {rate, k, n, ci}."""
  out = {}
  for recipe, splits in results.items():
    out[recipe] = {}
    for split, xs in splits.items():
      k, n = int(sum(xs)), len(xs)
      out[recipe][split] = dict(rate=k / n if n else 0.0, k=k, n=n, ci95=wilson(k, n))
  return out


def markdown(tab: dict, labels: dict | None = None) -> str:
  splits = list(next(iter(tab.values())).keys())
  lines = ["| recipe | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
  for recipe, row in tab.items():
    cells = [f"{r['rate']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] ({r['k']}/{r['n']})" for r in row.values()]
    lines.append(f"| {(labels or {}).get(recipe, recipe)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(tab: dict, path, labels: dict | None = None) -> None:
  import matplotlib as mpl
  mpl.use("Agg")  # no display needed
  import matplotlib.pyplot as plt
  import numpy as np

  recipes = list(tab)
  splits = list(next(iter(tab.values())).keys())
  w = 0.8 / len(recipes)
  fig, ax = plt.subplots(figsize=(9, 4))
  for i, r in enumerate(recipes):
    rates = np.array([tab[r][s]["rate"] for s in splits])
    lo = rates - np.array([tab[r][s]["ci95"][0] for s in splits])
    hi = np.array([tab[r][s]["ci95"][1] for s in splits]) - rates
    ax.bar(np.arange(len(splits)) + (i - (len(recipes) - 1) / 2) * w, rates, w, yerr=[lo, hi], capsize=2,
           label=(labels or {}).get(r, r))
  ax.set_xticks(np.arange(len(splits)), splits)
  ax.set_ylabel("success rate (Wilson 95% CI)")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(workdir, results: dict, summary: dict, grasps: dict | None = None) -> str:
  """results (and optionally grasps: target object ever held): recipe -> split -> list of 0/1."""
  workdir = pathlib.Path(workdir)
  tab = table(results)
  md = markdown(tab, summary.get("labels"))
  if grasps is not None:
    gtab = table(grasps)
    summary = dict(summary, grasp_table=gtab)
    md += ("\n\nTarget object grasped at some point (the grounding half of the task), Wilson 95% CI:\n\n"
           + markdown(gtab, summary.get("labels")))
    plot(gtab, workdir / "results_grasp.png", summary.get("labels"))
  header = (f"Success rate per split (episodes pooled over seeds {list(summary['config']['seeds'])}), Wilson 95% CI."
            f"\nCommand: `{summary.get('command', '')}`\nVLM held-out exact-match: {summary['vlm_eval_accuracy']}\n\n")
  (workdir / "results.md").write_text(header + md + "\n")
  (workdir / "results.json").write_text(json.dumps(dict(table=tab, **summary), indent=1, default=str))
  plot(tab, workdir / "results.png", summary.get("labels"))
  return md
