"""Per-dataset adapters: which RLDS features feed the model's cameras, state, actions and prompt.

Feature names are flat TFDS paths ("steps/observation/image"), exactly the keys of `features.tf_example_spec`.
Several keys for one quantity are concatenated along the last axis (DROID's joint positions + gripper position).

| adapter | base_0_rgb | left_wrist_0_rgb | right_wrist_0_rgb | state | actions | prompt |
|---|---|---|---|---|---|---|
| libero | observation/image | observation/wrist_image | zeros, mask False | observation/state (8) | action (7) | language_instruction |
| droid | observation/exterior_image_1_left (or _2_left, drawn per episode when training) | observation/wrist_image_left | zeros, mask False | observation/joint_position (7) + gripper_position (1) | action_dict/joint_position (7) + action_dict/gripper_position (1) | language_instruction (or _2 / _3, drawn per episode when training, among the non-empty ones) |
| oxe_generic | observation/image | observation/wrist_image if present | zeros, mask False | observation/state (any dim) | action (any dim) | language_instruction |

The LIBERO mapping is openpi's `LiberoInputs` (pi0: right wrist masked out); DROID follows openpi's
`droid_rlds_dataset.py` (joint-position actions, random exterior camera and instruction per trajectory) but leaves
out its success-only file filter (`file_path_regex=".*success.*"` turns it on) and its idle-frame filter.

Any field can be overridden per dataset with `adapter_kwargs` in the data config, e.g.
`{"adapter": "oxe_generic", "adapter_kwargs": {"action_keys": ["steps/action/world_vector",
"steps/action/rotation_delta", "steps/action/open_gripper"], "instruction_keys": ["steps/natural_language_instruction"]}}`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclasses.dataclass(frozen=True)
class Adapter:
  """Feature mapping from one RLDS spec to the model's inputs.

  Attributes:
    name: adapter name.
    cameras: model camera -> candidate RLDS image keys. Empty: the camera is all zeros with mask False. With several
      candidates, evaluation uses the first and training draws one per episode (seeded).
    state_keys / action_keys: RLDS keys concatenated into the state [T, state_dim] / actions [T, action_dim].
    instruction_keys: RLDS text keys; like `cameras`, the first is used at evaluation, training draws one of the
      non-empty ones per episode.
    state_dim / action_dim: expected widths after concatenation (None: any); a mismatch is a bad record.
    optional_keys: image keys that may be absent from a dataset's spec (that camera is then zeros, mask False).
    file_path_key: episode-level key naming the source file, used in error messages.
    file_path_regex: if set, episodes whose file_path does not match (re.search) are dropped (not errors).
  """

  name: str
  cameras: Mapping[str, tuple[str, ...]]
  state_keys: tuple[str, ...]
  action_keys: tuple[str, ...]
  instruction_keys: tuple[str, ...]
  state_dim: int | None = None
  action_dim: int | None = None
  optional_keys: frozenset[str] = frozenset()
  file_path_key: str = "episode_metadata/file_path"
  file_path_regex: str | None = None

  def __post_init__(self):
    unknown = set(self.cameras) - set(IMAGE_KEYS)
    if unknown:
      raise ValueError(f"adapter {self.name}: unknown cameras {sorted(unknown)}; expected a subset of {IMAGE_KEYS}")

  @property
  def image_keys(self) -> tuple[str, ...]:
    return tuple(k for cam in IMAGE_KEYS for k in self.cameras.get(cam, ()))

  @property
  def numeric_keys(self) -> tuple[str, ...]:
    return self.state_keys + self.action_keys

  @property
  def all_keys(self) -> tuple[str, ...]:
    return self.image_keys + self.numeric_keys + self.instruction_keys + (self.file_path_key,)


LIBERO = Adapter(
    name="libero",
    cameras={
        "base_0_rgb": ("steps/observation/image",),
        "left_wrist_0_rgb": ("steps/observation/wrist_image",),
        "right_wrist_0_rgb": (),
    },
    state_keys=("steps/observation/state",),
    action_keys=("steps/action",),
    instruction_keys=("steps/language_instruction",),
    state_dim=8,
    action_dim=7,
)

DROID = Adapter(
    name="droid",
    cameras={
        "base_0_rgb": ("steps/observation/exterior_image_1_left", "steps/observation/exterior_image_2_left"),
        "left_wrist_0_rgb": ("steps/observation/wrist_image_left",),
        "right_wrist_0_rgb": (),
    },
    state_keys=("steps/observation/joint_position", "steps/observation/gripper_position"),
    action_keys=("steps/action_dict/joint_position", "steps/action_dict/gripper_position"),
    instruction_keys=("steps/language_instruction", "steps/language_instruction_2", "steps/language_instruction_3"),
    state_dim=8,
    action_dim=8,
)

OXE_GENERIC = Adapter(
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

ADAPTERS: dict[str, Adapter] = {a.name: a for a in (LIBERO, DROID, OXE_GENERIC)}


def get_adapter(name: str, **overrides) -> Adapter:
  """Returns the named adapter, with fields replaced by `overrides` (lists become tuples)."""
  if name not in ADAPTERS:
    raise ValueError(f"Unknown adapter {name!r}; known: {sorted(ADAPTERS)}")
  if not overrides:
    return ADAPTERS[name]
  fields = {f.name for f in dataclasses.fields(Adapter)}
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
