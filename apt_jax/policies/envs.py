"""Per-robot request/response adapters (openpi's `*Inputs` / `*Outputs` data transforms for π0), with validation.

An adapter turns one unbatched request dict into

    {"image": {camera: uint8 [H, W, 3]}, "image_mask": {camera: bool}, "state": float32 [S], "prompt": str | None}

(cameras = the model's IMAGE_KEYS; images are not resized here) and crops the model's action chunk back to the
robot's action dims. Every problem with a request raises `InputError`, whose message names the offending field, so
the server can answer with an error frame instead of a traceback.

Differences from openpi, all on inputs openpi would accept silently or crash on:
* fields are validated (presence, rank, size, dtype, finiteness); openpi pads or fails later with a traceback;
* float images are clipped to [0, 1] before `(255 * x).astype(uint8)` (openpi wraps out-of-range values);
* images may be (H, W, 3) or (3, H, W) for every env (openpi's ALOHA always transposes; LIBERO/DROID guess like here);
* strings may arrive as str or as a 0-d / 1-element NumPy string array (openpi calls `.item()` on non-str prompts).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping

import numpy as np

IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
MAX_IMAGE_SIDE = 4096
MAX_PROMPT_CHARS = 4096


class InputError(ValueError):
  """A request field is missing or malformed. `field` names it (e.g. "observation/image")."""

  def __init__(self, field: str, message: str):
    self.field = field
    self.detail = message
    super().__init__(f"field {field!r}: {message}")


def _describe(x) -> str:
  if isinstance(x, np.ndarray):
    return f"array of shape {x.shape} and dtype {x.dtype}"
  return f"{type(x).__name__}"


def get_field(obs: Mapping, key: str):
  if key not in obs:
    raise InputError(key, f"missing from the request (it has {sorted(map(str, obs))})")
  return obs[key]


def parse_image(x, field: str) -> np.ndarray:
  """(H, W, 3) or (3, H, W), uint8 or float in [0, 1] -> uint8 (H, W, 3) (openpi's `_parse_image`, validated)."""
  if not isinstance(x, np.ndarray):
    raise InputError(field, f"expected an image array, got {_describe(x)}")
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
    return (255 * np.clip(x.astype(np.float32), 0.0, 1.0)).astype(np.uint8)
  raise InputError(field, f"expected dtype uint8 (or float in [0, 1]), got {x.dtype}")


def parse_vector(x, field: str, dim: int) -> np.ndarray:
  """A numeric vector of exactly `dim` values (a scalar is accepted when dim == 1) -> float32 [dim]."""
  if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool):
    x = np.asarray([x])
  if not isinstance(x, np.ndarray):
    raise InputError(field, f"expected a numeric array of shape ({dim},), got {_describe(x)}")
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
    p = p.reshape(()).item()
  if isinstance(p, bytes):
    try:
      p = p.decode("utf-8")
    except UnicodeDecodeError as e:
      raise InputError(field, f"bytes are not UTF-8 ({e})") from None
  if not isinstance(p, str):
    raise InputError(field, f"expected a string, got {_describe(p)}")
  if len(p) > MAX_PROMPT_CHARS:
    raise InputError(field, f"prompt of {len(p)} characters exceeds {MAX_PROMPT_CHARS}")
  return p


def _check_mapping(obs) -> Mapping:
  if not isinstance(obs, Mapping):
    raise InputError("<request>", f"expected a map of named fields, got {_describe(obs)}")
  return obs


def _three_cameras(base, left, right) -> tuple[dict, dict]:
  """Images and masks for the model's cameras; a None camera becomes zeros like `base` with mask False."""
  images, masks = {}, {}
  for key, img in zip(IMAGE_KEYS, (base, left, right)):
    images[key] = np.zeros_like(base) if img is None else img
    masks[key] = img is not None
  return images, masks


def _crop(actions: np.ndarray, dim: int) -> np.ndarray:
  actions = np.asarray(actions)
  if actions.shape[-1] < dim:
    raise ValueError(f"model produces {actions.shape[-1]} action dims, the robot needs {dim}")
  return np.asarray(actions[..., :dim], np.float32)


