"""Tables, the pre-registered endpoint and plots from per-episode rows (results.jsonl) -> results.md, results.json,
results_<arm>.png, contrasts.png. Cells: mean over seeds [95% t-interval over seeds] with one seed: pooled
k/n episodes."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from apt_jax.testbed import language as L
from apt_jax.testbed import stats


def cell(rows, *, arm, recipe, split, flow_steps, key="success") -> dict:
  per_seed = stats.success_by_seed(rows, arm=arm, recipe=recipe, split=split, key=key, flow_steps=flow_steps)
  xs = [bool(r[key]) for r in rows if (r["arm"], r["recipe"], r["split"], r["flow_steps"]) == (arm, recipe, split,
                                                                                                  flow_steps)]
  k, n = int(sum(xs)), len(xs)
  t = stats.t_interval(list(per_seed.values()))
  return dict(per_seed=per_seed, k=k, n=n, wilson=stats.wilson(k, n), mean=t["mean"], lo=t["lo"], hi=t["hi"])


def _fmt(c) -> str:
  if c["n"] == 0:
    return "-"
  if len(c["per_seed"]) >= 2:
    return f"{c['mean']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}]"
  return f"{c['k'] / c['n']:.2f} ({c['k']}/{c['n']})"


def table(rows, arm, recipes, labels, flow_steps, key="success") -> tuple[str, dict]:
  cells = {r: {s: cell(rows, arm=arm, recipe=r, split=s, flow_steps=flow_steps, key=key) for s in L.SPLITS}
           for r in recipes}
  lines = ["| recipe | " + " | ".join(L.SPLITS) + " |", "|---|" + "---|" * len(L.SPLITS)]
  lines += [f"| {labels.get(r, r)} | " + " | ".join(_fmt(cells[r][s]) for s in L.SPLITS) + " |" for r in recipes]
  return "\n".join(lines), cells


def _contrast_line(c) -> str:
  d = ", ".join(f"{x:+.2f}" for x in c["d"])
  return (f"| {c['recipe']} - {c['baseline']} | {c['split']} | {c['mean']:+.3f} | [{c['lo']:+.3f}, {c['hi']:+.3f}] "
          f"| {d} |")


def contrasts_markdown(contrasts) -> str:
  lines = ["| contrast | split | mean d | 95% t-interval | per seed |", "|---|---|---|---|---|"]
  return "\n".join(lines + [_contrast_line(c) for c in contrasts])


SECONDARY = (("ki_2stage", "ctrl_taskonly_s1"), ("ctrl_s1_pi0", "pi0_joint"),
             ("ki_2stage", "ctrl_pi0_equal_compute"), ("ki_2stage", "abl_ki_sg_only"), ("ki", "pi0_joint"))


def probe_table(probe: dict) -> str:
  kinds = list(next(iter(probe.values())))
  lines = ["| split | " + " | ".join(f"{k} object / container" for k in kinds) + " |", "|---|" + "---|" * len(kinds)]
  for split, row in probe.items():
    lines.append(f"| {split} | " + " | ".join(f"{row[k]['object']:.2f} / {row[k]['container']:.2f}" for k in kinds)
                 + " |")
  return "\n".join(lines)


def plot_arm(cells, path, labels, title) -> None:
  import matplotlib as mpl
  mpl.use("Agg")
  import matplotlib.pyplot as plt

  recipes = list(cells)
  w = 0.8 / len(recipes)
  fig, ax = plt.subplots(figsize=(12, 4))
  for i, r in enumerate(recipes):
    m = np.array([cells[r][s]["mean"] if cells[r][s]["n"] else np.nan for s in L.SPLITS])
    lo = np.array([cells[r][s]["lo"] for s in L.SPLITS])
    hi = np.array([cells[r][s]["hi"] for s in L.SPLITS])
    err = None if not np.isfinite(lo).all() else [np.clip(m - lo, 0, 1), np.clip(hi - m, 0, 1)]
    ax.bar(np.arange(len(L.SPLITS)) + (i - (len(recipes) - 1) / 2) * w, m, w, yerr=err, capsize=2,
           label=labels.get(r, r))
  ax.set_xticks(np.arange(len(L.SPLITS)), L.SPLITS, rotation=15)
  ax.set_ylabel("success (mean over seeds, 95% t-CI)")
  ax.set_ylim(0, 1)
  ax.set_title(title)
  ax.legend(fontsize=6, ncol=2)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_contrasts(contrasts, path) -> None:
  import matplotlib as mpl
  mpl.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(contrasts)))
  for i, c in enumerate(contrasts):
    lo, hi = (max(c["lo"], -1), min(c["hi"], 1)) if np.isfinite(c["lo"]) else (c["mean"], c["mean"])
    ax.plot([lo, hi], [i, i], "k-")
    ax.plot(c["d"], [i] * len(c["d"]), "o", ms=3, alpha=0.5)
    ax.plot(c["mean"], i, "ks")
  ax.axvline(0, color="grey", lw=1)
  ax.set_yticks(range(len(contrasts)), [f"{c['arm']}: {c['recipe']} - {c['baseline']} ({c['split']})"
                                        for c in contrasts], fontsize=7)
  ax.set_xlabel("success difference per seed (dots), mean and 95% paired t-interval")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(workdir, cfg, rows, *, labels: dict, timings: dict, command: str = "") -> dict:
  """Writes results.md/json and the plots; returns the summary (with its markdown)."""
  workdir = pathlib.Path(workdir)
  f = cfg.eval.flow_steps
  recipes = [r for r in cfg.recipes if any(row["recipe"] == r for row in rows)]
  arms = [a for a in L.ARMS if any(row["arm"] == a for row in rows)]   # every arm run in this workdir
  seeds = sorted({row["seed"] for row in rows})
  md = [(f"# Testbed v2 results\n\nCommand: `{command}`. Seeds {seeds}; {f} flow steps. Cells: mean success "
        "over seeds [95% t-interval over seeds]; with one seed, k/n episodes (Wilson intervals in results.json).\n")]
  summary = dict(command=command, seeds=seeds, arms=arms, timings=timings, tables={})
  for arm in arms:
    text, cells = table(rows, arm, recipes, labels, f)
    gtext, gcells = table(rows, arm, recipes, labels, f, key="grasp")
    summary["tables"][arm] = dict(success=cells, grasp=gcells)
    plot_arm(cells, workdir / f"results_{arm}.png", labels, f"{arm} arm: success per split")
    md += [f"## {arm} arm: success\n", text, f"\n### {arm} arm: named object grasped\n", gtext, ""]
  endpoint = cfg.stats.to_dict()
  contrasts = []
  if endpoint["arm"] in arms and all(r in recipes for r in (endpoint["baseline"], *endpoint["recipes"])):
    primary = stats.primary_endpoint(rows, endpoint, flow_steps=f)
    summary["primary"] = primary
    contrasts += primary["contrasts"]
    title = ("Primary endpoint (pre-registered)" if cfg.head == "pi0" else
             f"{cfg.head}: two-stage gain over its joint run (Fig. 4), read with the primary endpoint's rule")
    md += [f"## {title}\n", contrasts_markdown(primary["contrasts"]),
           f"\nReading (docs/testbed_v2_protocol.md §6): **{primary['verdict']}**"
           + (" (one seed: no interval; the demo cannot decide)" if len(seeds) < 2 else ""), ""]
  secondary = []
  for arm in arms:
    pairs = [(r, endpoint["baseline"]) for r in endpoint["recipes"]] if arm != endpoint["arm"] else []
    for a, b in pairs + list(SECONDARY):
      if a in recipes and b in recipes:
        secondary += [stats.paired_contrast(rows, arm=arm, recipe=a, baseline=b, split=s, flow_steps=f)
                      for s in endpoint["splits"]]
  if secondary:
    summary["secondary"] = secondary
    contrasts += secondary
    md += ["## Secondary contrasts\n", contrasts_markdown(secondary), ""]
  sweep = sorted({r["flow_steps"] for r in rows})
  if len(sweep) > 1:
    lines = ["| arm | recipe | " + " | ".join(f"{s} steps" for s in sweep) + " |", "|---|---|" + "---|" * len(sweep)]
    for arm in arms:
      for r in recipes:
        vals = [np.mean([x["success"] for x in rows if (x["arm"], x["recipe"], x["flow_steps"]) == (arm, r, s)]
                        or [np.nan]) for s in sweep]
        lines.append(f"| {arm} | {r} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    md += ["## Sampling steps (success over all splits and seeds, saved checkpoints)\n", "\n".join(lines), ""]
  if contrasts:
    plot_contrasts(contrasts, workdir / "contrasts.png")
  vlm = {}
  for seed in seeds:
    p = workdir / "vlm" / f"s{seed}" / "vlm.json"
    if p.exists():
      info = json.loads(p.read_text())
      vlm[seed] = dict(eval_accuracy=info["eval_accuracy"], probe=info["probe"], attempt=info.get("attempt", 0),
                       failed_attempts=info.get("failed_attempts", []))
      failed = vlm[seed]["failed_attempts"] or "none"
      md += [(f"## VLM seed {seed} (attempt {vlm[seed]['attempt']}; failed before: {failed}): probe accuracy per "
             "split (object / container)\n"), probe_table(info["probe"]), ""]
  summary["vlm"] = vlm
  md += [f"Timings (s): {json.dumps(timings)}"]
  summary["markdown"] = "\n".join(md)
  (workdir / "results.md").write_text(summary["markdown"] + "\n")
  (workdir / "results.json").write_text(json.dumps(summary, indent=1, default=str))
  return summary
