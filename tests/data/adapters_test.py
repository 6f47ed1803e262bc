"""DROID and generic OXE adapters read data written in their specs; ConfigDict data configs work."""

from __future__ import annotations

import numpy as np
import pytest


def _droid_steps(length, *, episode):
  img = lambda v: np.full((18, 32, 3), v, np.uint8)
  steps = []
  for t in range(length):
    steps.append({
        "observation": {
            "gripper_position": np.array([0.5 + t], np.float64),
            "cartesian_position": np.zeros(6, np.float64),
            "joint_position": np.arange(7, dtype=np.float64) + 100 * episode + t,
            "wrist_image_left": img(30), "exterior_image_1_left": img(90), "exterior_image_2_left": img(160),
        },
        "action_dict": {
            "gripper_position": np.array([0.25 + t], np.float64), "gripper_velocity": np.zeros(1),
            "cartesian_position": np.zeros(6), "cartesian_velocity": np.zeros(6),
            "joint_position": -np.arange(7, dtype=np.float64) - t, "joint_velocity": np.zeros(7),
        },
        "action": np.zeros(7, np.float64),
        "language_instruction": "wipe the table",
        "language_instruction_2": "clean the table" if episode else "",
        "language_instruction_3": "",
    })
  return steps


@pytest.fixture(scope="module")
def droid_dir(tmp_path_factory, rb):
  d = tmp_path_factory.mktemp("droid")
  eps = [{"steps": _droid_steps(3, episode=e),
          "episode_metadata": {"file_path": f"droid/success/{e}", "recording_folderpath": "r"}} for e in range(2)]
  eps.append({"steps": _droid_steps(2, episode=2),
              "episode_metadata": {"file_path": "droid/failure/2", "recording_folderpath": "r"}})
  rb.write_episodes(d, "droid_tiny", eps, rb.droid_features((18, 32)))
  return d


def test_droid_mapping(droid_dir, loader_fn):
  cfg = {"datasets": [{"name": "droid_tiny", "data_dir": str(droid_dir), "adapter": "droid"}],
         "return_metadata": True, "num_workers": 1, "prefetch": 0}
  b = next(loader_fn(cfg, batch_size=3, action_horizon=2))
  np.testing.assert_allclose(b["state"][1, :8], [*(np.arange(7) + 1), 1.5], atol=1e-6)  # joints + gripper, t=1
  np.testing.assert_allclose(b["actions"][1, :, :8], [[*(-np.arange(7) - 1), 1.25], [*(-np.arange(7) - 2), 2.25]])
  assert abs(int(np.median(b["image"]["base_0_rgb"])) - 90) <= 2  # exterior 1 at evaluation
  assert abs(int(np.median(b["image"]["left_wrist_0_rgb"])) - 30) <= 2
  assert not b["image_mask"]["right_wrist_0_rgb"].any()
  # 18x32 is letterboxed into 224x224: rows at the top are padding.
  assert not b["image"]["base_0_rgb"][:, :40].any() and b["image"]["base_0_rgb"][:, 112].all()


def test_droid_training_draws_camera_and_instruction_per_episode(droid_dir, loader_fn, tokenizer_path):
  from apt_jax.models.tokenizer import PaligemmaTokenizer
  cfg = {"datasets": [{"name": "droid_tiny", "data_dir": str(droid_dir), "adapter": "droid",
                       "adapter_kwargs": {"file_path_regex": ".*success.*"}}],
         "return_metadata": True, "num_workers": 1, "prefetch": 0, "episodes_per_block": 1}
  tok = PaligemmaTokenizer(tokenizer_path)
  cams, prompts = set(), set()
  for seed in range(6):
    b = next(loader_fn(cfg, batch_size=6, action_horizon=2, shuffle=True, train=True, seed=seed))
    assert set(b["episode_index"].tolist()) <= {0, 1}  # the failure episode is filtered out
    cams |= {int(np.median(im)) for im in b["image"]["base_0_rgb"]}
    prompts |= {tok.detokenize(t, m) for t, m in zip(b["tokenized_prompt"], b["tokenized_prompt_mask"])}
  assert {c // 10 for c in cams} == {9, 16}
  assert prompts == {"wipe the table", "clean the table"}


def test_oxe_generic_without_wrist_camera(tmp_path, rb, loader_fn):
  import ml_collections
  steps = [{"observation": {"image": np.full((8, 8, 3), 77, np.uint8), "state": np.full(10, t, np.float32)},
            "action": np.full(10, t + 0.5, np.float32), "language_instruction": "push the block"} for t in range(4)]
  rb.write_episodes(tmp_path, "oxe_tiny", [rb.as_episode(steps, "f")], rb.oxe_generic_features(8, wrist_image=False))
  cfg = ml_collections.ConfigDict({"datasets": [{"name": "oxe_tiny", "data_dir": str(tmp_path),
                                                 "adapter": "oxe_generic"}], "num_workers": 1, "prefetch": 0})
  b = next(loader_fn(cfg, batch_size=4, action_horizon=3))
  assert b["image_mask"]["base_0_rgb"].all() and not b["image_mask"]["left_wrist_0_rgb"].any()
  np.testing.assert_allclose(b["state"][:, :10], np.repeat(np.arange(4.0)[:, None], 10, 1))
  np.testing.assert_allclose(b["actions"][3, :, 0], [3.5, 3.5, 3.5])
  np.testing.assert_array_equal(b["actions_mask"][3], [True, False, False])
