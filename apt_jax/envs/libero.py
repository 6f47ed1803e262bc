"""LIBERO (openvla's modified_libero_rlds; openpi's `LiberoInputs` / `LiberoOutputs`): training and serving.

| model camera | request field = RLDS feature under steps/ |
|---|---|
| base_0_rgb | observation/image |
| left_wrist_0_rgb | observation/wrist_image |
| right_wrist_0_rgb | zeros, mask False (π0) |
State observation/state (8); actions: RLDS `action` (7), served cropped to 7; prompt: request `prompt`, RLDS
`language_instruction`.
"""

from apt_jax.envs import base

ENV = base.SingleArmAdapter(name="libero", image_key="observation/image", wrist_image_key="observation/wrist_image",
                            state_fields=(("observation/state", 8),), action_dim=7)
RLDS = ENV.rlds_adapter(action_keys=("steps/action",), instruction_keys=("steps/language_instruction",))
