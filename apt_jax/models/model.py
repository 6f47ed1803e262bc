"""The model contract shared by every action head: Observation, Actions, BaseModelConfig, BaseModel.

Mirrors openpi's `models/model.py` (without its torch imports). Letters: B batch, AH action horizon, AD action dim,
L max prompt tokens, S state dim.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from apt_jax import tree as tree_lib
from apt_jax.models import image_tools

IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
IMAGE_RESOLUTION = (224, 224)

ArrayT = TypeVar("ArrayT", jax.Array, np.ndarray, jax.ShapeDtypeStruct)

# Actions: float [*B, AH, AD].
Actions = Any


@flax.struct.dataclass
class Observation(Generic[ArrayT]):
  """Model inputs.

  images: camera -> float32 [*B, H, W, 3] in [-1, 1]  (uint8 is accepted by `from_dict` and mapped to [-1, 1])
  image_masks: camera -> bool [*B]   (False: the camera is absent, e.g. LIBERO's right wrist)
  state: float32 [*B, S]
  tokenized_prompt: int32 [*B, L];  tokenized_prompt_mask: bool [*B, L]
  token_ar_mask / token_loss_mask: optional int/bool [*B, L] (prefix-LM training of the VLM)
  """

  images: dict
  image_masks: dict
  state: Any
  tokenized_prompt: Any = None
  tokenized_prompt_mask: Any = None
  token_ar_mask: Any = None
  token_loss_mask: Any = None

  @classmethod
  def from_dict(cls, data: Mapping) -> "Observation":
    """From openpi's dict layout: `image`, `image_mask`, `state`, `tokenized_prompt`, `tokenized_prompt_mask`."""
    for key in ("image", "state"):
      if key not in data:
        raise KeyError(f"Observation dict is missing {key!r}; has {sorted(data)}")
    if ("tokenized_prompt" in data) != ("tokenized_prompt_mask" in data):
      raise ValueError("tokenized_prompt and tokenized_prompt_mask must be provided together")
    images = {}
    for name, img in data["image"].items():
      if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0 * 2.0 - 1.0
      images[name] = img
    return cls(
        images=images,
        image_masks=dict(data.get("image_mask", {})),
        state=data["state"],
        tokenized_prompt=data.get("tokenized_prompt"),
        tokenized_prompt_mask=data.get("tokenized_prompt_mask"),
        token_ar_mask=data.get("token_ar_mask"),
        token_loss_mask=data.get("token_loss_mask"),
    )

  def to_dict(self) -> dict:
    d = {"image": self.images, "image_mask": self.image_masks, "state": self.state}
    for k in ("tokenized_prompt", "tokenized_prompt_mask", "token_ar_mask", "token_loss_mask"):
      if getattr(self, k) is not None:
        d[k] = getattr(self, k)
    return d


def preprocess_observation(rng, observation: Observation, *, train: bool = False,
                           image_keys: Sequence[str] = IMAGE_KEYS,
                           image_resolution: tuple[int, int] = IMAGE_RESOLUTION) -> Observation:
  """Resizes images to `image_resolution` with padding, augments them when training, fills missing masks."""
  missing = set(image_keys) - set(observation.images)
  if missing:
    raise ValueError(f"Observation lacks cameras {sorted(missing)}; has {sorted(observation.images)}")
  batch_shape = observation.state.shape[:-1]
  out_images = {}
  for i, key in enumerate(image_keys):
    image = observation.images[key]
    if image.shape[1:3] != tuple(image_resolution):
      image = image_tools.resize_with_pad(image, *image_resolution)
    if train:
      image = image_tools.augment(jax.random.fold_in(rng, i), image, wrist="wrist" in key)
    out_images[key] = image
  out_masks = {k: jnp.asarray(observation.image_masks[k]) if k in observation.image_masks
               else jnp.ones(batch_shape, jnp.bool_) for k in out_images}
  return dataclasses.replace(observation, images=out_images, image_masks=out_masks)


def resolve_apt_options(config) -> None:
  """Validates apt_stage / dtype and fills the stage-dependent defaults of a head config (in place, frozen-safe):
  vlm_trainable None -> trainable only for "none"; vlm_lr_multiplier None -> 1.0 for "none" (openpi's one learning
  rate), 0.1 for APT stages. Stage 1 requires a frozen VLM."""
  if config.apt_stage not in ("none", "stage1", "stage2"):
    raise ValueError(f"apt_stage={config.apt_stage!r}; expected 'none', 'stage1' or 'stage2'")
  if config.dtype not in ("bfloat16", "float32"):
    raise ValueError(f"dtype={config.dtype!r}; expected 'bfloat16' or 'float32'")
  if config.vlm_trainable is None:
    object.__setattr__(config, "vlm_trainable", config.apt_stage == "none")
  if config.vlm_lr_multiplier is None:
    object.__setattr__(config, "vlm_lr_multiplier", 1.0 if config.apt_stage == "none" else 0.1)
  if config.apt_stage == "stage1" and config.vlm_trainable:
    raise ValueError("apt_stage='stage1' trains the VA prior with a frozen VLM: vlm_trainable must be False")


@dataclasses.dataclass(frozen=True)
class BaseModelConfig(abc.ABC):
  """Owns the input contract (inputs_spec) and builds models."""

  action_dim: int
  action_horizon: int
  max_token_len: int
  # Cameras the model reads, in prefix order, and the resolution images are resized (with padding) to. openpi's
  # defaults; the CPU testbed uses one camera at its native 80x80.
  image_keys: tuple[str, ...] = IMAGE_KEYS
  image_resolution: tuple[int, int] = IMAGE_RESOLUTION

  def __post_init__(self):
    object.__setattr__(self, "image_keys", tuple(self.image_keys))
    object.__setattr__(self, "image_resolution", tuple(int(x) for x in self.image_resolution))
    if not self.image_keys or len(self.image_resolution) != 2:
      raise ValueError(f"image_keys={self.image_keys!r} must be non-empty and image_resolution="
                       f"{self.image_resolution!r} a (height, width) pair")

  def preprocess(self, rng, observation: Observation, *, train: bool = False) -> Observation:
    return preprocess_observation(rng, observation, train=train, image_keys=self.image_keys,
                                  image_resolution=self.image_resolution)

  @abc.abstractmethod
  def create(self, rng) -> "BaseModel":
    """A model with freshly initialised params."""

  @abc.abstractmethod
  def module(self):
    """The linen module; `module().init/apply` with `{"params": params}`."""

  def inputs_spec(self, *, batch_size: int = 1) -> tuple[Observation, Actions]:
    s = jax.ShapeDtypeStruct
    obs = Observation(
        images={k: s((batch_size, *self.image_resolution, 3), jnp.float32) for k in self.image_keys},
        image_masks={k: s((batch_size,), jnp.bool_) for k in self.image_keys},
        state=s((batch_size, self.action_dim), jnp.float32),
        tokenized_prompt=s((batch_size, self.max_token_len), jnp.int32),
        tokenized_prompt_mask=s((batch_size, self.max_token_len), jnp.bool_),
    )
    return obs, s((batch_size, self.action_horizon, self.action_dim), jnp.float32)

  def fake_obs(self, batch_size: int = 1) -> Observation:
    obs, _ = self.inputs_spec(batch_size=batch_size)
    return jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), obs)

  def fake_act(self, batch_size: int = 1) -> Actions:
    _, act = self.inputs_spec(batch_size=batch_size)
    return jnp.ones(act.shape, act.dtype)

  def abstract_params(self) -> dict:
    return jax.eval_shape(lambda: self.create(jax.random.key(0)).params)

  def load(self, params: dict, *, remove_extra: bool = False) -> "BaseModel":
    """A model with the given params, after checking that keys and shapes match the model exactly."""
    want = self.abstract_params()
    if remove_extra:
      flat_w = tree_lib.flatten(want)
      params = tree_lib.unflatten({k: v for k, v in tree_lib.flatten(params).items() if k in flat_w})
    tree_lib.check_tree(params, want, what="params")
    return self.model_class()(config=self, params=params)

  @abc.abstractmethod
  def model_class(self) -> type["BaseModel"]:
    ...

  # Params that Stage 2 adds on top of a Stage 1 model (regex over "/"-joined paths).
  stage2_new_params_regex = r".*fusion.*"

  def stage2_partial_params(self, stage1_params: dict, abstract_params: dict):
    """Stage 1 -> Stage 2 init: every Stage 1 param is restored, only the new fusion params are initialised.

    Returns (partial params to merge over a fresh init, restored keys, new keys). Fails, naming the keys, on a
    Stage 1 param the Stage 2 model lacks, a shape mismatch, or a Stage 2 param that is neither restored nor new.
    Heads whose stage expansion renumbers layers (the APT expert) override this.
    """
    tree_lib.check_tree(stage1_params, abstract_params, what="Stage 1 params",
                        allow_missing=self.stage2_new_params_regex)
    s1, s2 = tree_lib.flatten(stage1_params), tree_lib.flatten(abstract_params)
    new = sorted(s2.keys() - s1.keys())
    partial = {k: np.asarray(v).astype(s2[k].dtype) for k, v in s1.items()}
    return tree_lib.unflatten(partial), sorted(s1), new

  def freeze_filter(self, path: str) -> bool:
    """True for params that are frozen (no gradient, no optimizer state); "/"-joined path."""
    return False

  def frozen_mask(self, params) -> dict:
    return tree_lib.unflatten({k: self.freeze_filter(k) for k in tree_lib.flatten(params)})


