"""The contract every action head shares: Observation, Actions, VlaHeadConfig, VlaHeadModule and BaseModel.

Mirrors openpi's `models/model.py` (without its torch imports). A head is three small things: a `VlaHeadConfig`
subclass (its sizes and `module()`), a `VlaHeadModule` subclass with `encode` (the VLM, once per observation) and
`denoise` (one step of the sampler), and a `BaseModel` subclass. `BaseModel.compute_loss` and `sample_actions` run
them through the config's objective (objectives.py), so each head writes neither.

Letters: B batch (*b: any batch shape), AH action horizon, AD action dim, S state dim, L max prompt tokens,
H/W/C image height/width/channels.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, get_args

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from apt_jax import tree as tree_lib
from apt_jax.models import array_typing as at
from apt_jax.models import gemma
from apt_jax.models import image_tools
from apt_jax.models import lora
from apt_jax.models import objectives
from apt_jax.models import siglip

IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
IMAGE_RESOLUTION = (224, 224)

AptStage = Literal["none", "stage1", "stage2"]
Stage2PrefixMask = Literal["causal", "prefix_lm"]
Dtype = Literal["bfloat16", "float32"]


@flax.struct.dataclass
class Observation:
  """Model inputs; `from_dict` / `to_dict` convert from / to openpi's dict layout. Checked at construction."""

  # Camera -> image in [-1, 1] (`from_dict` maps uint8 to [-1, 1]). Sizes may differ: `preprocess` resizes.
  images: dict[str, at.Float[at.Array, "*b _h _w c"]]
  # Camera -> False where the camera is absent (e.g. LIBERO's right wrist).
  image_masks: dict[str, at.Bool[at.Array, "*b"]]
  state: at.Float[at.Array, "*b s"]
  tokenized_prompt: at.Int[at.Array, "*b l"] | None = None
  tokenized_prompt_mask: at.Bool[at.Array, "*b l"] | None = None
  # Prefix-LM training of the VLM (openpi's FAST fields).
  token_ar_mask: at.Int[at.Array, "*b l"] | None = None
  token_loss_mask: at.Bool[at.Array, "*b l"] | None = None

  def __post_init__(self):
    at.check_fields(self)

  @classmethod
  def from_dict(cls, data: Mapping) -> Observation:
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


Actions = at.Float[at.Array, "*b ah ad"]


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


def check_choice(config, name: str, choices: tuple) -> None:
  """A config field that takes one of a few values; the error names the field."""
  value = getattr(config, name)
  if value not in choices:
    raise ValueError(f"{name}={value!r}; expected one of {choices}")


@dataclasses.dataclass(frozen=True)
class BaseModelConfig(abc.ABC):
  """The input contract (openpi's): sizes, cameras, `inputs_spec` and fake batches; builds and loads models."""

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
  def create(self, rng) -> BaseModel:
    """A model with freshly initialised params."""

  @abc.abstractmethod
  def module(self) -> nn.Module:
    """The linen module; `module().init/apply` with `{"params": params}`."""

  @abc.abstractmethod
  def model_class(self) -> type[BaseModel]:
    ...

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

  def load(self, params: dict, *, remove_extra: bool = False) -> BaseModel:
    """A model with the given params, after checking that keys and shapes match the model exactly."""
    want = self.abstract_params()
    if remove_extra:
      flat_w = tree_lib.flatten(want)
      params = tree_lib.unflatten({k: v for k, v in tree_lib.flatten(params).items() if k in flat_w})
    tree_lib.check_tree(params, want, what="params")
    return self.model_class()(config=self, params=params)

  def freeze_filter(self, path: str) -> bool:
    """True for params that are frozen (no gradient, no optimizer state); "/"-joined path."""
    del path
    return False

  def frozen_mask(self, params) -> dict:
    return tree_lib.unflatten({k: self.freeze_filter(k) for k in tree_lib.flatten(params)})


