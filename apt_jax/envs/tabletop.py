"""The CPU testbed's 2-D tabletop (apt_jax/testbed/tabletop.py): serving only (its data is made in memory).

| model camera | request field |
|---|---|
| base_0_rgb | observation/image (the top-down 80x80 view) |
State observation/state (3: gripper x, y, closure); actions (3: dx, dy, gripper command).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from apt_jax.envs import base


@dataclasses.dataclass(frozen=True)
class TabletopAdapter(base.EnvAdapter):
  """One top-down camera, no wrist camera: the model reads `base_0_rgb` only (its `image_keys`)."""

  name: str = "tabletop"
  state_dim: int = 3
  action_dim: int = 3

  def inputs(self, obs):
    obs = base.check_mapping(obs)
    image = base.parse_image(base.get_field(obs, "observation/image"), "observation/image")
    state = base.parse_vector(base.get_field(obs, "observation/state"), "observation/state", self.state_dim)
    return {"image": {"base_0_rgb": image}, "image_mask": {"base_0_rgb": True}, "state": state,
            "prompt": base.parse_prompt(obs)}

  def example(self, rng, *, image_shape=(80, 80, 3), prompt="put the red block in the bowl"):
    return {"observation/image": rng.integers(0, 256, size=image_shape, dtype=np.uint8),
            "observation/state": rng.random(self.state_dim).astype(np.float32), "prompt": prompt}


ENV = TabletopAdapter()
