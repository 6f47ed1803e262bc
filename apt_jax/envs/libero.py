"""LIBERO (openvla's modified_libero_rlds; openpi's `LiberoInputs` / `LiberoOutputs`): training and serving.

| model camera | request field / RLDS feature (under steps/) |
|---|---|
| base_0_rgb | observation/image |
| left_wrist_0_rgb | observation/wrist_image |
| right_wrist_0_rgb | zeros, mask False (π0) |
State observation/state (8), actions `action` (7), prompt `prompt` / RLDS `language_instruction`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from apt_jax.envs import base

IMAGE, WRIST_IMAGE, STATE = "observation/image", "observation/wrist_image", "observation/state"
STATE_DIM, ACTION_DIM = 8, 7

RLDS = base.RldsAdapter(
    name="libero",
    cameras={"base_0_rgb": (base.rlds_key(IMAGE),), "left_wrist_0_rgb": (base.rlds_key(WRIST_IMAGE),),
             "right_wrist_0_rgb": ()},
    state_keys=(base.rlds_key(STATE),),
    action_keys=("steps/action",),
    instruction_keys=("steps/language_instruction",),
    state_dim=STATE_DIM,
    action_dim=ACTION_DIM,
)


@dataclasses.dataclass(frozen=True)
class LiberoAdapter(base.EnvAdapter):
  """openpi `LiberoInputs` / `LiberoOutputs` (π0: the right wrist is a zero image with mask False)."""

  name: str = "libero"
  state_dim: int = STATE_DIM
  action_dim: int = ACTION_DIM

  def inputs(self, obs):
    obs = base.check_mapping(obs)
    img = base.parse_image(base.get_field(obs, IMAGE), IMAGE)
    wrist = base.parse_image(base.get_field(obs, WRIST_IMAGE), WRIST_IMAGE)
    state = base.parse_vector(base.get_field(obs, STATE), STATE, self.state_dim)
    images, masks = base.model_cameras(img, wrist, None)
    return {"image": images, "image_mask": masks, "state": state, "prompt": base.parse_prompt(obs)}

  def example(self, rng, *, image_shape=(224, 224, 3), prompt="do something"):
    return {
        IMAGE: rng.integers(0, 256, size=image_shape, dtype=np.uint8),
        WRIST_IMAGE: rng.integers(0, 256, size=image_shape, dtype=np.uint8),
        STATE: rng.standard_normal(self.state_dim).astype(np.float32),
        "prompt": prompt,
    }