@dataclasses.dataclass(frozen=True)
class VlaHeadConfig(BaseModelConfig):
  """A PaliGemma VLM and an action head trained with APT's stages: what π0, GR00T and the APT expert share.

  A head adds its own sizes, `module()`, `model_class()` and `stage2_new_params_regex`. Variants are a name
  ("gemma_2b", "So400m/14", "dummy"), a size config or a dict of its fields (ml_collections and JSON give dicts).
  """

  action_dim: int = 32
  action_horizon: int = 50
  max_token_len: int = 48
  # Compute dtype; params stay float32.
  dtype: Dtype = "bfloat16"
  paligemma_variant: Any = "gemma_2b"
  siglip_variant: Any = "So400m/14"
  vocab_size: int = gemma.PALIGEMMA_VOCAB_SIZE
  remat_policy: str = "nothing_saveable"
  # "none" (one-stage training), "stage1" (the VA prior: no prompt, VLM frozen), "stage2" (+ the language path).
  apt_stage: AptStage = "none"
  # None: trainable for "none", frozen for "stage1" (required) and "stage2" (the paper's default).
  vlm_trainable: bool | None = None
  # None: 1.0 for "none" (openpi's joint training uses one learning rate), 0.1 for the APT stages.
  vlm_lr_multiplier: float | None = None
  # Stop the gradient from the action head into the VLM, even when it trains (π0.5's knowledge insulation).
  knowledge_insulation: bool = False
  # Stage 2: may image tokens attend to the prompt?
  #   "causal"     no, as in a causal VLM (the paper's Qwen3-VL): the prior's inputs are Stage 1's, so with the gates
  #                shut the model equals its Stage 1 parent exactly;
  #   "prefix_lm"  yes, PaliGemma's own mask: the VLM grounds the prompt in the image tokens as it was pretrained to,
  #                and the prior's inputs move by the prompt's effect on the image features (Stage 2 != Stage 1 at
  #                init).
  stage2_prefix_mask: Stage2PrefixMask = "causal"
  # "flow" (flow matching in the head's `flow_convention`) or "ddim" (the paper's ε-prediction); objectives.py.
  objective: objectives.ObjectiveName = "flow"
  # Sampling steps; None: the objective's default (flow: 10 for π0, 4 for GR00T; DDIM: 20).
  num_steps: int | None = None
  # DDIM loss weights ((num_dims, weight), ...) over the leading action dims; () = a uniform mean.
  loss_weights: Any = ()
  # DDIM loss: "l1" (the paper) or "l2" (unbiased for multimodal actions; see objectives.Ddim).
  ddim_loss: objectives.DdimLoss = "l1"
  # DDPM training steps T.
  diffusion_steps: int = 100
  # The data side writes the normalized state into the prompt as 256-bin tokens (π0.5; tokenizer.py). None: False
  # (Pi0Config: π0.5's default).
  discrete_state_input: bool | None = None

  flow_convention: ClassVar[objectives.FlowConvention] = "pi0"
  # The params Stage 2 adds to a Stage 1 model (a regex over "/"-joined paths); all others come from Stage 1.
  stage2_new_params_regex: ClassVar[str]

  def __post_init__(self):
    super().__post_init__()
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("paligemma_variant", gemma.get_config(self.paligemma_variant))
    set_("siglip_variant", siglip.get_config(self.siglip_variant))
    set_("loss_weights", objectives.normalize_loss_weights(self.loss_weights))
    check_choice(self, "apt_stage", get_args(AptStage))
    check_choice(self, "dtype", get_args(Dtype))
    check_choice(self, "objective", get_args(objectives.ObjectiveName))
    check_choice(self, "stage2_prefix_mask", get_args(Stage2PrefixMask))
    if self.vlm_trainable is None:
      set_("vlm_trainable", self.apt_stage == "none")
    if self.vlm_lr_multiplier is None:
      set_("vlm_lr_multiplier", 1.0 if self.apt_stage == "none" else 0.1)
    if self.discrete_state_input is None:
      set_("discrete_state_input", False)
    if self.apt_stage == "stage1" and self.vlm_trainable:
      raise ValueError("apt_stage='stage1' trains the VA prior with a frozen VLM: vlm_trainable must be False")
    if self.apt_stage == "stage1" and self.vlm_config.lora is not None:
      raise ValueError("apt_stage='stage1' trains the VA prior with a frozen VLM: no LoRA on the VLM "
                       f"(paligemma_variant has lora_rank={self.vlm_config.lora_rank})")
    # The DDIM options are checked whatever the objective: a bad one fails here, not in a later run that uses it.
    objectives.Ddim(self.action_dim, loss_weights=self.loss_weights, ddim_loss=self.ddim_loss)

  @property
  def vlm_config(self) -> gemma.Config:
    return self.paligemma_variant

  @property
  def gemma_experts(self) -> tuple[gemma.Config, ...]:
    """The Gemma experts of `PaliGemma/llm`, in index order (expert i's params carry the `_i` suffix)."""
    return (self.vlm_config,)

  def without_lora(self) -> VlaHeadConfig:
    """The same model with no LoRA adapters (what `lora.merge_params` of this model's params loads into)."""
    return dataclasses.replace(self, paligemma_variant=dataclasses.replace(self.paligemma_variant, lora_rank=0,
                                                                           lora_alpha=1.0))

  @property
  def uses_language(self) -> bool:
    """Stage 1 drops the prompt from the sequence: numerically the same as masking it out of every attention."""
    return self.apt_stage != "stage1"

  @property
  def language_block(self) -> bool:
    """The prompt opens a new attention block, so image tokens never attend to it and Stage 2's vision features
    are Stage 1's."""
    return self.apt_stage == "stage2" and self.stage2_prefix_mask == "causal"

  @property
  def stop_vlm_gradient(self) -> bool:
    """No gradient from the head into the VLM: it is frozen (and has no LoRA adapters), or knowledge insulation is
    on."""
    return not (self.vlm_trainable or self.vlm_config.lora is not None) or self.knowledge_insulation

  def objective_fn(self) -> objectives.Objective:
    if self.objective == "flow":
      return objectives.FlowMatching(self.flow_convention, num_steps=self.num_steps)
    return objectives.Ddim(action_dim=self.action_dim, diffusion_steps=self.diffusion_steps,
                           num_steps=self.num_steps, loss_weights=self.loss_weights, ddim_loss=self.ddim_loss)

  def create(self, rng) -> BaseModel:
    """Freshly initialised params (a jitted `init_all`, which touches every param whatever the stage)."""
    obs, act = self.inputs_spec(batch_size=1)

    @jax.jit
    def init(rng):
      zeros = lambda x: jnp.zeros(x.shape, x.dtype)
      return self.module().init(rng, jax.tree.map(zeros, obs), zeros(act), method="init_all")["params"]

    return self.model_class()(config=self, params=init(rng))

  def freeze_filter(self, path: str) -> bool:
    """The VLM unless `vlm_trainable`; with a LoRA VLM, its Gemma weights whatever `vlm_trainable` (openpi's
    get_freeze_filter: SigLIP then trains in one-stage runs). LoRA adapters always train."""
    if lora.is_lora_param(path) or not is_vlm_param(path):
      return False
    return not self.vlm_trainable or (self.vlm_config.lora is not None and llm_expert(path) == 0)

  # --- Stage 1 -> Stage 2 ---------------------------------------------------------------------------------------

  def stage2_name(self, stage1_key: str) -> str:
    """Where a Stage 1 param goes in the Stage 2 tree: the same name unless the head renumbers its layers."""
    return stage1_key

  def stage2_zeroed(self, key: str) -> bool:
    """True for a new Stage 2 param that starts at zero instead of its fresh init."""
    del key
    return False

  def stage2_partial_params(self, stage1_params: dict, abstract_params: dict):
    """Stage 1 -> Stage 2 init: every Stage 1 param is restored (under `stage2_name`); the params matching
    `stage2_new_params_regex` are new, left to a fresh init or zeroed (`stage2_zeroed`).

    abstract_params: the Stage 2 tree (arrays or ShapeDtypeStructs). Returns (partial params to merge over a fresh
    init, restored keys, new keys), with Stage 2 names. Fails, naming every key, on a Stage 1 param the Stage 2
    model lacks or shapes differently, or a Stage 2 param that is neither restored nor new.
    """
    s1, s2 = tree_lib.flatten(stage1_params), tree_lib.flatten(abstract_params)
    renamed = {self.stage2_name(k): k for k in s1}  # Stage 2 key -> Stage 1 key
    problems = []
    for k2, k1 in renamed.items():
      name = k1 if k1 == k2 else f"{k1} (Stage 2: {k2})"
      if k2 not in s2:
        problems.append(f"{name}: not in the Stage 2 model")
      elif np.shape(s1[k1]) != np.shape(s2[k2]):
        problems.append(f"{name}: shape {np.shape(s1[k1])} in Stage 1 params, expected {np.shape(s2[k2])}")
    new = sorted(s2.keys() - renamed.keys())
    # New in Stage 2: the head's language path, and LoRA adapters (a Stage 2 that fine-tunes the VLM through LoRA).
    problems += [f"{k}: neither in Stage 1 nor new in Stage 2" for k in new
                 if not (re.fullmatch(self.stage2_new_params_regex, k) or lora.is_lora_param(k))]
    if problems:
      raise tree_lib.TreeMismatchError("Stage 1 params do not fit the Stage 2 model:\n  " + "\n  ".join(problems))
    partial = {k2: _as_dtype(s1[k1], s2[k2].dtype) for k2, k1 in renamed.items()}
    partial.update({k: np.zeros(np.shape(s2[k]), s2[k].dtype) for k in new if self.stage2_zeroed(k)})
    return tree_lib.unflatten(partial), sorted(renamed), new


