"""Each kind of bad record raises a DataError naming dataset, episode, file_path and field; skip mode counts them."""

from __future__ import annotations

import numpy as np
import pytest

LONG = " ".join(["pick up the black bowl next to the ramekin and place it on the plate"] * 6)


def _episodes(rb, steps_fn, bad_index: int, bad_steps):
  eps = [rb.as_episode(steps_fn(3, episode=i), f"src/ep{i}.hdf5") for i in range(4)]
  eps[bad_index] = rb.as_episode(bad_steps, f"src/ep{bad_index}.hdf5")
  return eps


def _with(steps, path, value):
  *parents, leaf = path.split("/")
  for s in steps:
    d = s
    for p in parents:
      d = d[p]
    d[leaf] = value(d[leaf])
  return steps


# name -> (how the dataset is broken, bad episode index, field named in the error, kind)
CASES = {
    "bad_nan": (lambda rb, f: _episodes(rb, f, 2, _with(f(3), "observation/state", lambda x: x * np.nan)),
                {}, 2, "steps/observation/state", "nonfinite"),
    "bad_inf": (lambda rb, f: _episodes(rb, f, 1, _with(f(3), "action", lambda x: x + np.inf)),
                {}, 1, "steps/action", "nonfinite"),
    "bad_missing": (lambda rb, f: [{**e, "steps": [{**s, "observation": {k: v for k, v in s["observation"].items()
                                                                        if k != "wrist_image"}} for s in e["steps"]]}
                                   for e in _episodes(rb, f, 0, f(3))],
                    {"drop": ("steps/observation/wrist_image",)}, 0, "steps/observation/wrist_image", "missing"),
    "bad_shape": (lambda rb, f: [rb.as_episode(f(3, state_dim=7), f"src/ep{i}.hdf5") for i in range(2)],
                  {"state_dim": 7}, 0, "steps/observation/state", "shape"),
    "bad_channels": (lambda rb, f: [rb.as_episode(f(3, channels=1), f"src/ep{i}.hdf5") for i in range(2)],
                     {"image_channels": 1}, 0, "steps/observation/image", "shape"),
    "bad_empty": (lambda rb, f: _episodes(rb, f, 3, []), {}, 3, "steps", "empty"),
    "bad_long": (lambda rb, f: _episodes(rb, f, 2, f(3, instruction=LONG)), {}, 2, "steps/language_instruction",
                 "instruction_too_long"),
}


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory, rb, steps_fn):
  d = tmp_path_factory.mktemp("bad")
  for name, (make, spec_kwargs, *_) in CASES.items():
    rb.write_episodes(d, name, make(rb, steps_fn), rb.libero_features(16, **spec_kwargs))
  # A dataset with one bad episode of several kinds among good ones, for skip mode.
  eps = [rb.as_episode(steps_fn(3), "good0"), rb.as_episode(_with(steps_fn(2), "action", lambda x: x * np.nan), "n"),
         rb.as_episode([], "empty"), rb.as_episode(steps_fn(2, instruction=LONG), "long"),
         rb.as_episode(steps_fn(4, episode=4), "good4")]
  rb.write_episodes(d, "bad_mixed", eps, rb.libero_features(16))
  return d


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_record_raises_naming_dataset_episode_and_field(bad_dir, config_fn, loader_fn, name):
  from apt_jax.data import DataError
  _, _, episode, field, kind = CASES[name]
  loader = loader_fn(config_fn(bad_dir, name), batch_size=2, max_token_len=24)
  with pytest.raises(DataError) as info:
    for _ in range(8):
      next(loader)
  err = info.value
  assert (err.dataset, err.episode, err.field, err.kind) == (name, episode, field, kind)
  msg = str(err)
  assert msg.startswith(f"{name} episode {episode} (file_path=src/ep{episode}.hdf5): field {field} "), msg


def test_errors_come_through_the_prefetch_thread(bad_dir, config_fn, loader_fn):
  from apt_jax.data import DataError
  loader = loader_fn(config_fn(bad_dir, "bad_nan", prefetch=2, num_workers=2), batch_size=2)
  with pytest.raises(DataError, match="bad_nan episode 2"):
    for _ in range(8):
      next(loader)
  with pytest.raises(DataError):  # the loader stays failed
    next(loader)


def test_skip_mode_skips_counts_and_logs(bad_dir, config_fn, loader_fn, caplog):
  cfg = config_fn(bad_dir, "bad_mixed", skip_bad_records=True, num_epochs=1, return_metadata=True)
  loader = loader_fn(cfg, batch_size=1, max_token_len=24)
  with caplog.at_level("WARNING"):
    batches = list(loader)
  assert [int(b["episode_index"][0]) for b in batches] == [0, 0, 0, 4, 4, 4, 4]
  assert loader.bad_record_counts == {"bad_mixed": {"nonfinite": 1, "empty": 1, "instruction_too_long": 1}}
  assert sum("Skipping bad record" in r.message for r in caplog.records) == 3
  assert any("bad_mixed episode 1 (file_path=n): field steps/action has NaN" in r.message for r in caplog.records)


def test_skip_mode_with_nothing_valid_raises(bad_dir, config_fn, loader_fn):
  from apt_jax.data import DataError
  loader = loader_fn(config_fn(bad_dir, "bad_shape", skip_bad_records=True), batch_size=1)
  with pytest.raises(DataError, match="no valid samples in a whole epoch"):
    next(loader)