def is_vlm_param(path: str) -> bool:
  """SigLIP and Gemma expert 0 (PaliGemma's own weights); not the action expert (`_1`) nor fusion layers.

  Inside `PaliGemma/llm`, experts i > 0 carry a `_i` suffix on some path component (`q_einsum_1`, `mlp_1`,
  `fusion_1`); SigLIP's linen auto-names (`LayerNorm_0`, `Dense_1`) are all VLM.
  """
  if path.startswith("PaliGemma/img/"):
    return True
  return path.startswith("PaliGemma/llm/") and not any(re.search(r"_\d+$", p) for p in path.split("/")[2:])


@flax.struct.dataclass
class BaseModel:
  """config (static) + params (the pytree): safe to pass through jit; `model.replace(params=...)`."""

  config: BaseModelConfig = flax.struct.field(pytree_node=False)
  params: dict

  def _apply(self, method, *args, **kwargs):
    return self.config.module().apply({"params": self.params}, *args, method=method, **kwargs)

  @abc.abstractmethod
  def compute_loss(self, rng, observation: Observation, actions: Actions, *, train: bool = False):
    """-> per-example, per-step loss [B, AH]."""

  @abc.abstractmethod
  def sample_actions(self, rng, observation: Observation, **kwargs) -> Actions:
    """-> [B, AH, AD]."""


def log_param_counts(params):
  flat = tree_lib.flatten(params)
  logging.info("params: %d arrays, %.2fM values", len(flat), tree_lib.tree_size(params) / 1e6)
