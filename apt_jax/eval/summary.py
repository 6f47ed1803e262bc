"""Success rates of LIBERO / LIBERO-PRO episode records with Wilson 95% intervals: per suite, per task, and the
APT paper's Table 1 aggregation. Written as `summary.md`, `summary.json` and `summary.png` (bars per suite).

Table 1 rows (episodes pooled over the four base suites spatial / object / goal / 10 that were run):
  clean = base suites, object = `_object`, position = `_swap`, semantic = `_lan`, task = `_task`,
  average = mean of the position and task rates (the paper's reported column; its interval pools both).
"""

from __future__ import annotations

import collections
import json
import pathlib

from apt_jax.eval import libero as _libero
from apt_jax.testbed import stats as _stats

ROWS = ("clean", "object", "position", "semantic", "task", "average")
_ROW_OF_PERTURBATION = {None: "clean", "object": "object", "swap": "position", "lan": "semantic", "task": "task"}


def rate(k: int, n: int) -> dict:
  return {"rate": k / n if n else 0.0, "k": k, "n": n, "ci95": list(_stats.wilson(k, n))}


def by_checkpoint(records) -> dict:
  out = collections.defaultdict(list)
  for r in records:
    out[r["checkpoint"]].append(r)
  return dict(out)


def per_suite(records) -> dict:
  """suite -> rate (suites in SUITES order)."""
  counts = collections.defaultdict(lambda: [0, 0])
  for r in records:
    counts[r["suite"]][0] += bool(r["success"])
    counts[r["suite"]][1] += 1
  return {s: rate(*counts[s]) for s in _libero.SUITES if s in counts}


def per_task(records) -> dict:
  """"suite/task_id" -> rate plus the instruction sent."""
  counts = collections.defaultdict(lambda: [0, 0])
  text = {}
  for r in records:
    key = f"{r['suite']}/{int(r['task_id'])}"
    counts[key][0] += bool(r["success"])
    counts[key][1] += 1
    text[key] = r["instruction"]
  order = lambda key: (_libero.SUITES.index(key.split("/")[0]), int(key.split("/")[1]))
  return {key: dict(rate(*counts[key]), instruction=text[key]) for key in sorted(counts, key=order)}


def table1(records) -> dict:
  """Table 1 rows (module docstring) for the rows with episodes; `average` only when position and task both ran."""
  counts = collections.defaultdict(lambda: [0, 0])
  for r in records:
    if _libero.base_suite(r["suite"]) == "libero_90":
      continue
    row = _ROW_OF_PERTURBATION[_libero.perturbation(r["suite"])]
    counts[row][0] += bool(r["success"])
    counts[row][1] += 1
  out = {row: rate(*counts[row]) for row in ROWS if row in counts}
  if "position" in out and "task" in out:
    p, t = out["position"], out["task"]
    out["average"] = dict(rate(p["k"] + t["k"], p["n"] + t["n"]), rate=(p["rate"] + t["rate"]) / 2)
  return out


def summarize(records) -> dict:
  return {ckpt: {"suites": per_suite(rs), "tasks": per_task(rs), "table1": table1(rs), "episodes": len(rs),
                 "mean_seconds_per_episode": sum(r["seconds"] for r in rs) / len(rs),
                 "mean_env_seconds_per_step": (sum(r["env_seconds"] for r in rs)
                                               / max(1, sum(r["steps"] + _libero.NUM_STEPS_WAIT for r in rs)))}
          for ckpt, rs in by_checkpoint(records).items()}


def cell(r: dict) -> str:
  return f"{r['rate']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] ({r['k']}/{r['n']})"


def markdown(summary: dict) -> str:
  """Table 1 rows and per-suite rates (checkpoints as rows), then per-task rates of each checkpoint."""
  parts = []
  for title, field in (("Table 1 aggregation", "table1"), ("Per suite", "suites")):
    tab = {ckpt: s[field] for ckpt, s in summary.items()}
    cols = [c for c in (ROWS if field == "table1" else _libero.SUITES) if any(c in row for row in tab.values())]
    lines = ["| checkpoint | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {ckpt} | " + " | ".join(cell(row[c]) if c in row else "" for c in cols) + " |"
              for ckpt, row in tab.items()]
    parts.append(f"### {title} (success rate, Wilson 95% CI, successes/episodes)\n\n" + "\n".join(lines))
  for ckpt, s in summary.items():
    lines = ["| suite/task | instruction | success |", "|---|---|---|"]
    lines += [f"| {key} | {t['instruction']} | {cell(t)} |" for key, t in s["tasks"].items()]
    parts.append(f"### Per task: {ckpt} ({s['episodes']} episodes, {s['mean_seconds_per_episode']:.1f} s per "
                 f"episode, {s['mean_env_seconds_per_step']:.3f} s per env step)\n\n" + "\n".join(lines))
  return "\n\n".join(parts) + "\n"


def write(out_dir, records) -> str:
  """summary.md / .json / .png under out_dir; returns the markdown."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  if not records:
    raise ValueError(f"no episode records to summarize in {out_dir}")
  summary = summarize(records)
  md = markdown(summary)
  (out_dir / "summary.md").write_text(md)
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
  plot(summary, out_dir / "summary.png")
  return md


def plot(summary: dict, path) -> None:
  """Bars per suite (one per checkpoint) with Wilson 95% error bars."""
  import matplotlib as mpl
  mpl.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  suites = [s for s in _libero.SUITES if any(s in v["suites"] for v in summary.values())]
  width = 0.8 / len(summary)
  fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(suites) + 2), 4))
  for i, (ckpt, v) in enumerate(summary.items()):
    r = [v["suites"].get(s, rate(0, 0)) for s in suites]
    rates = np.array([x["rate"] for x in r])
    err = [rates - [x["ci95"][0] for x in r], [x["ci95"][1] for x in r] - rates]
    ax.bar(np.arange(len(suites)) + (i - (len(summary) - 1) / 2) * width, rates, width, yerr=err, capsize=2,
           label=ckpt)
  ax.set_xticks(np.arange(len(suites)), [s.removeprefix("libero_") for s in suites], rotation=30, ha="right")
  ax.set_ylabel("success rate (Wilson 95% CI)")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