@dataclasses.dataclass(frozen=True)
class EnvAdapter(abc.ABC):
  """Request parsing (inputs) and action cropping (outputs) for one robot."""

  name: str = ""
  state_dim: int = 0
  action_dim: int = 0

  @abc.abstractmethod
  def inputs(self, obs: Mapping) -> dict:
    """Validated request -> {"image", "image_mask", "state", "prompt"} (see module docstring)."""

  def outputs(self, actions: np.ndarray) -> np.ndarray:
    """Model actions [AH, D] in robot units (unnormalized, absolute) -> [AH, action_dim]."""
    return _crop(actions, self.action_dim)

  @abc.abstractmethod
  def example(self, rng: np.random.Generator, *, image_shape=(224, 224, 3), prompt: str = "do something") -> dict:
    """A random request of this env's layout (openpi's `make_*_example`)."""

  def metadata(self) -> dict:
    return {"env": self.name, "state_dim": self.state_dim, "action_dim": self.action_dim}


@dataclasses.dataclass(frozen=True)
class LiberoAdapter(EnvAdapter):
  """openpi `LiberoInputs` / `LiberoOutputs` (π0: the right wrist is a zero image with mask False)."""

  name: str = "libero"
  state_dim: int = 8
  action_dim: int = 7

  def inputs(self, obs):
    obs = _check_mapping(obs)
    base = parse_image(get_field(obs, "observation/image"), "observation/image")
    wrist = parse_image(get_field(obs, "observation/wrist_image"), "observation/wrist_image")
    state = parse_vector(get_field(obs, "observation/state"), "observation/state", self.state_dim)
    images, masks = _three_cameras(base, wrist, None)
    return {"image": images, "image_mask": masks, "state": state, "prompt": parse_prompt(obs)}

  def example(self, rng, *, image_shape=(224, 224, 3), prompt="do something"):
    return {
        "observation/image": rng.integers(0, 256, size=image_shape, dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, size=image_shape, dtype=np.uint8),
        "observation/state": rng.standard_normal(self.state_dim).astype(np.float32),
        "prompt": prompt,
    }


@dataclasses.dataclass(frozen=True)
class DroidAdapter(EnvAdapter):
  """openpi `DroidInputs` / `DroidOutputs`: state = joint_position (7) ++ gripper_position (1)."""

  name: str = "droid"
  state_dim: int = 8
  action_dim: int = 8

  def inputs(self, obs):
    obs = _check_mapping(obs)
    base = parse_image(get_field(obs, "observation/exterior_image_1_left"), "observation/exterior_image_1_left")
    wrist = parse_image(get_field(obs, "observation/wrist_image_left"), "observation/wrist_image_left")
    joints = parse_vector(get_field(obs, "observation/joint_position"), "observation/joint_position", 7)
    gripper = parse_vector(get_field(obs, "observation/gripper_position"), "observation/gripper_position", 1)
    images, masks = _three_cameras(base, wrist, None)
    return {"image": images, "image_mask": masks, "state": np.concatenate([joints, gripper]),
            "prompt": parse_prompt(obs)}

  def example(self, rng, *, image_shape=(224, 224, 3), prompt="do something"):
    return {
        "observation/exterior_image_1_left": rng.integers(0, 256, size=image_shape, dtype=np.uint8),
        "observation/wrist_image_left": rng.integers(0, 256, size=image_shape, dtype=np.uint8),
        "observation/joint_position": rng.random(7),
        "observation/gripper_position": rng.random(1),
        "prompt": prompt,
    }


@dataclasses.dataclass(frozen=True)
class TabletopAdapter(EnvAdapter):
  """The CPU testbed's 2-D tabletop (apt_jax/envs): one top-down camera, state = gripper x, y, closure."""

  name: str = "tabletop"
  state_dim: int = 3
  action_dim: int = 3

  def inputs(self, obs):
    obs = _check_mapping(obs)
    image = parse_image(get_field(obs, "observation/image"), "observation/image")
    state = parse_vector(get_field(obs, "observation/state"), "observation/state", self.state_dim)
    return {"image": {IMAGE_KEYS[0]: image}, "image_mask": {IMAGE_KEYS[0]: True}, "state": state,
            "prompt": parse_prompt(obs)}

  def example(self, rng, *, image_shape=(80, 80, 3), prompt="put the red block in the bowl"):
    return {"observation/image": rng.integers(0, 256, size=image_shape, dtype=np.uint8),
            "observation/state": rng.random(self.state_dim).astype(np.float32), "prompt": prompt}


