"""Dataset mixtures: sampling weights over 10k draws, and the loader follows the sampler."""

from __future__ import annotations

import numpy as np
import pytest


def test_mixture_weights_hold_over_10k_draws():
  from apt_jax.data.loader import MixtureSampler
  weights = [3.0, 1.5, 0.5, 0.0]
  counts = np.bincount(MixtureSampler(weights, seed=0).choices(0, 10_000), minlength=4)
  expected = np.asarray(weights) / sum(weights)
  # 4 binomial standard deviations at p = 0.6 and n = 10k is 0.0196.
  np.testing.assert_allclose(counts / 10_000, expected, atol=0.02)
  assert counts[3] == 0


def test_mixture_is_a_pure_function_of_seed_process_and_index():
  from apt_jax.data.loader import MixtureSampler
  a = MixtureSampler([1, 1], seed=3).choices(5000, 100)
  np.testing.assert_array_equal(a, MixtureSampler([1, 1], seed=3).choices(5000, 100))
  assert not np.array_equal(a, MixtureSampler([1, 1], seed=4).choices(5000, 100))
  assert not np.array_equal(a, MixtureSampler([1, 1], seed=3, process_index=1).choices(5000, 100))


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory, rb, steps_fn):
  d = tmp_path_factory.mktemp("mix")
  for name, n in (("mix_a", 3), ("mix_b", 2)):
    eps = [rb.as_episode(steps_fn(5 + i, episode=i), f"{name}/{i}") for i in range(n)]
    rb.write_episodes(d, name, eps, rb.libero_features(16))
  return d


def test_loader_draws_datasets_as_the_sampler_says(two_datasets, loader_fn):
  from apt_jax.data.loader import MixtureSampler
  cfg = {
      "datasets": [{"name": "mix_a", "data_dir": str(two_datasets), "weight": 3.0},
                   {"name": "mix_b", "data_dir": str(two_datasets), "weight": 1.0}],
      "return_metadata": True, "num_workers": 1, "prefetch": 0, "episodes_per_block": 1, "shuffle_buffer": 8,
  }
  loader = loader_fn(cfg, batch_size=16, shuffle=True, train=True, seed=11)
  got = np.concatenate([next(loader)["dataset_index"] for _ in range(6)])
  np.testing.assert_array_equal(got, MixtureSampler([3.0, 1.0], seed=11).choices(0, 96))
  assert 0.6 < np.mean(got == 0) < 0.9
