"""Environment adapters for inference: what a robot client sends and what it gets back (openpi's request layouts).

| env | request keys | model cameras | state | actions out |
|---|---|---|---|---|
| libero | `observation/image`, `observation/wrist_image` (H,W,3) uint8, `observation/state` (8), `prompt` | base ← image, left wrist ← wrist_image, right wrist zeros (mask False) | 8 | 7 |
| droid | `observation/exterior_image_1_left`, `observation/wrist_image_left`, `observation/joint_position` (7), `observation/gripper_position` (1 or scalar), `prompt` | base ← exterior_1_left, left wrist ← wrist_left, right wrist zeros (mask False) | 8 | 8 |
| aloha | `images` {`cam_high`, `cam_low`, `cam_left_wrist`, `cam_right_wrist`} (3,H,W) or (H,W,3), `state` (14), `prompt` | base ← cam_high, wrists ← cam_*_wrist (zeros, mask False if absent); cam_low accepted, unused | 14 | 14 |

These follow openpi's `LiberoInputs/Outputs`, `DroidInputs/Outputs` and `AlohaInputs/Outputs` for π0 (see
`apt_jax/policies/envs.py`).
"""

from apt_jax.policies.envs import ENVS, EnvAdapter, InputError, get_env, parse_image  # noqa: F401
