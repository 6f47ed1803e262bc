"""What every robot module (libero.py, droid.py, aloha.py) builds on: the two mappings and the request validation.

* `RldsAdapter` (training): which RLDS features feed the model's cameras, state, actions and prompt.
* `EnvAdapter` (serving): one unbatched request dict ->
      {"image": {camera: uint8 [H, W, 3]}, "image_mask": {camera: bool}, "state": float32 [S], "prompt": str | None}
  (cameras = models.model.IMAGE_KEYS; images are not resized here), and the model's action chunk -> the robot's.
Every problem with a request raises `InputError` naming the field, so the server answers with an error frame.

Differences from openpi, all on inputs openpi would accept silently or crash on: fields are validated (presence,
rank, size, dtype, finiteness); float images must lie in [-1, 1] (openpi wraps anything outside [0, 1]); images may
be (H, W, 3) or (3, H, W) for every env; strings may arrive as str or a 0-d / 1-element NumPy array.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping

import numpy as np

from apt_jax.models.model import IMAGE_KEYS

MAX_IMAGE_SIDE = 4096
MAX_PROMPT_CHARS = 4096


def rlds_key(request_key: str) -> str:
  """The RLDS feature of a request field: the same path under the episode's `steps/`."""
  return "steps/" + request_key


@dataclasses.dataclass(frozen=True)
class RldsAdapter:
  """Feature mapping from one RLDS spec to the model's inputs (flat TFDS paths, e.g. "steps/observation/image").

  Attributes:
    name: adapter name (the data config's `adapter`).
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


# --- Request validation --------------------------------------------------------------------------------------------


class InputError(ValueError):
  """A request field is missing or malformed. `field` names it (e.g. "observation/image")."""

  def __init__(self, field: str, message: str):
    self.field = field
    self.detail = message
    super().__init__(f"field {field!r}: {message}")


def describe(x) -> str:
  if isinstance(x, np.ndarray):
    return f"array of shape {x.shape} and dtype {x.dtype}"
  return f"{type(x).__name__}"


def check_mapping(obs) -> Mapping:
  if not isinstance(obs, Mapping):
    raise InputError("<request>", f"expected a map of named fields, got {describe(obs)}")
  return obs


def get_field(obs: Mapping, key: str):
  if key not in obs:
    raise InputError(key, f"missing from the request (it has {sorted(map(str, obs))})")
  return obs[key]


def parse_image(x, field: str) -> np.ndarray:
  """(H, W, 3) or (3, H, W), uint8 or float in [-1, 1] -> uint8 (H, W, 3) (openpi's `_parse_image`, validated).

  Floats without negative values are openpi's [0, 1] (`255 * x`); with negative values, the model's own [-1, 1]
  (`(x + 1) * 127.5`). Anything outside [-1, 1] (e.g. 0..255 sent as float) is an error naming the observed range.
  """
  if not isinstance(x, np.ndarray):
    raise InputError(field, f"expected an image array, got {describe(x)}")
  if x.ndim != 3:
    raise InputError(field, f"expected an image of shape (H, W, 3) or (3, H, W), got shape {x.shape}")
  if x.shape[-1] != 3 and x.shape[0] == 3:
    x = np.transpose(x, (1, 2, 0))
  if x.shape[-1] != 3:
    raise InputError(field, f"expected 3 colour channels, shape (H, W, 3) or (3, H, W); got shape {x.shape}")
  if not (0 < x.shape[0] <= MAX_IMAGE_SIDE and 0 < x.shape[1] <= MAX_IMAGE_SIDE):
    raise InputError(field, f"image size {x.shape[:2]} outside 1..{MAX_IMAGE_SIDE} pixels per side")
  if x.dtype == np.uint8:
    return x
  if np.issubdtype(x.dtype, np.floating):
    if not np.all(np.isfinite(x)):
      raise InputError(field, "float image has NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0 or hi > 1.0:
      raise InputError(field, f"float image values must lie in [-1, 1] ([0, 1] or [-1, 1]); observed range "
                       f"[{lo:g}, {hi:g}] (send 0..255 images as uint8)")
    x = x.astype(np.float32)
    return np.round((x + 1.0) * 127.5).astype(np.uint8) if lo < 0 else (255 * x).astype(np.uint8)
  raise InputError(field, f"expected dtype uint8 (or float in [-1, 1]), got {x.dtype}")


def parse_vector(x, field: str, dim: int) -> np.ndarray:
  """A numeric vector of exactly `dim` values (a scalar is accepted when dim == 1) -> float32 [dim]."""
  if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool):
    x = np.asarray([x])
  if not isinstance(x, np.ndarray):
    raise InputError(field, f"expected a numeric array of shape ({dim},), got {describe(x)}")
  if x.dtype.kind not in "iuf":
    raise InputError(field, f"expected a numeric (int or float) array, got dtype {x.dtype}")
  if x.ndim == 0 and dim == 1:
    x = x.reshape(1)
  if x.shape != (dim,):
    raise InputError(field, f"expected shape ({dim},), got shape {x.shape}")
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise InputError(field, "has NaN or infinite values")
  return x


def parse_prompt(obs: Mapping, field: str = "prompt") -> str | None:
  if field not in obs:
    return None
  p = obs[field]
  if isinstance(p, np.ndarray) and p.dtype.kind in "US" and p.size == 1:
    p = p.reshape(()).item()  # openpi clients may send np.str_ arrays
  if isinstance(p, bytes):
    try:
      p = p.decode("utf-8")
    except UnicodeDecodeError as e:
      raise InputError(field, f"bytes are not UTF-8 ({e})") from None
  if not isinstance(p, str):
    raise InputError(field, f"expected a string, got {describe(p)}")
  if len(p) > MAX_PROMPT_CHARS:
    raise InputError(field, f"prompt of {len(p)} characters exceeds {MAX_PROMPT_CHARS}")
  return p


def model_cameras(base, left, right) -> tuple[dict, dict]:
  """Images and masks for the model's cameras; a None camera becomes zeros like `base` with mask False."""
  images, masks = {}, {}
  for key, img in zip(IMAGE_KEYS, (base, left, right), strict=True):
    images[key] = np.zeros_like(base) if img is None else img
    masks[key] = img is not None
  return images, masks


def crop_actions(actions: np.ndarray, dim: int) -> np.ndarray:
  actions = np.asarray(actions)
  if actions.shape[-1] < dim:
    raise ValueError(f"model produces {actions.shape[-1]} action dims, the robot needs {dim}")
  return np.asarray(actions[..., :dim], np.float32)


@dataclasses.dataclass(frozen=True)
class EnvAdapter(abc.ABC):
  """Request parsing (inputs) and action cropping (outputs) for one robot (openpi's `*Inputs` / `*Outputs`)."""

  name: str = ""
  state_dim: int = 0
  action_dim: int = 0

  @abc.abstractmethod
  def inputs(self, obs: Mapping) -> dict:
    """Validated request -> {"image", "image_mask", "state", "prompt"} (see the module docstring)."""

  def outputs(self, actions: np.ndarray) -> np.ndarray:
    """Model actions [AH, D] in robot units (unnormalized, absolute) -> [AH, action_dim]."""
    return crop_actions(actions, self.action_dim)

  @abc.abstractmethod
  def example(self, rng: np.random.Generator, *, image_shape=(224, 224, 3), prompt: str = "do something") -> dict:
    """A random request of this env's layout (openpi's `make_*_example`)."""


@dataclasses.dataclass(frozen=True)
class SingleArmAdapter(EnvAdapter):
  """One arm seen by a base camera and a wrist camera, state from one or more fields (openpi's `LiberoInputs` /
  `DroidInputs`); π0's right wrist is a zero image with mask False. `rlds_adapter` derives the training mapping from
  the same field names (RLDS stores them under `steps/`)."""

  image_key: str = ""
  wrist_image_key: str = ""
  state_fields: tuple[tuple[str, int], ...] = ()  # (request field, width), concatenated into the state

  def __post_init__(self):
    object.__setattr__(self, "state_dim", sum(d for _, d in self.state_fields))

  def inputs(self, obs):
    obs = check_mapping(obs)
    img = parse_image(get_field(obs, self.image_key), self.image_key)
    wrist = parse_image(get_field(obs, self.wrist_image_key), self.wrist_image_key)
    state = np.concatenate([parse_vector(get_field(obs, k), k, d) for k, d in self.state_fields])
    images, masks = model_cameras(img, wrist, None)
    return {"image": images, "image_mask": masks, "state": state, "prompt": parse_prompt(obs)}

  def example(self, rng, *, image_shape=(224, 224, 3), prompt="do something"):
    return {self.image_key: rng.integers(0, 256, size=image_shape, dtype=np.uint8),
            self.wrist_image_key: rng.integers(0, 256, size=image_shape, dtype=np.uint8),
            **{k: rng.random(d).astype(np.float32) for k, d in self.state_fields},  # openpi: np.random.rand
            "prompt": prompt}

  def rlds_adapter(self, *, action_keys: tuple[str, ...], instruction_keys: tuple[str, ...],
                   more_base_images: tuple[str, ...] = ()) -> RldsAdapter:
    """The RLDS mapping of this robot's datasets: the same cameras and state fields under `steps/`, the given action
    and instruction features, and `more_base_images` (request field names) as further base-camera candidates."""
    return RldsAdapter(
        name=self.name,
        cameras={"base_0_rgb": tuple(map(rlds_key, (self.image_key, *more_base_images))),
                 "left_wrist_0_rgb": (rlds_key(self.wrist_image_key),), "right_wrist_0_rgb": ()},
        state_keys=tuple(rlds_key(k) for k, _ in self.state_fields), action_keys=action_keys,
        instruction_keys=instruction_keys, state_dim=self.state_dim, action_dim=self.action_dim)
