"""The RLDS adapters by name (the data config's `adapter`): `libero` and `droid` from their robot modules
(apt_jax/envs/libero.py, droid.py, which document their features), and `oxe_generic` for Open X-Embodiment specs:
base_0_rgb <- observation/image, left_wrist_0_rgb <- observation/wrist_image if present, state <- observation/state
and actions <- action (any widths), prompt <- language_instruction.

Any field can be overridden per dataset with `adapter_kwargs` in the data config, e.g. `{"adapter": "oxe_generic",
"adapter_kwargs": {"action_keys": ["steps/action/world_vector", "steps/action/rotation_delta",
"steps/action/open_gripper"], "instruction_keys": ["steps/natural_language_instruction"]}}`.
"""

from __future__ import annotations

import dataclasses

from apt_jax.envs import droid
from apt_jax.envs import libero
from apt_jax.envs.base import RldsAdapter

OXE_GENERIC = RldsAdapter(
    name="oxe_generic",
    cameras={
        "base_0_rgb": ("steps/observation/image",),
        "left_wrist_0_rgb": ("steps/observation/wrist_image",),
        "right_wrist_0_rgb": (),
    },
    state_keys=("steps/observation/state",),
    action_keys=("steps/action",),
    instruction_keys=("steps/language_instruction",),
    optional_keys=frozenset({"steps/observation/wrist_image"}),
)

ADAPTERS: dict[str, RldsAdapter] = {a.name: a for a in (libero.RLDS, droid.RLDS, OXE_GENERIC)}


def get_adapter(name: str, **overrides) -> RldsAdapter:
  """Returns the named adapter, with fields replaced by `overrides` (lists become tuples)."""
  if name not in ADAPTERS:
    raise ValueError(f"Unknown adapter {name!r}; known: {sorted(ADAPTERS)}")
  if not overrides:
    return ADAPTERS[name]
  fields = {f.name for f in dataclasses.fields(RldsAdapter)}
  unknown = set(overrides) - fields
  if unknown:
    raise ValueError(f"adapter {name}: unknown adapter_kwargs {sorted(unknown)}; fields are {sorted(fields)}")
  fixed = {}
  for k, v in overrides.items():
    if k == "cameras":
      v = {cam: tuple([keys] if isinstance(keys, str) else (keys or ())) for cam, keys in dict(v).items()}
    elif k == "optional_keys":
      v = frozenset(v)
    elif k.endswith("_keys") and v is not None and not isinstance(v, str):
      v = tuple(v)
    elif k.endswith("_keys") and isinstance(v, str):
      v = (v,)
    fixed[k] = v
  return dataclasses.replace(ADAPTERS[name], **fixed)
