"""DROID (openpi's `DroidInputs` / `DroidOutputs` and `droid_rlds_dataset.py`): training and serving.

| model camera | request field = RLDS feature under steps/ |
|---|---|
| base_0_rgb | observation/exterior_image_1_left (RLDS training also draws _2_left per episode) |
| left_wrist_0_rgb | observation/wrist_image_left |
| right_wrist_0_rgb | zeros, mask False |
State observation/joint_position (7) ++ observation/gripper_position (1); actions: RLDS action_dict/joint_position
(7) ++ action_dict/gripper_position (1); prompt: request `prompt`, RLDS language_instruction (training draws _2 / _3
per episode among the non-empty ones). Left out of openpi's loader: its success-only file filter
(`file_path_regex=".*success.*"` turns it on) and its idle-frame filter.
"""

from apt_jax.envs import base

ENV = base.SingleArmAdapter(
    name="droid", image_key="observation/exterior_image_1_left", wrist_image_key="observation/wrist_image_left",
    state_fields=(("observation/joint_position", 7), ("observation/gripper_position", 1)), action_dim=8)
RLDS = ENV.rlds_adapter(
    action_keys=("steps/action_dict/joint_position", "steps/action_dict/gripper_position"),
    instruction_keys=("steps/language_instruction", "steps/language_instruction_2", "steps/language_instruction_3"),
    more_base_images=("observation/exterior_image_2_left",))