def _as_dtype(x, dtype):
  """A restored value in the model's dtype; an abstract one (jax.eval_shape) stays abstract."""
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(x.shape, dtype)
  return np.asarray(x).astype(dtype)


def llm_expert(path: str) -> int | None:
  """The Gemma expert of a `PaliGemma/llm/...` param: i for a `_i` suffix on some path component (`q_einsum_1`,
  `mlp_1`, `fusion_1`), else 0 (the VLM); None outside the LLM."""
  if not path.startswith("PaliGemma/llm/"):
    return None
  suffixes = [m.group(1) for p in path.split("/")[2:] if (m := re.search(r"_(\d+)$", p))]
  return int(suffixes[0]) if suffixes else 0


def is_vlm_param(path: str) -> bool:
  """SigLIP and Gemma expert 0 (PaliGemma's own weights, LoRA adapters included); not the action expert (`_1`) nor
  fusion layers. SigLIP's linen auto-names (`LayerNorm_0`, `Dense_1`) are all VLM."""
  return path.startswith("PaliGemma/img/") or llm_expert(path) == 0


class VlaHeadModule(nn.Module):
  """The linen side of a head. A subclass defines

    encode(obs, *, with_language=None) -> context    the VLM and everything else that depends on `obs` alone;
                                                     with_language=None: the stage's choice (`uses_language`)
    denoise(obs, context, x_t, net_time) -> [B, AH, AD]   the objective's prediction (objectives.py)

  and may override `predict` when its training pass differs from encode + denoise (π0's joint pass).
  """

  def predict(self, obs: Observation, x_t, net_time):
    """The prediction for the loss, in one pass, so that gradients reach every trainable param."""
    return self.denoise(obs, self.encode(obs), x_t, net_time)

  def init_all(self, obs: Observation, actions):
    """Touches every param whatever the stage: the prompt embedding and the Stage 2 layers too."""
    return self.denoise(obs, self.encode(obs, with_language=True), actions, jnp.zeros(actions.shape[0]))


