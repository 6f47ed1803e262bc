"""PaliGemma as a feature extractor for heads that read VLM hidden states (GR00T-style DiT, the APT expert).

Parameter tree: `PaliGemma/img` (SigLIP) and `PaliGemma/llm` (a single-expert gemma.Module), the same names as expert
0 of openpi's π0, so PaliGemma npz weights and π0's VLM weights load unchanged.

Prefix = [image tokens of each camera ; prompt tokens]. With `language_block=True` the prompt starts a new
autoregressive block (big_vision's prefix-LM mask), so image tokens never attend to it and their hidden states are
the same with or without a prompt (APT Stages 1 and 2). Positions are cumsum(mask) − 1, images first, so adding a
prompt does not move the images either.

Letters: B batch, P prefix length, D VLM width, L VLM depth.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import einops
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from apt_jax.models import gemma as _gemma
from apt_jax.models import model as _model
from apt_jax.models import objectives as _objectives
from apt_jax.models import siglip as _siglip

AptStage = Literal["none", "stage1", "stage2"]


@dataclasses.dataclass
class Prefix:
  tokens: Any        # [B, P, D] input embeddings (SigLIP tokens; prompt embeddings scaled by √D)
  mask: Any          # [B, P] bool, valid tokens
  ar: np.ndarray     # [P] bool, static
  is_lang: np.ndarray  # [P] bool, static


def make_attn_mask(input_mask, mask_ar):
  """big_vision/openpi prefix-LM mask. input_mask [B, N] bool; mask_ar [N] bool -> [B, N, N]."""
  mask_ar = jnp.broadcast_to(jnp.asarray(mask_ar), input_mask.shape)
  cumsum = jnp.cumsum(mask_ar, axis=1)
  attn_mask = cumsum[:, None, :] <= cumsum[:, :, None]
  valid_mask = input_mask[:, None, :] * input_mask[:, :, None]
  return jnp.logical_and(attn_mask, valid_mask)


def rms_normalize(x, eps: float = 1e-6):
  """Parameter-free RMS normalisation in float32 (for projecting raw Gemma residual streams)."""
  x = x.astype(jnp.float32)
  return x * jnp.reciprocal(jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps))


class PaliGemma(nn.Module):
  """SigLIP + Gemma (one expert). `__call__(prefix)` returns every hidden state [L+1, B, P, D]."""

  vlm_config: _gemma.Config
  siglip_config: _siglip.Config
  dtype: str = "bfloat16"
  vocab_size: int = _gemma.PALIGEMMA_VOCAB_SIZE
  remat_policy: str = "nothing_saveable"

  def setup(self):
    self.img = _siglip.Module(self.siglip_config, num_classes=self.vlm_config.width, dtype_mm=self.dtype,
                              remat_policy=self.remat_policy)
    self.llm = _gemma.Module(configs=(self.vlm_config,), embed_dtype=self.dtype, vocab_size=self.vocab_size,
                             remat_policy=self.remat_policy, return_hidden_states=True)

  def embed(self, obs: _model.Observation, *, with_language: bool, language_block: bool) -> Prefix:
    tokens, masks, ar, is_lang = [], [], [], []
    for name in obs.images:
      image_tokens = self.img(obs.images[name])
      n = image_tokens.shape[1]
      tokens.append(image_tokens)
      masks.append(einops.repeat(jnp.asarray(obs.image_masks[name]), "b -> b s", s=n))
      ar += [False] * n
      is_lang += [False] * n
    if with_language and obs.tokenized_prompt is not None:
      lang = self.llm.embed(obs.tokenized_prompt)
      n = lang.shape[1]
      tokens.append(lang)
      masks.append(jnp.asarray(obs.tokenized_prompt_mask))
      ar += [language_block] + [False] * (n - 1)
      is_lang += [True] * n
    return Prefix(jnp.concatenate(tokens, axis=1), jnp.concatenate(masks, axis=1), np.array(ar, bool),
                  np.array(is_lang, bool))

  def __call__(self, prefix: Prefix):
    """-> hidden states [L+1, B, P, D]: index 0 the input embeddings, index l the output of layer l (no norm)."""
    attn = make_attn_mask(prefix.mask, prefix.ar)
    positions = jnp.cumsum(prefix.mask, axis=1) - 1
    _, _, hidden = self.llm([prefix.tokens], mask=attn, positions=positions)
    return jnp.concatenate([prefix.tokens[None].astype(hidden.dtype), hidden], axis=0)

  def final_norm(self, x):
    """The LLM's final RMSNorm (what PaliGemma applies after its last layer)."""
    return self.llm.final_norms[0](x)[0]


def broadcast_batch(tree, n: int):
  """Broadcasts arrays with a leading batch of 1 to batch n (one observation, n action samples)."""
  def f(x):
    if x.shape[0] == n:
      return x
    if x.shape[0] != 1:
      raise ValueError(f"batch {x.shape[0]} cannot be broadcast to {n} (only a batch of 1 can)")
    return jnp.broadcast_to(x, (n, *x.shape[1:]))
  return jax.tree.map(f, tree)


def _freeze(v):
  """Variant fields may arrive as dicts (ml_collections); store hashable Config objects."""
  return v.to_dict() if hasattr(v, "to_dict") else v


