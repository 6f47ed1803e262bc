"""ALOHA (openpi's `AlohaInputs` / `AlohaOutputs`, `adapt_to_pi=True` as in openpi's ALOHA configs): serving.

Request: `images` {cam_high, cam_low, cam_left_wrist, cam_right_wrist} (3, H, W) or (H, W, 3), `state` (14),
`prompt`. Model cameras: base <- cam_high, wrists <- cam_*_wrist (zeros, mask False if absent); cam_low is accepted
and unused. Actions out: 14.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from apt_jax.envs import base

# openpi's `adapt_to_pi` converts between the ALOHA runtime's joint/gripper conventions and the ones π0 was pretrained
# on: some joints are mirrored, and the grippers (dims 6 and 13) go from ALOHA's normalized linear position to π0's
# normalized angle (inputs), and from π0's angle to ALOHA's normalized joint angle (outputs).
JOINT_FLIP = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1], np.float32)
GRIPPERS = [6, 13]


def _rescale(x, lo, hi):
  return (x - lo) / (hi - lo)


def gripper_to_angular(x: np.ndarray) -> np.ndarray:
  """ALOHA normalized linear gripper position -> π0's normalized gripper angle."""
  linear = x * (0.05800 - 0.01844) + 0.01844  # PUPPET_GRIPPER_POSITION_{CLOSED, OPEN} (m)
  arm, horn = 0.036, 0.022  # Interbotix gripper linkage (m)
  angle = np.arcsin(np.clip((horn**2 + linear**2 - arm**2) / (2 * horn * linear), -1.0, 1.0))
  return _rescale(angle, 0.5476, 1.6296)  # π0: encoder counts 2405..3110 of 4096, zero at 2048, in radians


def gripper_from_angular(x: np.ndarray) -> np.ndarray:
  """π0's gripper output -> ALOHA's normalized gripper joint angle (PUPPET_GRIPPER_JOINT_{OPEN, CLOSE})."""
  return _rescale(x + 0.5476, -0.6213, 1.4910)


@dataclasses.dataclass(frozen=True)
class AlohaAdapter(base.EnvAdapter):
  """openpi `AlohaInputs` / `AlohaOutputs`."""

  name: str = "aloha"
  state_dim: int = 14
  action_dim: int = 14
  adapt_to_pi: bool = True
  cameras: tuple[str, ...] = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")

  def inputs(self, obs):
    obs = base.check_mapping(obs)
    raw = base.get_field(obs, "images")
    if not isinstance(raw, Mapping):
      raise base.InputError("images", f"expected a map camera name -> image, got {base.describe(raw)}")
    unknown = sorted(map(str, set(raw) - set(self.cameras)))
    if unknown:
      raise base.InputError("images", f"unknown cameras {unknown}; expected a subset of {list(self.cameras)}")
    if "cam_high" not in raw:
      raise base.InputError("images/cam_high", f"missing from the request (images has {sorted(map(str, raw))})")
    imgs = {k: base.parse_image(v, f"images/{k}") for k, v in raw.items()}
    state = base.parse_vector(base.get_field(obs, "state"), "state", self.state_dim)
    if self.adapt_to_pi:
      state = JOINT_FLIP * state
      state[GRIPPERS] = gripper_to_angular(state[GRIPPERS])
    images, masks = base.model_cameras(imgs["cam_high"], imgs.get("cam_left_wrist"), imgs.get("cam_right_wrist"))
    return {"image": images, "image_mask": masks, "state": state.astype(np.float32),
            "prompt": base.parse_prompt(obs)}

  def outputs(self, actions):
    actions = base.crop_actions(actions, self.action_dim).copy()
    if self.adapt_to_pi:
      actions = JOINT_FLIP * actions
      actions[..., GRIPPERS] = gripper_from_angular(actions[..., GRIPPERS])
    return actions.astype(np.float32)

  def example(self, rng, *, image_shape=(224, 224, 3), prompt="do something"):
    chw = (image_shape[2], image_shape[0], image_shape[1])
    return {
        "state": np.ones(self.state_dim, np.float32),
        "images": {k: rng.integers(0, 256, size=chw, dtype=np.uint8) for k in self.cameras},
        "prompt": prompt,
    }


ENV = AlohaAdapter()
