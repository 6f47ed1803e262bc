"""The pre-registered statistics (docs/testbed_v2_protocol.md §6): per-seed success rates from per-episode rows,
paired seed-level t-intervals, the primary endpoint and its reading, and Wilson intervals for pooled episodes.

A row (results.jsonl) is one episode: {arm, recipe, seed, split, episode, success, grasp, flow_steps, ...}.
"""

from __future__ import annotations

import collections
import math

import numpy as np
from scipy import stats as _scipy_stats

VERDICTS = ("supports", "contradicts", "inconclusive")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
  """Wilson score interval of k successes in n trials."""
  if n == 0:
    return (0.0, 1.0)
  p = k / n
  d = 1 + z * z / n
  c = (p + z * z / (2 * n)) / d
  h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
  return (max(0.0, c - h), min(1.0, c + h))


def t_interval(x, level: float = 0.95) -> dict:
  """Mean of x with a two-sided Student-t interval (df = n - 1); a single value gets an infinite interval."""
  x = np.asarray(x, float)
  n, mean = len(x), float(np.mean(x)) if len(x) else float("nan")
  if n < 2:
    return dict(mean=mean, lo=-math.inf, hi=math.inf, n=n, sd=float("nan"))
  sd = float(np.std(x, ddof=1))
  half = float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
  return dict(mean=mean, lo=mean - half, hi=mean + half, n=n, sd=sd)


def success_by_seed(rows, *, arm: str, recipe: str, split: str, key: str = "success", flow_steps=None) -> dict:
  """-> {seed: fraction of that seed's episodes with `key` true}."""
  acc = collections.defaultdict(list)
  for r in rows:
    if (r["arm"], r["recipe"], r["split"]) == (arm, recipe, split) and (flow_steps is None
                                                                         or r["flow_steps"] == flow_steps):
      acc[r["seed"]].append(bool(r[key]))
  return {s: float(np.mean(v)) for s, v in sorted(acc.items())}


def paired_contrast(rows, *, arm: str, recipe: str, baseline: str, split: str, flow_steps=None,
                    level: float = 0.95) -> dict:
  """d_s = success(recipe) - success(baseline) over the seeds both have; mean with a paired t-interval."""
  a = success_by_seed(rows, arm=arm, recipe=recipe, split=split, flow_steps=flow_steps)
  b = success_by_seed(rows, arm=arm, recipe=baseline, split=split, flow_steps=flow_steps)
  seeds = sorted(set(a) & set(b))
  d = [a[s] - b[s] for s in seeds]
  return dict(arm=arm, recipe=recipe, baseline=baseline, split=split, seeds=seeds, d=d,
              **t_interval(d, level))


def verdict(contrasts: list[dict], *, recipes, splits, margin: float = 0.10) -> str:
  """The protocol's reading of the primary contrasts (one per recipe x split):
  supports     some recipe has every split's interval above 0;
  contradicts  every recipe x split interval's upper bound is below `margin`;
  inconclusive otherwise."""
  by = {(c["recipe"], c["split"]): c for c in contrasts}
  missing = [(r, s) for r in recipes for s in splits if (r, s) not in by]
  if missing:
    raise ValueError(f"primary contrasts missing for {missing}")
  if any(all(by[r, s]["lo"] > 0 for s in splits) for r in recipes):
    return "supports"
  if all(by[r, s]["hi"] < margin for r in recipes for s in splits):
    return "contradicts"
  return "inconclusive"


def primary_endpoint(rows, endpoint: dict, flow_steps=None) -> dict:
  """endpoint: {arm, baseline, recipes, splits, level, margin} (the config's `stats` block) -> contrasts + verdict."""
  contrasts = [paired_contrast(rows, arm=endpoint["arm"], recipe=r, baseline=endpoint["baseline"], split=s,
                               flow_steps=flow_steps, level=endpoint["level"])
               for r in endpoint["recipes"] for s in endpoint["splits"]]
  return dict(contrasts=contrasts, verdict=verdict(contrasts, recipes=endpoint["recipes"], splits=endpoint["splits"],
                                                   margin=endpoint["margin"]))
