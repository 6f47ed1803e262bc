"""Normalization statistics in openpi's `norm_stats.json` format, and the two normalizations openpi uses.

File format (openpi `shared/normalize.py`), one entry per key (apt_jax writes `state` and `actions`):

    {"norm_stats": {"state": {"mean": [...], "std": [...], "q01": [...], "q99": [...]}, "actions": {...}}}

* z-score (π0):        `(x - mean) / (std + 1e-6)`
* quantile (π0.5/FAST): `(x - q01) / (q99 - q01 + 1e-6) * 2 - 1`

Statistics cover the raw (unpadded) dimensions. When `x` has more dimensions than the stats (data zero-padded to the
model's action_dim = 32), the stats are padded the way openpi's `Unnormalize` pads them: mean 0 / std 1 for z-score,
and pass-through for quantile normalization; when the stats are longer, they are truncated to `x`'s width (openpi's
`Normalize`). So padded zeros stay (almost) zero and `unnormalize(normalize(x))` round-trips.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping

import numpy as np

EPS = 1e-6
FILE_NAME = "norm_stats.json"


@dataclasses.dataclass(frozen=True)
class NormStats:
  """Per-dimension statistics of one key; all arrays have shape [D]."""

  mean: np.ndarray
  std: np.ndarray
  q01: np.ndarray | None = None
  q99: np.ndarray | None = None

  def to_json(self) -> dict:
    out = {"mean": _to_list(self.mean), "std": _to_list(self.std)}
    out["q01"] = None if self.q01 is None else _to_list(self.q01)
    out["q99"] = None if self.q99 is None else _to_list(self.q99)
    return out

  @classmethod
  def from_json(cls, d: dict) -> NormStats:
    arr = lambda v: None if v is None else np.asarray(v, np.float64)
    return cls(mean=arr(d["mean"]), std=arr(d["std"]), q01=arr(d.get("q01")), q99=arr(d.get("q99")))

  @property
  def dim(self) -> int:
    return int(np.shape(self.mean)[-1])


def _to_list(x) -> list[float]:
  return [float(v) for v in np.asarray(x, np.float64).reshape(-1)]


class RunningStats:
  """Accumulates mean, std, q01 and q99 over batches of rows `[..., D]` (all leading axes are flattened).

  Unlike openpi (5000-bin histograms): mean and std are exact (float64 running sums; std is the population std, as
  np.std) and q01/q99 are exact `np.quantile` (linear interpolation) of every row, up to `max_quantile_samples` rows.
  Past that, q01/q99 come from a uniform reservoir sample of that many rows (seeded, so reproducible); with 1M rows
  the sampling error of a 1% quantile is about 1e-4 in probability, below a 5000-bin histogram's resolution.
  """

  def __init__(self, max_quantile_samples: int = 1_000_000, seed: int = 0):
    self._cap = int(max_quantile_samples)
    self._rng = np.random.default_rng(seed)
    self._count = 0
    self._sum = None
    self._sumsq = None
    self._rows: list[np.ndarray] = []  # exact mode: all rows seen
    self._num_rows_kept = 0
    self._reservoir: np.ndarray | None = None  # sampling mode

  @property
  def count(self) -> int:
    return self._count

  def update(self, batch) -> None:
    batch = np.asarray(batch, np.float64)
    if batch.ndim == 0:
      raise ValueError("RunningStats.update expects rows [..., D], got a scalar")
    batch = batch.reshape(-1, batch.shape[-1])
    if self._sum is None:
      self._sum = np.zeros(batch.shape[-1])
      self._sumsq = np.zeros(batch.shape[-1])
    elif batch.shape[-1] != self._sum.shape[0]:
      raise ValueError(f"RunningStats: rows of width {batch.shape[-1]} after rows of width {self._sum.shape[0]}")
    n = batch.shape[0]
    if n == 0:
      return
    self._sum += batch.sum(0)
    self._sumsq += np.square(batch).sum(0)
    first = self._count
    self._count += n
    if self._reservoir is None and self._num_rows_kept + n <= self._cap:
      self._rows.append(batch)
      self._num_rows_kept += n
      return
    if self._reservoir is None:  # switch to reservoir sampling (Algorithm R) once the cap is exceeded
      take = self._cap - self._num_rows_kept
      self._rows.append(batch[:take])
      self._reservoir = np.concatenate(self._rows, 0)
      self._rows = []
      batch, first = batch[take:], first + take
    # Row with global index i replaces a random slot with probability cap / (i + 1).
    idx = np.arange(first, first + batch.shape[0])
    slots = self._rng.integers(0, idx + 1)
    keep = slots < self._cap
    self._reservoir[slots[keep]] = batch[keep]

  def get_statistics(self) -> NormStats:
    if self._count < 2:
      raise ValueError(f"RunningStats needs at least 2 rows, got {self._count}")
    mean = self._sum / self._count
    var = np.maximum(self._sumsq / self._count - np.square(mean), 0.0)
    values = self._reservoir if self._reservoir is not None else np.concatenate(self._rows, 0)
    q01, q99 = np.quantile(values, [0.01, 0.99], axis=0)
    return NormStats(mean=mean, std=np.sqrt(var), q01=q01, q99=q99)


def save(path: str | os.PathLike, norm_stats: dict[str, NormStats]) -> pathlib.Path:
  """Writes `{"norm_stats": {...}}` to `path` (a .json file, or a directory that gets `norm_stats.json`)."""
  path = pathlib.Path(path)
  if path.suffix != ".json":
    path = path / FILE_NAME
  path.parent.mkdir(parents=True, exist_ok=True)
  payload = {"norm_stats": {k: v.to_json() for k, v in norm_stats.items()}}
  path.write_text(json.dumps(payload, indent=2))
  return path


def load(path: str | os.PathLike) -> dict[str, NormStats]:
  """Reads a norm_stats.json file (or a directory holding one) written by apt_jax or openpi."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / FILE_NAME
  if not path.exists():
    raise FileNotFoundError(f"Norm stats file not found: {path}")
  payload = json.loads(path.read_text())
  if "norm_stats" not in payload:
    raise ValueError(f"{path}: expected a top-level 'norm_stats' key (openpi format)")
  return {k: NormStats.from_json(v) for k, v in payload["norm_stats"].items()}