# --- ALOHA ---------------------------------------------------------------------------------------------------------
# openpi's `adapt_to_pi` converts between the ALOHA runtime's joint/gripper conventions and the ones π0 was pretrained
# on: some joints are mirrored, and the grippers (dims 6 and 13) go from ALOHA's normalized linear position to π0's
# normalized angle (inputs), and from π0's angle to ALOHA's normalized joint angle (outputs).
ALOHA_JOINT_FLIP = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1], np.float32)
ALOHA_GRIPPERS = [6, 13]


def _rescale(x, lo, hi):
  return (x - lo) / (hi - lo)


def aloha_gripper_to_angular(x: np.ndarray) -> np.ndarray:
  """ALOHA normalized linear gripper position -> π0's normalized gripper angle."""
  linear = x * (0.05800 - 0.01844) + 0.01844  # PUPPET_GRIPPER_POSITION_{CLOSED, OPEN} (m)
  arm, horn = 0.036, 0.022  # Interbotix gripper linkage (m)
  angle = np.arcsin(np.clip((horn**2 + linear**2 - arm**2) / (2 * horn * linear), -1.0, 1.0))
  return _rescale(angle, 0.5476, 1.6296)  # π0: encoder counts 2405..3110 of 4096, zero at 2048, in radians


def aloha_gripper_from_angular(x: np.ndarray) -> np.ndarray:
  """π0's gripper output -> ALOHA's normalized gripper joint angle (PUPPET_GRIPPER_JOINT_{OPEN, CLOSE})."""
  return _rescale(x + 0.5476, -0.6213, 1.4910)


@dataclasses.dataclass(frozen=True)
class AlohaAdapter(EnvAdapter):
  """openpi `AlohaInputs` / `AlohaOutputs` (`adapt_to_pi=True` by default, as in openpi's ALOHA configs)."""

  name: str = "aloha"
  state_dim: int = 14
  action_dim: int = 14
  adapt_to_pi: bool = True
  cameras: tuple[str, ...] = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")

  def inputs(self, obs):
    obs = _check_mapping(obs)
    raw = get_field(obs, "images")
    if not isinstance(raw, Mapping):
      raise InputError("images", f"expected a map camera name -> image, got {_describe(raw)}")
    unknown = sorted(map(str, set(raw) - set(self.cameras)))
    if unknown:
      raise InputError("images", f"unknown cameras {unknown}; expected a subset of {list(self.cameras)}")
    if "cam_high" not in raw:
      raise InputError("images/cam_high", f"missing from the request (images has {sorted(map(str, raw))})")
    imgs = {k: parse_image(v, f"images/{k}") for k, v in raw.items()}
    state = parse_vector(get_field(obs, "state"), "state", self.state_dim)
    if self.adapt_to_pi:
      state = ALOHA_JOINT_FLIP * state
      state[ALOHA_GRIPPERS] = aloha_gripper_to_angular(state[ALOHA_GRIPPERS])
    images, masks = _three_cameras(imgs["cam_high"], imgs.get("cam_left_wrist"), imgs.get("cam_right_wrist"))
    return {"image": images, "image_mask": masks, "state": state.astype(np.float32), "prompt": parse_prompt(obs)}

  def outputs(self, actions):
    actions = _crop(actions, self.action_dim).copy()
    if self.adapt_to_pi:
      actions = ALOHA_JOINT_FLIP * actions
      actions[..., ALOHA_GRIPPERS] = aloha_gripper_from_angular(actions[..., ALOHA_GRIPPERS])
    return actions.astype(np.float32)

  def example(self, rng, *, image_shape=(224, 224, 3), prompt="do something"):
    chw = (image_shape[2], image_shape[0], image_shape[1])
    return {
        "state": np.ones(self.state_dim, np.float32),
        "images": {k: rng.integers(0, 256, size=chw, dtype=np.uint8) for k in self.cameras},
        "prompt": prompt,
    }


ENVS: dict[str, EnvAdapter] = {a.name: a for a in (LiberoAdapter(), DroidAdapter(), AlohaAdapter(),
                                                   TabletopAdapter())}


def get_env(name: str, **overrides) -> EnvAdapter:
  if name not in ENVS:
    raise ValueError(f"Unknown env {name!r}; known: {sorted(ENVS)}")
  return dataclasses.replace(ENVS[name], **overrides) if overrides else ENVS[name]
