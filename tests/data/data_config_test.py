"""Data config parsing and argument checks fail early with a message naming the problem."""

from __future__ import annotations

import ml_collections
import pytest

from apt_jax import configs
from apt_jax.data import config as C


def test_configdict_and_defaults():
  cfg = C.parse_data_config(ml_collections.ConfigDict(configs.sample_data(delta_action_dims=[1, 1, 0])))
  assert cfg.datasets[0].adapter == "libero" and cfg.datasets[0].weight == 1.0
  assert cfg.delta_action_dims == (True, True, False)
  assert cfg.image_size == (224, 224) and cfg.skip_bad_records is False and cfg.augment is False


@pytest.mark.parametrize("bad, match", [
    ({"datasets": []}, "at least one dataset"),
    ({"datasets": [{"name": "x"}]}, "missing 'data_dir'"),
    ({"datasets": [{"name": "x", "data_dir": "/d", "wieght": 2}]},
     r"datasets\[0\]: unknown key 'wieght'; did you mean 'weight'\?"),
    # Misspelt keys used to be warned about and dropped: the run then trained without them.
    ({"datasets": [{"name": "x", "data_dir": "/d"}], "skip_bad_record": True},
     r"unknown key 'skip_bad_record'; did you mean 'skip_bad_records'\?"),
    ({"datasets": [{"name": "x", "data_dir": "/d"}], "norm_stat_path": "/s.json"},
     r"unknown key 'norm_stat_path'; did you mean 'norm_stats_path'\?"),
    ({"datasets": [{"name": "x", "data_dir": "/d", "weight": 0}]}, "weights sum to 0"),
    ({"datasets": [{"name": "x", "data_dir": "/d"}], "shuffle_buffer": 0}, "shuffle_buffer"),
])
def test_bad_configs(bad, match):
  with pytest.raises(ValueError, match=match):
    C.parse_data_config(bad)


def test_loader_argument_checks(loader_fn, tmp_path):
  cfg = configs.sample_data()
  with pytest.raises(ValueError, match="not divisible by process_count=3"):
    loader_fn(cfg, batch_size=4, process_count=3, process_index=0)
  with pytest.raises(ValueError, match=r"process 5 gets none|process_index=5"):
    loader_fn(cfg, batch_size=8, process_count=8, process_index=5)
  with pytest.raises(FileNotFoundError, match="no TFDS dataset"):
    loader_fn({"datasets": [{"name": "nope", "data_dir": str(tmp_path)}]})
  with pytest.raises(ValueError, match="unknown adapter_kwargs"):
    loader_fn(configs.sample_data(datasets=[{**cfg["datasets"][0], "adapter_kwargs": {"bogus": 1}}]))
