"""Bad experiment configs and norm stats fail before step 0 with an error naming the key or file; the stats a run
normalizes with (per-dataset ones included) reach its checkpoint and the server."""

import json
import pathlib

import numpy as np
import pytest

from apt_jax import configs
from apt_jax import policy as _policy
from apt_jax import train
from apt_jax.data import normalize
from tests.training.train_test import debug_config

EXPERIMENT = """
from apt_jax import configs

def get_config(arg=None):
  c = configs.load(configs.REPO_ROOT / "experiments" / "debug.py", "stage1")
  {line}
  return c
"""


@pytest.mark.parametrize("line, match", [
    # Misspelt keys used to be ignored: the trainer read `config.get("log_every_steps", 10)`.
    ("c.log_every_step = 5", r"^config: unknown key 'log_every_step'; did you mean 'log_every_steps'\?"),
    ("c.optimizer.weight_decy = 0.1", r"^config.optimizer: unknown key 'weight_decy'; did you mean 'weight_decay'\?"),
    ("c.model.kwargs.knowlege_insulation = True",
     r"^config.model.kwargs \(pi0 head\): unknown key 'knowlege_insulation'; did you mean 'knowledge_insulation'\?"),
    ("c.data.skip_bad_record = True", r"unknown key 'skip_bad_record'; did you mean 'skip_bad_records'\?"),
    ("c.data.datasets[0]['wieght'] = 2.0", r"datasets\[0\]: unknown key 'wieght'; did you mean 'weight'\?"),
])
def test_a_misspelt_key_in_an_experiment_file_is_an_error_naming_the_closest_key(tmp_path, line, match):
  path = tmp_path / "experiment.py"
  path.write_text(EXPERIMENT.format(line=line))
  with pytest.raises(ValueError, match=match):
    train.main(configs.load(path), tmp_path / "workdir")
  assert not (tmp_path / "workdir").exists()


@pytest.mark.parametrize("experiment", ["pi0_apt_libero", "pi05_apt_libero", "gr00t_apt_libero", "apt_expert_libero"])
def test_the_documented_vlm_tuning_flag_parses_for_every_apt_experiment(experiment):
  # The experiments' docstrings (and the fits table's "Stage 2, VLM tuned" row) add this flag; it used to be a
  # KeyError, as kwargs had no such key for config_flags to type.
  from absl import flags
  from ml_collections import config_flags
  path = configs.REPO_ROOT / "experiments" / f"{experiment}.py"
  argv = ["prog", f"--config={path}:stage2", "--config.model.kwargs.vlm_trainable=True"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)  # overrides are read from this argv
  fv(argv)
  assert configs.model_config(configs.finalize(fv.config)).vlm_trainable is True
  assert configs.model_config(configs.finalize(configs.load(path, "stage2"))).vlm_trainable is False  # the default


def test_a_block_replaced_whole_gets_the_defaults_of_base_config():
  c = debug_config("stage1")
  c.optimizer = dict(weight_decay=0.5)
  c.data = dict(datasets=[dict(name="d", data_dir="/d")])
  c = configs.finalize(c)
  base = configs.base_config()
  assert c.optimizer.to_dict() == dict(base.optimizer.to_dict(), weight_decay=0.5)
  assert c.data.shuffle_buffer == base.data.shuffle_buffer and c.data.datasets[0]["weight"] == 1.0
  assert c.log_every_steps == 1 and c.keep_period is None  # the experiment's own values stay


def test_missing_norm_stats_file_fails_before_step_zero_naming_the_key_and_path(tmp_path):
  missing = tmp_path / "nowhere" / "norm_stats.json"
  c = debug_config("stage1", **{"data.norm_stats_path": str(missing)})
  with pytest.raises(FileNotFoundError, match=rf"^config.data.norm_stats_path: .*{missing}"):
    train.main(c, tmp_path / "workdir")
  assert_nothing_trained(tmp_path / "workdir")


def assert_nothing_trained(workdir):
  assert not (workdir / "metrics.jsonl").exists() and not list(workdir.glob("checkpoints/[0-9]*"))


def _sample_stats(tmp_path, **change) -> str:
  stats = normalize.load(configs.SAMPLE_NORM_STATS)
  stats.update(change)
  path = tmp_path / "stats" / "norm_stats.json"
  normalize.save(path.parent, stats)
  return str(path)


def test_norm_stats_of_the_wrong_width_fail_before_step_zero_naming_both_dims(tmp_path):
  # They used to be padded or truncated to the model's width silently.
  s = normalize.load(configs.SAMPLE_NORM_STATS)["state"]
  path = _sample_stats(tmp_path, state=normalize.NormStats(mean=s.mean[:7], std=s.std[:7]))
  c = debug_config("stage1", **{"data.norm_stats_path": path})
  with pytest.raises(ValueError, match=r"dataset libero_sample .*norm stats for 'state' have 7 dims but the state "
                                       r"has 8 \(the model pads to 8\)"):
    train.main(c, tmp_path / "workdir")
  assert_nothing_trained(tmp_path / "workdir")


def test_per_dataset_norm_stats_reach_the_checkpoint_and_the_server(tmp_path):
  """A dataset's own stats (no run-wide file) are stored under assets/<dataset name>/, and a policy served from the
  checkpoint normalizes with them. They used to be left out: the server then acted on unnormalized actions."""
  own = _sample_stats(tmp_path, actions=normalize.NormStats(
      mean=np.linspace(-1, 1, 7), std=np.linspace(0.5, 2, 7)))  # distinct from the run-wide sample stats
  c = debug_config("stage1", num_train_steps=1, ckpt_every_steps=1, **{"data.norm_stats_path": ""})
  c.data.datasets[0]["norm_stats_path"] = own
  train.main(c, tmp_path / "workdir")
  step = tmp_path / "workdir" / "checkpoints" / "1"
  stored = step / "assets" / configs.SAMPLE_DATASET / "norm_stats.json"
  assert json.loads(stored.read_text()) == json.loads(pathlib.Path(own).read_text())
  pol = _policy.create_trained_policy(step)
  np.testing.assert_array_equal(pol.norm_stats["actions"].mean, np.linspace(-1, 1, 7))
  assert pol.metadata["norm_stats"] == configs.SAMPLE_DATASET

