"""compute_norm_stats on the shipped sample equals statistics computed with plain NumPy from TFDS's own reader."""

from __future__ import annotations

import numpy as np
import pytest

from apt_jax import configs
from apt_jax.data import normalize as N

H = 50  # pi0_libero's horizon; the shipped norm_stats.json uses it with delta on the first 6 dims


@pytest.fixture(scope="module")
def numpy_reference():
  """Reads the sample with tfds.as_dataset (not apt_jax's reader), then builds openpi-style chunks in NumPy."""
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(str(configs.SAMPLE_DIR / configs.SAMPLE_DATASET / "1.0.0"))
  states, actions = [], []
  for ep in tfds.as_numpy(builder.as_dataset(split="train")):
    steps = list(ep["steps"])
    s = np.stack([st["observation"]["state"] for st in steps]).astype(np.float64)
    a = np.stack([st["action"] for st in steps]).astype(np.float64)
    for t in range(len(steps)):
      chunk = a[[min(t + k, len(steps) - 1) for k in range(H)]].copy()
      chunk[:, :6] -= s[t, :6]
      actions.append(chunk)
    states.append(s)
  states, actions = np.concatenate(states), np.concatenate(actions)
  return {"state": states, "actions": actions}


def _check(stats, ref):
  for key in ("state", "actions"):
    x = ref[key]
    np.testing.assert_allclose(stats[key].mean, x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[key].std, x.std(0), rtol=1e-4, atol=1e-6)
    q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
    np.testing.assert_allclose(stats[key].q01, q01, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[key].q99, q99, rtol=1e-5, atol=1e-6)


def test_cli_stats_match_numpy(tmp_path, numpy_reference):
  from apt_jax.data import compute_norm_stats
  path = compute_norm_stats.main(["--data_dir", str(configs.SAMPLE_DIR), "--dataset", configs.SAMPLE_DATASET,
                                  "--adapter", "libero", "--delta_action_dims", "6", "--action_horizon", str(H),
                                  "--out", str(tmp_path)])
  assert path == tmp_path / "norm_stats.json"
  _check(N.load(path), numpy_reference)


def test_shipped_norm_stats_match_numpy(numpy_reference):
  _check(N.load(configs.SAMPLE_NORM_STATS), numpy_reference)


def test_cli_with_experiment_config(tmp_path):
  from apt_jax.data import compute_norm_stats
  cfg_file = tmp_path / "exp.py"
  cfg_file.write_text(
      "import ml_collections\n"
      "from apt_jax import configs\n"
      "def get_config(arg=None):\n"
      "  c = ml_collections.ConfigDict()\n"
      "  c.data = configs.sample_data()\n"
      f"  c.assets_dir = {str(tmp_path / 'assets')!r}\n"
      "  c.asset_id = arg or 'libero_sample'\n"
      "  c.model = ml_collections.ConfigDict({'action_horizon': 10})\n"
      "  return c\n")
  path = compute_norm_stats.main(["--config", f"{cfg_file}:my_asset", "--max_frames", "20"])
  assert path == tmp_path / "assets" / "my_asset" / "norm_stats.json"
  stats = N.load(path)
  assert stats["state"].dim == 8 and stats["actions"].dim == 7
