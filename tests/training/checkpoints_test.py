"""CheckpointManager on a small train state: broken steps are reported, set aside (never deleted) and the newest step
that restores is used; what is kept (max_to_keep, keep_period); per-process data state files."""

from __future__ import annotations

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from apt_jax import checkpoints
from apt_jax import configs
from apt_jax import train


def _state(step: int, shape=(2, 3)) -> train.TrainState:
  params = {"dense": {"kernel": jnp.full(shape, float(step)), "bias": jnp.arange(3.0) + step}}
  return train.TrainState(step=jnp.asarray(step, jnp.int32), params=params, frozen={},
                          opt_state=optax.adam(1e-3).init(params))


def _abstract():
  abstract = jax.eval_shape(lambda: _state(0))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return abstract, jax.tree.map(lambda _: device, abstract)


def _manager(directory, **kw):
  return checkpoints.CheckpointManager(directory, **kw)


def _save(directory, steps, **kw):
  mngr = _manager(directory, **kw)
  for s in steps:
    mngr.save(s, _state(s), data_state={"count": s})
  mngr.close()  # waits for the async saves


def _restore_latest(directory):
  mngr = _manager(directory)
  abstract, shardings = _abstract()
  try:
    return mngr.restore_latest(abstract, shardings, lambda _: False)
  finally:
    mngr.close()


def _files(d):
  return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def _truncate(path):
  text = path.read_text()
  path.write_text(text[: len(text) // 2])


def _missing_manifest(step_dir):
  (step_dir / "params" / "manifest.ocdbt").unlink()
  return f"{step_dir / 'params' / 'manifest.ocdbt'} is missing"


def _truncated_data_state(step_dir):
  _truncate(step_dir / "data_state" / "process_0.json")
  return f"{step_dir / 'data_state' / 'process_0.json'} is not valid JSON"


def _truncated_metadata(step_dir):
  _truncate(step_dir / "train_state" / "_METADATA")
  return f"{step_dir / 'train_state' / '_METADATA'} is not valid JSON"


def _missing_array_file(step_dir):
  data_files = sorted((step_dir / "params" / "d").iterdir())
  assert data_files
  for f in data_files:
    f.unlink()
  return str(step_dir / "params" / "d")  # tensorstore names the file it could not read


def _wrong_shapes(step_dir):
  import shutil
  shutil.rmtree(step_dir)
  _save(step_dir.parent, [int(step_dir.name)], max_to_keep=10)  # fine before: a new step 6
  shutil.rmtree(step_dir / "params")
  checkpoints.save_params(step_dir / "params", {"dense": {"kernel": np.zeros((3, 3), np.float32),
                                                          "bias": np.zeros(3, np.float32)}})
  return "dense/kernel: shape (3, 3) in params of step 6, expected (2, 3)"


@pytest.mark.parametrize("corrupt", [_missing_manifest, _truncated_data_state, _truncated_metadata,
                                     _missing_array_file, _wrong_shapes])
def test_broken_latest_step_is_reported_kept_and_the_previous_one_restored(tmp_path, caplog, corrupt):
  _save(tmp_path, [2, 4, 6], max_to_keep=3)
  broken = tmp_path / "6"
  problem = corrupt(broken)
  files = _files(broken)
  with caplog.at_level(logging.ERROR):
    step, state, data_state = _restore_latest(tmp_path)
  assert step == 4 and data_state == {"count": 4}
  np.testing.assert_array_equal(state.params["dense"]["kernel"], np.full((2, 3), 4.0))
  np.testing.assert_array_equal(state.opt_state[0].mu["dense"]["bias"], np.zeros(3))
  assert f"{broken} does not restore: " in caplog.text and problem in caplog.text
  assert _files(tmp_path / "corrupt" / "6") == files  # set aside with every file, never deleted
  assert _manager(tmp_path).all_steps() == [2, 4]


def test_no_step_restores_is_an_error_naming_each_and_nothing_moves(tmp_path):
  _save(tmp_path, [2, 4], max_to_keep=3)
  problems = [_missing_manifest(tmp_path / "2"), _truncated_data_state(tmp_path / "4")]
  with pytest.raises(checkpoints.CheckpointError, match="No checkpoint step under") as e:
    _restore_latest(tmp_path)
  assert all(p in str(e.value) for p in problems)
  assert _manager(tmp_path).all_steps() == [2, 4] and not (tmp_path / "corrupt").exists()


def test_restored_step_is_saved_again_after_setting_the_broken_one_aside(tmp_path):
  _save(tmp_path, [2, 4], max_to_keep=3)
  _missing_manifest(tmp_path / "4")
  assert _restore_latest(tmp_path)[0] == 2
  _save(tmp_path, [4], max_to_keep=3)  # the resumed run reaches step 4 again
  assert _restore_latest(tmp_path)[0] == 4 and (tmp_path / "corrupt" / "4").is_dir()


def test_keeps_at_least_two_steps_plus_every_keep_period_th(tmp_path):
  assert configs.base_config().max_to_keep >= 2 and configs.base_config().keep_period
  with pytest.raises(ValueError, match="max_to_keep=1"):
    _manager(tmp_path / "one", max_to_keep=1)
  _save(tmp_path, range(1, 11), keep_period=4)  # default max_to_keep
  assert _manager(tmp_path).all_steps() == [4, 8, 9, 10]


def test_every_process_writes_its_own_data_state(tmp_path):
  _save(tmp_path, [3])
  payload = json.loads((tmp_path / "3" / "data_state" / "process_0.json").read_text())
  assert payload == {"process_index": 0, "process_count": 1, "state": {"count": 3}}
  with pytest.raises(ValueError, match=r"process_1\.json is missing \(data_state holds \['commit_success.txt', "
                                       r"'process_0.json'\]; this run is process 1 of 2\)"):
    checkpoints.read_data_state(tmp_path / "3", 1, 2)
