"""Recorded demonstrations -> modified_libero_rlds layout -> apt_jax.data's LIBERO adapter and norm stats."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from apt_jax.data import adapters
from apt_jax.data import compute_norm_stats
from apt_jax.data import rlds
from apt_jax.eval import libero as L
from apt_jax.eval import record


def _raw_episode(rng, n, size=64):
  """Arrays as the client records them; step 3 is a no-op (dropped), step 4 only changes the gripper (kept)."""
  action = rng.uniform(-1, 1, size=(n, 7)).astype(np.float32)
  action[:, 6] = np.where(np.arange(n) < 4, -1.0, 1.0)
  action[3, :6] = 0.0
  action[4, :6] = 0.0
  steps = {"image": rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8),
           "wrist_image": rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8),
           "state": rng.normal(size=(n, 8)).astype(np.float32),
           "joint_state": rng.normal(size=(n, 7)).astype(np.float32), "action": action}
  return {k: list(v) for k, v in steps.items()}


def _read(data_dir, name):
  source = rlds.RldsSource(name, str(data_dir), adapters.get_adapter("libero"))
  return [rlds.convert_episode(raw, source, dataset_index=0) for raw in source.episodes()]


def test_recorded_episodes_read_back_through_the_libero_adapter(tmp_path):
  rng = np.random.default_rng(0)
  raw = {name: _raw_episode(rng, n) for name, n in (("t00_i00", 9), ("t01_i03", 12))}
  for stem, steps in raw.items():
    L.write_demo(tmp_path / "raw" / "libero_object" / f"libero_object_{stem}.npz", steps,
                 f"pick up the {stem} and place it in the basket", file_path=f"libero_object/{stem}")
  out = record.convert(tmp_path)
  assert pathlib.Path(out["libero_object"]) == tmp_path / "libero_object_no_noops" / "1.0.0"
  episodes = _read(tmp_path, "libero_object_no_noops")
  assert [e.file_path for e in episodes] == ["libero_object/t00_i00", "libero_object/t01_i03"]
  for ep, steps in zip(episodes, raw.values()):
    keep = [i for i in range(len(steps["action"])) if i != 3]
    np.testing.assert_array_equal(ep.actions, np.stack(steps["action"])[keep])
    np.testing.assert_array_equal(ep.state, np.stack(steps["state"])[keep])
    assert ep.prompts == [f"pick up the {ep.file_path.split('/')[1]} and place it in the basket"]
    frames = ep.images["base_0_rgb"]
    assert len(frames) == len(keep) and ep.image_keys["base_0_rgb"] == "steps/observation/image"

  stats = compute_norm_stats.compute_norm_stats(
      {"datasets": [{"name": "libero_object_no_noops", "data_dir": str(tmp_path), "adapter": "libero"}],
       "delta_action_dims": 0}, action_horizon=1)
  all_states = np.concatenate([np.stack(s["state"])[[i for i in range(len(s["state"])) if i != 3]]
                               for s in raw.values()])
  np.testing.assert_allclose(stats["state"].mean, all_states.mean(0), rtol=1e-5, atol=1e-6)


def test_bad_raw_episode_names_file_and_field(tmp_path):
  path = tmp_path / "raw" / "libero_goal" / "libero_goal_t00_i00.npz"
  path.parent.mkdir(parents=True)
  np.savez(path, image=np.zeros((2, 8, 8, 3), np.uint8), action=np.zeros((2, 7), np.float32))
  with pytest.raises(ValueError, match=r"libero_goal_t00_i00.npz: missing fields \['wrist_image'"):
    record.convert(tmp_path)
  with pytest.raises(FileNotFoundError, match="no recorded episodes"):
    record.convert(tmp_path / "empty")
