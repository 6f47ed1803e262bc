"""The pre-registered statistics against hand-computed values: the paired t-interval, Wilson, and the reading."""

import math

import numpy as np
import pytest

from apt_jax.testbed import stats


def test_t_interval_by_hand():
  # x = 1..5: mean 3, sd sqrt(2.5) = 1.5811, se 0.7071, t(0.975, df 4) = 2.7764 -> half-width 1.9632.
  t = stats.t_interval([1, 2, 3, 4, 5])
  np.testing.assert_allclose([t["mean"], t["lo"], t["hi"], t["sd"]], [3, 1.0368, 4.9632, 1.5811], atol=1e-4)
  assert stats.t_interval([0.2])["lo"] == -math.inf   # one seed: no interval


def test_wilson_by_hand():
  np.testing.assert_allclose(stats.wilson(5, 10), [0.2366, 0.7634], atol=1e-4)
  assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == 1.0


def _rows(rates, arm="shortcut", split="paraphrase", n=10):
  """rates: {recipe: {seed: k successes of n}} -> per-episode rows."""
  return [dict(arm=arm, recipe=r, seed=s, split=split, episode=i, flow_steps=10, success=i < k, grasp=False)
          for r, by_seed in rates.items() for s, k in by_seed.items() for i in range(n)]


def test_paired_contrast_pairs_by_seed():
  rows = _rows({"apt": {1: 6, 2: 5, 3: 9}, "pi0": {1: 4, 2: 5, 3: 3, 4: 10}})   # seed 4 has no APT run: dropped
  c = stats.paired_contrast(rows, arm="shortcut", recipe="apt", baseline="pi0", split="paraphrase")
  assert c["seeds"] == [1, 2, 3]
  np.testing.assert_allclose(c["d"], [0.2, 0.0, 0.6])
  want = stats.t_interval([0.2, 0.0, 0.6])
  np.testing.assert_allclose([c["mean"], c["lo"], c["hi"]], [want["mean"], want["lo"], want["hi"]], rtol=1e-12)


def _c(recipe, split, lo, hi):
  return dict(recipe=recipe, split=split, lo=lo, hi=hi)


@pytest.mark.parametrize("cs, want", [
    # one recipe above 0 on both splits
    ([_c("a", "p", 0.01, 0.3), _c("a", "u", 0.05, 0.2), _c("b", "p", -0.3, 0.4), _c("b", "u", -0.1, 0.5)], "supports"),
    # above 0 on one split only, and an upper bound over the margin
    ([_c("a", "p", 0.01, 0.3), _c("a", "u", -0.05, 0.2), _c("b", "p", -0.3, 0.05), _c("b", "u", -0.1, 0.05)],
     "inconclusive"),
    # every upper bound below +0.10
    ([_c("a", "p", -0.2, 0.09), _c("a", "u", -0.3, -0.1), _c("b", "p", -0.3, 0.05), _c("b", "u", -0.1, 0.0)],
     "contradicts"),
])
def test_verdict(cs, want):
  assert stats.verdict(cs, recipes=("a", "b"), splits=("p", "u")) == want


def test_verdict_needs_every_primary_contrast():
  with pytest.raises(ValueError, match="missing"):
    stats.verdict([_c("a", "p", 0.1, 0.2)], recipes=("a",), splits=("p", "u"))
