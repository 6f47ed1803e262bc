"""One module per robot, shared by training (`RLDS`: its RLDS feature mapping) and serving (its `EnvAdapter`:
request -> model inputs, model actions -> robot actions); openpi's `policies/<robot>_policy.py` pattern.

| env | module | request -> model | state | actions out | RLDS |
|---|---|---|---|---|---|
| libero | libero.py | image, wrist_image -> base, left wrist | 8 | 7 | yes |
| droid | droid.py | exterior_image_1_left, wrist_image_left -> base, left wrist | 7 + 1 | 8 | yes |
| aloha | aloha.py | cam_high, cam_{left,right}_wrist -> base, wrists | 14 | 14 | no |
| tabletop | tabletop.py | image -> base (the CPU testbed) | 3 | 3 | no |
"""

from __future__ import annotations

import dataclasses

from apt_jax.envs import aloha
from apt_jax.envs import droid
from apt_jax.envs import libero
from apt_jax.envs import tabletop
from apt_jax.envs.base import EnvAdapter
from apt_jax.envs.base import InputError

ENVS: dict[str, EnvAdapter] = {m.ENV.name: m.ENV for m in (libero, droid, aloha, tabletop)}


def get_env(name: str, **overrides) -> EnvAdapter:
  if name not in ENVS:
    raise ValueError(f"Unknown env {name!r}; known: {sorted(ENVS)}")
  return dataclasses.replace(ENVS[name], **overrides) if overrides else ENVS[name]


__all__ = ["ENVS", "EnvAdapter", "InputError", "get_env"]
