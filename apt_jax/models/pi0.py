"""π0 (openpi's JAX model, numerically identical) with APT's two stages for the π-style architecture.

Token sequence: prefix = [image tokens of each camera ; prompt tokens], suffix = [state token ; AH action tokens].
Letters: B batch, P prefix length, A suffix length (1 + AH), AH action horizon, AD action dim, D width.

APT (`apt_stage`):
  "none"   plain π0 joint training (openpi).
  "stage1" VA prior: the prompt is dropped from the sequence (numerically the same as masking it out of every
           attention, positions included); the VLM is frozen and its prefix runs once, outside the backward pass.
  "stage2" VA prior + VLA likelihood: the prompt is back in the prefix, but the inherited expert self-attention
           still never sees it; every expert layer gets a gated cross-attention sublayer (`fusion_1`) through which
           state/action tokens read the VLM's language-token keys/values of the same layer. `stage2_prefix_mask`:
             "causal"    images never attend to the prompt (as in a causal VLM such as the paper's Qwen3-VL), so the
                         prior's inputs are unchanged and with the gate shut the model equals its Stage 1 parent
                         exactly;
             "prefix_lm" PaliGemma's own prefix-LM mask: images and prompt attend to each other, so the VLM grounds
                         the instruction in the image tokens as it was pretrained to; the prior's inputs move by the
                         prompt's effect on the image features (Stage 2 at init != Stage 1).

Objective (`objective`): "flow" is openpi's flow matching (t=1 noise, 10 Euler steps), unchanged; "ddim" is the APT
paper's ε-prediction DDPM/DDIM (objectives.Ddim: T=100, squaredcos_cap_v2, weighted L1, 20 DDIM steps), with the
diffusion step k given to the time embedding as k/T.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import einops
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from apt_jax.models import gemma as _gemma
from apt_jax.models import model as _model
from apt_jax.models import objectives as _objectives
from apt_jax.models import siglip as _siglip

AptStage = Literal["none", "stage1", "stage2"]
Stage2PrefixMask = Literal["causal", "prefix_lm"]
STAGE2_PREFIX_MASKS = ("causal", "prefix_lm")


def make_attn_mask(input_mask, mask_ar):
  """openpi/big_vision prefix-LM mask. input_mask [B, N] bool; mask_ar [?B, N] bool -> [B, N, N].

  Token i may attend to token j iff cumsum(ar)[j] <= cumsum(ar)[i] and both are valid: an ar=True token starts a
  block that earlier tokens cannot see; tokens with ar=False share the block of the previous token.
  """
  mask_ar = jnp.broadcast_to(mask_ar, input_mask.shape)
  cumsum = jnp.cumsum(mask_ar, axis=1)
  attn_mask = cumsum[:, None, :] <= cumsum[:, :, None]
  valid_mask = input_mask[:, None, :] * input_mask[:, :, None]
  return jnp.logical_and(attn_mask, valid_mask)


def posemb_sincos(pos, embedding_dim: int, min_period: float, max_period: float):
  """Sine-cosine embedding of scalars. pos [B] -> [B, embedding_dim]."""
  if embedding_dim % 2:
    raise ValueError(f"embedding_dim ({embedding_dim}) must be divisible by 2")
  fraction = jnp.linspace(0.0, 1.0, embedding_dim // 2)
  period = min_period * (max_period / min_period) ** fraction
  x = jnp.einsum("i,j->ij", pos, 1.0 / period * 2 * jnp.pi, precision=jax.lax.Precision.HIGHEST)
  return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


def _freeze(v):
  """Variant fields may arrive as dicts (ml_collections); store hashable Config objects."""
  return v.to_dict() if hasattr(v, "to_dict") else v


@dataclasses.dataclass(frozen=True)
class Pi0Config(_model.BaseModelConfig):
  """π0 sizes and APT options. A variant is a name ("gemma_2b", "So400m/14", "dummy") or a size config/dict."""

  action_dim: int = 32
  action_horizon: int = 50
  max_token_len: int = 48
  dtype: str = "bfloat16"
  paligemma_variant: Any = "gemma_2b"
  action_expert_variant: Any = "gemma_300m"
  siglip_variant: Any = "So400m/14"
  vocab_size: int = _gemma.PALIGEMMA_VOCAB_SIZE
  remat_policy: str = "nothing_saveable"
  # APT.
  apt_stage: AptStage = "none"
  fusion_gate: _gemma.FusionGate = "tanh"
  # Stage 2: may image tokens attend to the prompt? "causal" (no) or "prefix_lm" (PaliGemma's mask); see above.
  stage2_prefix_mask: Stage2PrefixMask = "causal"
  # None: trainable for "none", frozen for "stage1" (required) and "stage2" (the paper's default).
  vlm_trainable: bool | None = None
  # None: 1.0 for "none" (openpi's joint training uses one learning rate), 0.1 for APT stages with a trainable VLM.
  vlm_lr_multiplier: float | None = None
  # Stop-gradient from the action expert into the VLM (π0.5's knowledge insulation).
  knowledge_insulation: bool = False
  # "flow" (openpi) or "ddim" (the paper's ε-prediction); see objectives.py.
  objective: str = "flow"
  # Sampling steps; None: 10 for flow, 20 for DDIM.
  num_steps: int | None = None
  # DDIM L1 loss weights ((num_dims, weight), ...); () = uniform mean.
  loss_weights: Any = ()
  # DDIM loss: "l1" (the paper) or "l2".
  ddim_loss: str = "l1"
  diffusion_steps: int = 100

  def __post_init__(self):
    super().__post_init__()
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("paligemma_variant", _gemma.get_config(_freeze(self.paligemma_variant)))
    set_("action_expert_variant", _gemma.get_config(_freeze(self.action_expert_variant)))
    set_("siglip_variant", _siglip.get_config(_freeze(self.siglip_variant)))
    if self.fusion_gate not in _gemma.FUSION_GATES:
      raise ValueError(f"fusion_gate={self.fusion_gate!r}; expected one of {_gemma.FUSION_GATES}")
    if self.stage2_prefix_mask not in STAGE2_PREFIX_MASKS:
      raise ValueError(f"stage2_prefix_mask={self.stage2_prefix_mask!r}; expected one of {STAGE2_PREFIX_MASKS}")
    set_("loss_weights", _objectives.normalize_loss_weights(self.loss_weights))
    _objectives.validate(self.objective, self.loss_weights, self.action_dim, self.ddim_loss)
    _model.resolve_apt_options(self)

  @property
  def vlm_config(self) -> _gemma.Config:
    return self.paligemma_variant

  @property
  def expert_config(self) -> _gemma.Config:
    return dataclasses.replace(self.action_expert_variant, fusion=self.apt_stage == "stage2",
                               fusion_gate=self.fusion_gate)

  @property
  def uses_language(self) -> bool:
    return self.apt_stage != "stage1"

  @property
  def separate_prefix_pass(self) -> bool:
    """Run the VLM prefix once into a KV cache, then the expert on it (same numbers as the joint pass)."""
    return self.apt_stage == "stage1" or not self.vlm_trainable or self.knowledge_insulation

  def objective_fn(self):
    return _objectives.make(self.objective, flow_convention="pi0", action_dim=self.action_dim,
                            num_steps=self.num_steps, loss_weights=self.loss_weights,
                            num_train_steps=self.diffusion_steps, ddim_loss=self.ddim_loss)

  def module(self) -> "Pi0Module":
    return Pi0Module(self)

  def model_class(self):
    return Pi0

  def create(self, rng) -> "Pi0":
    obs, act = self.inputs_spec(batch_size=1)

    @jax.jit
    def init(rng):
      zeros = lambda x: jnp.zeros(x.shape, x.dtype)
      return self.module().init(rng, jax.tree.map(zeros, obs), zeros(act), method=Pi0Module.init_all)["params"]

    return Pi0(config=self, params=init(rng))

  def freeze_filter(self, path: str) -> bool:
    return (not self.vlm_trainable) and _model.is_vlm_param(path)


class PaliGemma(nn.Module):
  """Holds `img` (SigLIP) and `llm` (the Gemma mixture: VLM + action expert), as in openpi's param tree."""

  config: Pi0Config

  def setup(self):
    c = self.config
    self.img = _siglip.Module(c.siglip_variant, num_classes=c.vlm_config.width, dtype_mm=c.dtype,
                              remat_policy=c.remat_policy)
    self.llm = _gemma.Module(configs=(c.vlm_config, c.expert_config), embed_dtype=c.dtype, vocab_size=c.vocab_size,
                             remat_policy=c.remat_policy)


