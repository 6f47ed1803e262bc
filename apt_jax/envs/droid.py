"""DROID (openpi's `DroidInputs` / `DroidOutputs` and `droid_rlds_dataset.py`): training and serving.

| model camera | request field / RLDS feature (under steps/) |
|---|---|
| base_0_rgb | observation/exterior_image_1_left (RLDS training also draws _2_left per episode) |
| left_wrist_0_rgb | observation/wrist_image_left |
| right_wrist_0_rgb | zeros, mask False |
State observation/joint_position (7) ++ observation/gripper_position (1); actions action_dict/joint_position (7) ++
action_dict/gripper_position (1); prompt `prompt` / RLDS language_instruction (training draws _2 / _3 per episode
among the non-empty ones). Left out of openpi's loader: its success-only file filter (`file_path_regex=".*success.*"`
turns it on) and its idle-frame filter.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from apt_jax.envs import base

EXTERIOR_IMAGE, EXTERIOR_IMAGE_2 = "observation/exterior_image_1_left", "observation/exterior_image_2_left"
WRIST_IMAGE = "observation/wrist_image_left"
JOINTS, GRIPPER = "observation/joint_position", "observation/gripper_position"
NUM_JOINTS = 7
STATE_DIM = ACTION_DIM = NUM_JOINTS + 1

RLDS = base.RldsAdapter(
    name="droid",
    cameras={"base_0_rgb": (base.rlds_key(EXTERIOR_IMAGE), base.rlds_key(EXTERIOR_IMAGE_2)),
             "left_wrist_0_rgb": (base.rlds_key(WRIST_IMAGE),), "right_wrist_0_rgb": ()},
    state_keys=(base.rlds_key(JOINTS), base.rlds_key(GRIPPER)),
    action_keys=("steps/action_dict/joint_position", "steps/action_dict/gripper_position"),
    instruction_keys=("steps/language_instruction", "steps/language_instruction_2", "steps/language_instruction_3"),
    state_dim=STATE_DIM,
    action_dim=ACTION_DIM,
)


@dataclasses.dataclass(frozen=True)
class DroidAdapter(base.EnvAdapter):
  """openpi `DroidInputs` / `DroidOutputs`: state = joint_position (7) ++ gripper_position (1)."""

  name: str = "droid"
  state_dim: int = STATE_DIM
  action_dim: int = ACTION_DIM

  def inputs(self, obs):
    obs = base.check_mapping(obs)
    img = base.parse_image(base.get_field(obs, EXTERIOR_IMAGE), EXTERIOR_IMAGE)
    wrist = base.parse_image(base.get_field(obs, WRIST_IMAGE), WRIST_IMAGE)
    joints = base.parse_vector(base.get_field(obs, JOINTS), JOINTS, NUM_JOINTS)
    gripper = base.parse_vector(base.get_field(obs, GRIPPER), GRIPPER, 1)
    images, masks = base.model_cameras(img, wrist, None)
    return {"image": images, "image_mask": masks, "state": np.concatenate([joints, gripper]),
            "prompt": base.parse_prompt(obs)}

  def example(self, rng, *, image_shape=(224, 224, 3), prompt="do something"):
    return {
        EXTERIOR_IMAGE: rng.integers(0, 256, size=image_shape, dtype=np.uint8),
        WRIST_IMAGE: rng.integers(0, 256, size=image_shape, dtype=np.uint8),
        JOINTS: rng.random(NUM_JOINTS),
        GRIPPER: rng.random(1),
        "prompt": prompt,
    }