@dataclasses.dataclass(frozen=True)
class FeatureHeadConfig(_model.BaseModelConfig):
  """Fields shared by the heads that read VLM features; subclasses add their own sizes and `module()`.

  apt_stage: "none" (one-stage training), "stage1" (VA prior: no language, VLM frozen), "stage2" (+ language).
  vlm_trainable: None -> trainable for "none", frozen for "stage1" (required) and "stage2" (the paper's default).
  knowledge_insulation: no gradient from the head into the VLM even when the VLM is trainable.
  objective: "flow" (the head's flow-matching convention, `flow_convention`) or "ddim" (the paper's ε-prediction).
  num_steps: sampling steps; None -> the objective's default (flow: 10 π0 / 4 GR00T; DDIM: 20).
  loss_weights: DDIM L1 weights as ((num_dims, weight), ...) over the leading action dims; () = uniform mean.
  ddim_loss: "l1" (the paper) or "l2" (unbiased for multimodal actions; see objectives.py).
  diffusion_steps: DDPM training steps T (100).
  """

  action_dim: int = 32
  action_horizon: int = 16
  max_token_len: int = 48
  dtype: str = "bfloat16"
  paligemma_variant: Any = "gemma_2b"
  siglip_variant: Any = "So400m/14"
  vocab_size: int = _gemma.PALIGEMMA_VOCAB_SIZE
  remat_policy: str = "nothing_saveable"
  apt_stage: AptStage = "none"
  vlm_trainable: bool | None = None
  # None: 1.0 for "none" (one learning rate, as openpi), 0.1 for APT stages with a trainable VLM (as pi0.py).
  vlm_lr_multiplier: float | None = None
  knowledge_insulation: bool = False
  objective: str = "flow"
  num_steps: int | None = None
  loss_weights: Any = ()
  ddim_loss: str = "l1"
  diffusion_steps: int = 100

  flow_convention: ClassVar[str] = "pi0"

  def __post_init__(self):
    super().__post_init__()
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("paligemma_variant", _gemma.get_config(_freeze(self.paligemma_variant)))
    set_("siglip_variant", _siglip.get_config(_freeze(self.siglip_variant)))
    set_("loss_weights", _objectives.normalize_loss_weights(self.loss_weights))
    _objectives.validate(self.objective, self.loss_weights, self.action_dim, self.ddim_loss)
    _model.resolve_apt_options(self)

  @property
  def vlm_config(self) -> _gemma.Config:
    return self.paligemma_variant

  @property
  def uses_language(self) -> bool:
    return self.apt_stage != "stage1"

  @property
  def language_block(self) -> bool:
    """Images never attend to the prompt inside the VLM (APT stages), as in π0's Stage 2."""
    return self.apt_stage != "none"

  @property
  def stop_vlm_gradient(self) -> bool:
    return not self.vlm_trainable or self.knowledge_insulation

  def objective_fn(self):
    return _objectives.make(self.objective, flow_convention=self.flow_convention, action_dim=self.action_dim,
                            num_steps=self.num_steps, loss_weights=self.loss_weights,
                            num_train_steps=self.diffusion_steps, ddim_loss=self.ddim_loss)

  def create(self, rng) -> "FeatureHeadModel":
    """Freshly initialised params (jitted init that touches every param, whatever the stage)."""
    obs, act = self.inputs_spec(batch_size=1)

    @jax.jit
    def init(rng):
      zeros = lambda x: jnp.zeros(x.shape, x.dtype)
      return self.module().init(rng, jax.tree.map(zeros, obs), zeros(act), method="init_all")["params"]

    return self.model_class()(config=self, params=init(rng))

  def freeze_filter(self, path: str) -> bool:
    return (not self.vlm_trainable) and _model.is_vlm_param(path)

  def make_vlm(self) -> PaliGemma:
    return PaliGemma(self.vlm_config, self.siglip_variant, dtype=self.dtype, vocab_size=self.vocab_size,
                     remat_policy=self.remat_policy)


@flax.struct.dataclass
class FeatureHeadModel(_model.BaseModel):
  """Model plumbing shared by heads that read VLM features (GR00T, APT expert).

  The config provides `objective_fn()` (objectives.FlowMatching or Ddim); the module provides
  `predict(obs, x_t, net_time)` (one pass, used for the loss so that gradients reach every trainable param),
  `encode(obs) -> context` (VLM + adapters, run once per sample) and `denoise(obs, context, x_t, net_time)`.

  An observation batch of 1 may go with N actions (compute_loss) or N noise samples (sample_actions): the VLM runs
  once and its features are broadcast (several action samples per observation, e.g. for ensembling).
  """

  def compute_loss(self, rng, observation, actions, *, train=False, noise=None, time=None):
    """-> [B, AH]. `noise`/`time` fix the corruption (time: continuous t for flow, integer step k for DDIM)."""
    preprocess_rng, rng = jax.random.split(rng)
    observation = self.config.preprocess(preprocess_rng, observation, train=train)
    objective = self.config.objective_fn()
    x_t, net_time, target = objective.training_inputs(rng, actions, noise=noise, time=time)
    prediction = self._apply("predict", observation, x_t, net_time)
    return objective.loss(prediction.astype(jnp.float32), target)

  def sample_actions(self, rng, observation, *, num_steps=None, noise=None):
    """-> [B, AH, AD] with the objective's sampler (flow: Euler; DDIM: 20 steps by default)."""
    observation = self.config.preprocess(None, observation, train=False)
    c = self.config
    if noise is None:
      noise = jax.random.normal(rng, (observation.state.shape[0], c.action_horizon, c.action_dim))
    elif noise.shape[0] != observation.state.shape[0] and observation.state.shape[0] != 1:
      raise ValueError(f"noise batch {noise.shape[0]} != observation batch {observation.state.shape[0]}")
    context = self._apply("encode", observation)

    def denoise(x_t, net_time):
      return self._apply("denoise", observation, context, x_t, net_time).astype(jnp.float32)

    return self.config.objective_fn().sample(denoise, noise, num_steps)