@flax.struct.dataclass
class BaseModel:
  """config (static) + params (the pytree): safe to pass through jit; `model.replace(params=...)`.

  An observation batch of 1 may go with N actions (compute_loss) or N noise samples (sample_actions) in the heads
  that broadcast their context (GR00T, APT expert): the VLM then runs once for N action samples.
  """

  config: VlaHeadConfig = flax.struct.field(pytree_node=False)
  params: dict

  def apply(self, method, *args, **kwargs):
    """Runs one method of the config's module with these params."""
    return self.config.module().apply({"params": self.params}, *args, method=method, **kwargs)

  def split_rng(self, rng):
    """-> (preprocess, noise, time) keys of compute_loss."""
    preprocess_rng, rng = jax.random.split(rng)
    return (preprocess_rng, *jax.random.split(rng))

  @at.typecheck
  def compute_loss(self, rng: at.KeyArrayLike, observation: Observation, actions: Actions, *, train: bool = False,
                   noise: Actions | None = None, time: at.Real[at.Array, "*b"] | None = None
                   ) -> at.Float[at.Array, "*b ah"]:
    """Per-example, per-step loss. `noise` / `time` fix the corruption (time: the objective's own, e.g. the
    continuous t for flow matching, the integer step k for DDIM)."""
    return self.compute_loss_with_intermediates(rng, observation, actions, train=train, noise=noise, time=time)[0]

  def compute_loss_with_intermediates(self, rng, observation, actions, *, train=False, noise=None, time=None):
    """-> (loss [*b, AH], what the module sowed in its forward pass: π0's tokens, masks, positions and outputs)."""
    preprocess_rng, noise_rng, time_rng = self.split_rng(rng)
    observation = self.config.preprocess(preprocess_rng, observation, train=train)
    objective = self.config.objective_fn()
    if noise is None:
      noise = jax.random.normal(noise_rng, actions.shape)
    if time is None:
      time = objective.sample_time(time_rng, actions.shape[:-2])
    x_t, net_time, target = objective.training_inputs(actions, noise, time)
    prediction, state = self.apply("predict", observation, x_t, net_time, mutable=["intermediates"])
    sown = {k: v[0] for k, v in tree_lib.flatten(state.get("intermediates", {})).items()}
    return objective.loss(prediction.astype(jnp.float32), target), sown

  @at.typecheck
  def sample_actions(self, rng: at.KeyArrayLike | None, observation: Observation, *, num_steps: int | None = None,
                     noise: at.Float[at.Array, "b ah ad"] | None = None) -> at.Float[at.Array, "b ah ad"]:
    """Actions from the objective's sampler: the VLM runs once (`encode`), the head once per step (`denoise`)."""
    observation = self.config.preprocess(None, observation, train=False)
    c = self.config
    batch = observation.state.shape[0]
    if noise is None:
      noise = jax.random.normal(rng, (batch, c.action_horizon, c.action_dim))
    elif noise.shape[0] != batch and batch != 1:
      raise ValueError(f"noise batch {noise.shape[0]} != observation batch {batch}")
    context = self.apply("encode", observation)

    def denoise(x_t, net_time):
      return self.apply("denoise", observation, context, x_t, net_time).astype(jnp.float32)

    return self.integrate(denoise, noise, num_steps)

  def integrate(self, denoise: objectives.Denoiser, noise, num_steps: int | None):
    """The sampler: from `noise` to actions with `denoise(x_t, net_time)`."""
    return self.config.objective_fn().sample(denoise, noise, num_steps)


def log_param_counts(params):
  flat = tree_lib.flatten(params)
  logging.info("params: %d arrays, %.2fM values", len(flat), tree_lib.tree_size(params) / 1e6)