def _fit(stat: np.ndarray, dim: int, pad_value: float) -> np.ndarray:
  stat = np.asarray(stat, np.float64)
  if stat.shape[-1] >= dim:
    return stat[..., :dim]
  return np.concatenate([stat, np.full(stat.shape[:-1] + (dim - stat.shape[-1],), pad_value)], -1)


def _fitted(x, stats: NormStats, use_quantiles: bool):
  """-> (x as float32, k, a, b): (a, b) = (q01, q99) over x's first k dims, or (mean, std) over all its dims."""
  x = np.asarray(x, np.float32)
  d = x.shape[-1]
  if use_quantiles:
    _require_quantiles(stats)
    k = min(d, stats.dim)  # dims past the stats pass through
    return x, k, _fit(stats.q01, k, 0.0), _fit(stats.q99, k, 0.0)
  return x, d, _fit(stats.mean, d, 0.0), _fit(stats.std, d, 1.0)


def normalize(x, stats: NormStats, use_quantiles: bool = False) -> np.ndarray:
  """Normalizes the last axis of `x` (float32 out). See the module docstring for padding."""
  x, k, a, b = _fitted(x, stats, use_quantiles)
  if use_quantiles:
    head = (x[..., :k] - a) / (b - a + EPS) * 2.0 - 1.0
    return np.concatenate([head, x[..., k:]], -1).astype(np.float32)
  return ((x - a) / (b + EPS)).astype(np.float32)


def unnormalize(x, stats: NormStats, use_quantiles: bool = False) -> np.ndarray:
  """Inverse of `normalize` (float32 out)."""
  x, k, a, b = _fitted(x, stats, use_quantiles)
  if use_quantiles:
    head = (x[..., :k] + 1.0) / 2.0 * (b - a + EPS) + a
    return np.concatenate([head, x[..., k:]], -1).astype(np.float32)
  return (x * (b + EPS) + a).astype(np.float32)


def check_width(stats: Mapping[str, NormStats], key: str, width: int, padded_width: int, where: str) -> None:
  """Stats of `key` must cover the data's `width` raw dims, or the model's `padded_width` (stats computed on padded
  vectors, as older openpi pipelines did); anything else is an error naming both dims."""
  if key not in stats:
    raise ValueError(f"{where}: the norm stats have no {key!r} entry (they have {sorted(stats)})")
  dim = stats[key].dim
  if dim not in (width, padded_width):
    raise ValueError(f"{where}: norm stats for {key!r} have {dim} dims but the {key} has {width} (the model pads to "
                     f"{padded_width})")


def pad_stats(stats: NormStats, dim: int) -> NormStats:
  """Stats padded to `dim` (mean 0, std 1, q01 -1, q99 1 on the new dims) or truncated to it."""
  return NormStats(
      mean=_fit(stats.mean, dim, 0.0),
      std=_fit(stats.std, dim, 1.0),
      q01=None if stats.q01 is None else _fit(stats.q01, dim, -1.0),
      q99=None if stats.q99 is None else _fit(stats.q99, dim, 1.0),
  )


def _require_quantiles(stats: NormStats) -> None:
  if stats.q01 is None or stats.q99 is None:
    raise ValueError("Quantile normalization needs q01 and q99 in the norm stats (recompute them with "
                     "python -m apt_jax.data.compute_norm_stats)")
