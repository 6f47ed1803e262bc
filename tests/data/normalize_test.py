"""Normalization: round trips, openpi's formulas, padding, norm_stats.json format, RunningStats vs NumPy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apt_jax.data import normalize as N


@pytest.fixture
def stats():
  rng = np.random.default_rng(0)
  return N.NormStats(mean=rng.normal(size=7), std=rng.uniform(0.1, 2.0, 7), q01=rng.uniform(-3, -1, 7),
                     q99=rng.uniform(1, 3, 7))


@pytest.mark.parametrize("use_quantiles", [False, True])
def test_round_trip_with_padding_to_action_dim(stats, use_quantiles):
  x = np.random.default_rng(1).normal(size=(4, 10, 7)).astype(np.float32)
  padded = np.concatenate([x, np.zeros((4, 10, 25), np.float32)], -1)  # zero-padded to action_dim 32
  y = N.normalize(padded, stats, use_quantiles)
  assert y.shape == (4, 10, 32) and y.dtype == np.float32
  np.testing.assert_allclose(N.unnormalize(y, stats, use_quantiles), padded, atol=1e-5)
  np.testing.assert_allclose(y[..., 7:], 0.0, atol=1e-5)  # padded dims stay zero


def test_formulas_match_openpi(stats):
  x = np.linspace(-2, 2, 7).astype(np.float32)
  np.testing.assert_allclose(N.normalize(x, stats), (x - stats.mean) / (stats.std + 1e-6), rtol=1e-6)
  np.testing.assert_allclose(N.normalize(x, stats, True),
                             (x - stats.q01) / (stats.q99 - stats.q01 + 1e-6) * 2 - 1, rtol=1e-5, atol=1e-6)
  # Stats wider than x are truncated (openpi Normalize).
  np.testing.assert_allclose(N.normalize(x[:5], stats), ((x - stats.mean) / (stats.std + 1e-6))[:5], rtol=1e-6)


def test_save_load_openpi_format(tmp_path, stats):
  path = N.save(tmp_path / "asset", {"state": stats, "actions": stats})
  assert path == tmp_path / "asset" / "norm_stats.json"
  payload = json.loads(path.read_text())
  assert set(payload) == {"norm_stats"}
  assert set(payload["norm_stats"]["state"]) == {"mean", "std", "q01", "q99"}
  loaded = N.load(path.parent)
  for k in ("mean", "std", "q01", "q99"):
    np.testing.assert_allclose(getattr(loaded["actions"], k), getattr(stats, k))


def test_running_stats_match_numpy_exact_and_reservoir():
  rng = np.random.default_rng(2)
  data = rng.standard_t(5, size=(20_000, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -1.0]
  exact, sampled = N.RunningStats(), N.RunningStats(max_quantile_samples=5_000)
  for chunk in np.array_split(data, 37):
    exact.update(chunk)
    sampled.update(chunk)
  ref_q01, ref_q99 = np.quantile(data, [0.01, 0.99], axis=0)
  e, s = exact.get_statistics(), sampled.get_statistics()
  np.testing.assert_allclose(e.mean, data.mean(0), rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(e.std, data.std(0), rtol=1e-9)
  np.testing.assert_allclose(e.q01, ref_q01, rtol=1e-12)
  np.testing.assert_allclose(e.q99, ref_q99, rtol=1e-12)
  np.testing.assert_allclose(s.mean, data.mean(0), rtol=1e-9, atol=1e-12)  # mean/std stay exact
  # Reservoir quantiles: compare in probability space (the fraction of data below the estimate).
  for q, est in ((0.01, s.q01), (0.99, s.q99)):
    frac = (data < est).mean(0)
    np.testing.assert_allclose(frac, q, atol=0.005)