@dataclasses.dataclass
class Prefix:
  tokens: Any   # [B, P, D_vlm]
  mask: Any     # [B, P] bool, valid tokens
  ar: Any       # [P] bool
  is_lang: Any  # [P] bool


class Pi0Module(nn.Module):
  config: Pi0Config

  def setup(self):
    c = self.config
    width = c.expert_config.width
    self.PaliGemma = PaliGemma(c)
    self.state_proj = nn.Dense(width)
    self.action_in_proj = nn.Dense(width)
    self.action_time_mlp_in = nn.Dense(width)
    self.action_time_mlp_out = nn.Dense(width)
    self.action_out_proj = nn.Dense(c.action_dim)

  # --- Embeddings -------------------------------------------------------------------------------------------------

  def embed_prefix(self, obs: _model.Observation, *, with_language: bool = True) -> Prefix:
    tokens, masks, ar, is_lang = [], [], [], []
    for name in obs.images:
      image_tokens = self.PaliGemma.img(obs.images[name])
      n = image_tokens.shape[1]
      tokens.append(image_tokens)
      masks.append(einops.repeat(obs.image_masks[name], "b -> b s", s=n))
      ar += [False] * n
      is_lang += [False] * n
    if with_language and obs.tokenized_prompt is not None:
      lang = self.PaliGemma.llm.embed(obs.tokenized_prompt)
      n = lang.shape[1]
      tokens.append(lang)
      masks.append(obs.tokenized_prompt_mask)
      # Stage 2, "causal": the prompt starts a new block, so image tokens never attend to it (as in Stage 1).
      causal = self.config.apt_stage == "stage2" and self.config.stage2_prefix_mask == "causal"
      ar += [causal] + [False] * (n - 1)
      is_lang += [True] * n
    return Prefix(jnp.concatenate(tokens, axis=1), jnp.concatenate(masks, axis=1), jnp.array(ar), jnp.array(is_lang))

  def embed_suffix(self, obs, noisy_actions, timestep):
    """-> tokens [B, A, D_exp], mask [B, A], ar [A]."""
    state_token = self.state_proj(obs.state)[:, None, :]
    action_tokens = self.action_in_proj(noisy_actions)
    time_emb = posemb_sincos(timestep, action_tokens.shape[-1], min_period=4e-3, max_period=4.0)
    self.sow("intermediates", "time_emb", time_emb)
    time_tokens = einops.repeat(time_emb, "b emb -> b s emb", s=self.config.action_horizon)
    x = self.action_time_mlp_in(jnp.concatenate([action_tokens, time_tokens], axis=-1))
    x = self.action_time_mlp_out(nn.swish(x))
    tokens = jnp.concatenate([state_token, x], axis=1)
    mask = jnp.ones(tokens.shape[:2], jnp.bool_)
    ar = jnp.array([True, True] + [False] * (self.config.action_horizon - 1))
    return tokens, mask, ar

  # --- Masks and positions ----------------------------------------------------------------------------------------

  def _language_hidden(self, is_lang):
    """Keys hidden from the inherited attention of the suffix (Stage 2: the prompt)."""
    if self.config.apt_stage == "stage2":
      return is_lang
    return jnp.zeros_like(is_lang)

  def _positions(self, mask, hidden_lang):
    """Language hidden from the prior does not advance the prior's positions (Stage 2 == Stage 1 at init)."""
    pos = jnp.cumsum(mask & ~hidden_lang, axis=1) - 1
    return pos + jnp.where(hidden_lang, jnp.cumsum(mask & hidden_lang, axis=1), 0)

  def _joint_masks(self, prefix: Prefix, suffix_mask, suffix_ar):
    """Masks for one pass over [prefix ; suffix]: attn [B, T, T], positions [B, T], fusion [B, T, T] or None."""
    mask = jnp.concatenate([prefix.mask, suffix_mask], axis=1)
    ar = jnp.concatenate([prefix.ar, suffix_ar], axis=0)
    n_suffix = suffix_mask.shape[1]
    hidden = self._language_hidden(jnp.concatenate([prefix.is_lang, jnp.zeros(n_suffix, bool)]))
    attn = make_attn_mask(mask, ar)
    positions = self._positions(mask, jnp.broadcast_to(hidden, mask.shape))
    fusion = None
    if self.config.apt_stage == "stage2":
      is_suffix = jnp.concatenate([jnp.zeros(prefix.mask.shape[1], bool), jnp.ones(n_suffix, bool)])
      cross = is_suffix[:, None] & hidden[None, :]
      fusion = cross[None] & mask[:, None, :] & mask[:, :, None]
      attn = attn & ~cross[None]
    return attn, positions, fusion

  def _suffix_masks(self, prefix: Prefix, suffix_mask, suffix_ar):
    """Masks for the suffix alone against a prefix KV cache: attn/fusion [B, A, P + A], positions [B, A]."""
    n = suffix_mask.shape[1]
    hidden = self._language_hidden(prefix.is_lang)
    visible = prefix.mask & ~hidden[None]
    attn = jnp.concatenate([einops.repeat(visible, "b p -> b s p", s=n), make_attn_mask(suffix_mask, suffix_ar)], -1)
    positions = jnp.sum(visible, axis=-1)[:, None] + jnp.cumsum(suffix_mask, axis=-1) - 1
    fusion = None
    if self.config.apt_stage == "stage2":
      lang = prefix.mask & hidden[None]
      fusion = jnp.concatenate([einops.repeat(lang, "b p -> b s p", s=n), jnp.zeros((*suffix_mask.shape, n), bool)],
                               -1)
    return attn, positions, fusion

  # --- Forward passes ---------------------------------------------------------------------------------------------

  def prefix_cache(self, prefix: Prefix):
    """Runs the VLM over the prefix alone -> (prefix_out [B, P, D], kv_cache)."""
    hidden = jnp.broadcast_to(self._language_hidden(prefix.is_lang), prefix.mask.shape)
    attn = make_attn_mask(prefix.mask, prefix.ar)
    positions = self._positions(prefix.mask, hidden)
    (prefix_out, _), kv_cache = self.PaliGemma.llm([prefix.tokens, None], mask=attn, positions=positions)
    return prefix_out, kv_cache

  def suffix_forward(self, prefix: Prefix, kv_cache, suffix_tokens, suffix_mask, suffix_ar):
    attn, positions, fusion = self._suffix_masks(prefix, suffix_mask, suffix_ar)
    (_, suffix_out), _ = self.PaliGemma.llm([None, suffix_tokens], mask=attn, positions=positions,
                                            kv_cache=kv_cache, fusion_mask=fusion)
    return suffix_out

  def expert_forward(self, prefix: Prefix, suffix_tokens, suffix_mask, suffix_ar):
    """-> suffix_out [B, A, D_exp]; prefix_out [B, P, D_vlm] is sown as an intermediate."""
    c = self.config
    if c.separate_prefix_pass:
      prefix_out, kv_cache = self.prefix_cache(prefix)
      if not c.vlm_trainable or c.knowledge_insulation:
        # Frozen VLM / knowledge insulation: no gradient from the expert into the VLM, no backward through it.
        kv_cache = jax.lax.stop_gradient(kv_cache)
      suffix_out = self.suffix_forward(prefix, kv_cache, suffix_tokens, suffix_mask, suffix_ar)
    else:
      attn, positions, fusion = self._joint_masks(prefix, suffix_mask, suffix_ar)
      self.sow("intermediates", "attn_mask", attn)
      self.sow("intermediates", "positions", positions)
      (prefix_out, suffix_out), _ = self.PaliGemma.llm([prefix.tokens, suffix_tokens], mask=attn,
                                                       positions=positions, fusion_mask=fusion)
    self.sow("intermediates", "prefix_out", prefix_out)
    self.sow("intermediates", "suffix_out", suffix_out)
    return suffix_out

  def compute_loss(self, rng, observation, actions, *, train=False, noise=None, time=None):
    """Flow-matching loss [B, AH]. t=1 is noise, t=0 data (openpi); noise/time may be given for parity tests."""
    preprocess_rng, noise_rng, time_rng = jax.random.split(rng, 3)
    observation = self.config.preprocess(preprocess_rng, observation, train=train)
    batch_shape = actions.shape[:-2]
    if noise is None:
      noise = jax.random.normal(noise_rng, actions.shape)
    if time is None:
      time = jax.random.beta(time_rng, 1.5, 1, batch_shape) * 0.999 + 0.001
    t = time[..., None, None]
    x_t = t * noise + (1 - t) * actions
    u_t = noise - actions
    prefix = self.embed_prefix(observation, with_language=self.config.uses_language)
    suffix_tokens, suffix_mask, suffix_ar = self.embed_suffix(observation, x_t, time)
    self.sow("intermediates", "prefix_tokens", prefix.tokens)
    self.sow("intermediates", "suffix_tokens", suffix_tokens)
    suffix_out = self.expert_forward(prefix, suffix_tokens, suffix_mask, suffix_ar)
    v_t = self.action_out_proj(suffix_out[:, -self.config.action_horizon:])
    self.sow("intermediates", "v_t", v_t)
    return jnp.mean(jnp.square(v_t - u_t), axis=-1)

  def sample_actions(self, rng, observation, *, num_steps: int = 10, noise=None):
    """Euler integration of the flow from t=1 (noise) to t=0 with dt = -1/num_steps. -> [B, AH, AD]."""
    observation = self.config.preprocess(None, observation, train=False)
    dt = -1.0 / num_steps
    batch_size = observation.state.shape[0]
    if noise is None:
      noise = jax.random.normal(rng, (batch_size, self.config.action_horizon, self.config.action_dim))
    prefix = self.embed_prefix(observation, with_language=self.config.uses_language)
    _, kv_cache = self.prefix_cache(prefix)

    def step(mdl, carry):
      x_t, time = carry
      tokens, mask, ar = mdl.embed_suffix(observation, x_t, jnp.broadcast_to(time, batch_size))
      suffix_out = mdl.suffix_forward(prefix, kv_cache, tokens, mask, ar)
      v_t = mdl.action_out_proj(suffix_out[:, -self.config.action_horizon:])
      return x_t + dt * v_t, time + dt

    def cond(mdl, carry):
      del mdl
      return carry[1] >= -dt / 2

    x_0, _ = nn.while_loop(cond, step, self, (noise, jnp.float32(1.0)))
    return x_0

  # --- Objectives other than openpi's flow matching (objectives.py) ---------------------------------------------

  def _net_time(self, net_time):
    """The time embedding expects [0, 1]: the DDIM step k enters as k/T (k large = noisy, like t=1 = noise)."""
    if self.config.objective == "ddim":
      return net_time / self.config.diffusion_steps
    return net_time

  def compute_loss_objective(self, rng, observation, actions, *, train=False, noise=None, time=None):
    """Loss [B, AH] of `config.objective_fn()`; `time` is that objective's (DDIM: the integer step k)."""
    preprocess_rng, rng = jax.random.split(rng)
    observation = self.config.preprocess(preprocess_rng, observation, train=train)
    objective = self.config.objective_fn()
    x_t, net_time, target = objective.training_inputs(rng, actions, noise=noise, time=time)
    prefix = self.embed_prefix(observation, with_language=self.config.uses_language)
    tokens, mask, ar = self.embed_suffix(observation, x_t, self._net_time(net_time))
    suffix_out = self.expert_forward(prefix, tokens, mask, ar)
    prediction = self.action_out_proj(suffix_out[:, -self.config.action_horizon:])
    return objective.loss(prediction.astype(jnp.float32), target)

  def encode(self, observation):
    """Prefix arrays (tokens, mask, ar, is_lang) and the VLM KV cache, for `denoise` (observation preprocessed)."""
    prefix = self.embed_prefix(observation, with_language=self.config.uses_language)
    _, kv_cache = self.prefix_cache(prefix)
    return (prefix.tokens, prefix.mask, prefix.ar, prefix.is_lang), kv_cache

  def denoise(self, observation, prefix_arrays, kv_cache, x_t, net_time):
    prefix = Prefix(*prefix_arrays)
    tokens, mask, ar = self.embed_suffix(observation, x_t, self._net_time(net_time))
    suffix_out = self.suffix_forward(prefix, kv_cache, tokens, mask, ar)
    return self.action_out_proj(suffix_out[:, -self.config.action_horizon:])

  def init_all(self, observation, actions):
    """Touches every parameter (prompt embedding and fusion layers included) whatever the stage."""
    prefix = self.embed_prefix(observation, with_language=True)
    tokens, mask, ar = self.embed_suffix(observation, actions, jnp.ones(actions.shape[0]))
    attn, positions, fusion = self._joint_masks(prefix, mask, ar)
    (_, out), _ = self.PaliGemma.llm([prefix.tokens, tokens], mask=attn, positions=positions, fusion_mask=fusion)
    return self.action_out_proj(out)


@flax.struct.dataclass
class Pi0(_model.BaseModel):
  """π0 model: `config` + `params`. Methods mirror openpi's Pi0."""

  def compute_loss(self, rng, observation, actions, *, train=False, noise=None, time=None):
    if self.config.objective != "flow":
      return self._apply(Pi0Module.compute_loss_objective, rng, observation, actions, train=train, noise=noise,
                         time=time)
    return self._apply(Pi0Module.compute_loss, rng, observation, actions, train=train, noise=noise, time=time)

  def sample_actions(self, rng, observation, *, num_steps=None, noise=None):
    num_steps = num_steps or self.config.num_steps
    if self.config.objective == "flow":
      return self._apply(Pi0Module.sample_actions, rng, observation, num_steps=num_steps or 10, noise=noise)
    observation = self.config.preprocess(None, observation, train=False)
    if noise is None:
      noise = jax.random.normal(rng, (observation.state.shape[0], self.config.action_horizon, self.config.action_dim))
    prefix_arrays, kv_cache = self._apply(Pi0Module.encode, observation)

    def denoise(x_t, net_time):
      return self._apply(Pi0Module.denoise, observation, prefix_arrays, kv_cache, x_t, net_time).astype(jnp.float32)

    return self.config.objective_fn().sample(denoise, noise, num_steps)

  def compute_loss_with_intermediates(self, rng, observation, actions, *, train=False, noise=None, time=None):
    """-> (loss [B, AH], dict of sown intermediates: prefix/suffix tokens and outputs, masks, positions, v_t)."""
    loss, state = self.config.module().apply(
        {"params": self.params}, rng, observation, actions, train=train, noise=noise, time=time,
        method=Pi0Module.compute_loss, mutable=["intermediates"])
    inter = {k: v[0] for k, v in state["intermediates"].items()}
    return loss, inter
