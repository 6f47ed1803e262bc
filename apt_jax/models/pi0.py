"""π0 and π0.5 (openpi's JAX models, numerically identical) with APT's two stages for the π-style architecture.

Token sequence: prefix = [image tokens of each camera ; prompt tokens] (vlm.py), suffix = [state token ; AH action
tokens]. The VLM (Gemma expert 0) and the action expert (expert 1) share every attention through one mask.

π0.5 (`pi05=True`, openpi's `Pi0Config(pi05=True)`): the flow time goes through time_mlp_in -> swish -> time_mlp_out ->
swish into adaptive RMSNorm (scale, shift, gated residual) in every expert layer and the expert's final norm; the
action tokens carry no time; the state reaches the model as 256-bin tokens in the prompt (`discrete_state_input`,
tokenizer.py), not as a state token; prompts are 200 tokens. APT on π0.5: Stage 1 drops the prompt and the discrete
state with it, so the prior reads the state as π0 does, through a continuous `state_proj` token (`state_token`); Stage
2 adds the prompt back (task and discrete state) through the same gated fusion as π0.

APT (`apt_stage`): "stage1" drops the prompt and freezes the VLM, whose prefix then runs once, outside the backward
pass; "stage2" brings the prompt back, but only through a gated cross-attention sublayer (`fusion_1`,
gemma.FusionAttention) in every expert layer: the inherited expert self-attention never sees it, so with the gates
shut Stage 2 is its Stage 1 parent. The masks and positions below say how.

Objective: "flow" is openpi's flow matching, with openpi's rng draws and Euler loop; "ddim" is the paper's
(objectives.Ddim), with the diffusion step k embedded as k/T.

Letters: B batch, P prefix length, A suffix length ([1 +] AH), AH action horizon, AD action dim, D width.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import einops
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from apt_jax.models import array_typing as at
from apt_jax.models import gemma
from apt_jax.models import layers
from apt_jax.models import lora
from apt_jax.models import model as _model
from apt_jax.models import vlm


def posemb_sincos(pos, embedding_dim: int, min_period: float, max_period: float):
  """openpi's embedding of scalars, periods from min_period to max_period. pos [B] -> [B, embedding_dim]."""
  if embedding_dim % 2:
    raise ValueError(f"embedding_dim ({embedding_dim}) must be divisible by 2")
  period = min_period * (max_period / min_period) ** jnp.linspace(0.0, 1.0, embedding_dim // 2)
  return layers.sinusoidal_embedding(pos, 1.0 / period * 2 * jnp.pi)


@dataclasses.dataclass(frozen=True)
class Pi0Config(_model.VlaHeadConfig):
  """π0 (or π0.5 with `pi05`): openpi's sizes by default, plus its Stage 2 options."""

  action_horizon: int = 50
  # None: 48 for π0, 200 for π0.5 (openpi).
  max_token_len: int | None = None
  # None: the state goes into the prompt for π0.5 only (openpi); pi05_libero turns it off.
  discrete_state_input: bool | None = None
  action_expert_variant: Any = "gemma_300m"
  # π0.5: adaptive RMSNorm on the flow time in the expert, no state token (unless APT: see `state_token`).
  pi05: bool = False
  # The state enters the suffix as a token (`state_proj`). None: always for π0; for π0.5 under APT only, since Stage 1
  # drops the prompt and with it π0.5's discrete state, so the prior needs the state on a path of its own (kept in
  # Stage 2, whose prompt adds the task and the discrete state through the gated fusion).
  state_token: bool | None = None
  # Stage 2's gate (gemma.FusionAttention): "tanh" (α = 0), "tanh_zero_proj" (α = 1, zero projection), "sigmoid".
  fusion_gate: gemma.FusionGate = "tanh"

  stage2_new_params_regex = r"PaliGemma/llm/layers/fusion_1/.*"

  def __post_init__(self):
    if self.max_token_len is None:
      object.__setattr__(self, "max_token_len", 200 if self.pi05 else 48)
    if self.discrete_state_input is None:
      object.__setattr__(self, "discrete_state_input", self.pi05)
    if self.state_token is None:
      object.__setattr__(self, "state_token", not self.pi05 or self.apt_stage != "none")
    super().__post_init__()
    object.__setattr__(self, "action_expert_variant", gemma.get_config(self.action_expert_variant))
    _model.check_choice(self, "fusion_gate", gemma.FUSION_GATES)

  @property
  def expert_config(self) -> gemma.Config:
    return dataclasses.replace(self.action_expert_variant, fusion=self.apt_stage == "stage2",
                               fusion_gate=self.fusion_gate)

  @property
  def gemma_experts(self) -> tuple[gemma.Config, ...]:
    return (self.vlm_config, self.expert_config)

  def without_lora(self) -> Pi0Config:
    no_lora = dataclasses.replace(self.action_expert_variant, lora_rank=0, lora_alpha=1.0)
    return dataclasses.replace(super().without_lora(), action_expert_variant=no_lora)

  def freeze_filter(self, path: str) -> bool:
    # A LoRA expert trains its adapters, not its weights (openpi's get_freeze_filter); Stage 2's fusion layers train.
    if (self.expert_config.lora is not None and _model.llm_expert(path) == 1 and not lora.is_lora_param(path)
        and "/fusion_1/" not in path):
      return True
    return super().freeze_filter(path)

  @property
  def separate_prefix_pass(self) -> bool:
    """Training runs the VLM over the prefix once, into a stop-gradient KV cache, and the expert on that cache: the
    numbers of the joint pass, without a backward pass through the VLM."""
    return self.stop_vlm_gradient

  def module(self) -> Pi0Module:
    return Pi0Module(self)

  def model_class(self):
    return Pi0


class Pi0Module(_model.VlaHeadModule):
  config: Pi0Config

  def setup(self):
    c = self.config
    width = c.expert_config.width
    self.PaliGemma = vlm.from_config(c, c.expert_config)
    if c.state_token:
      self.state_proj = nn.Dense(width)
    self.action_in_proj = nn.Dense(width)
    if c.pi05:
      self.time_mlp_in = nn.Dense(width)
      self.time_mlp_out = nn.Dense(width)
    else:
      self.action_time_mlp_in = nn.Dense(width)
      self.action_time_mlp_out = nn.Dense(width)
    self.action_out_proj = nn.Dense(c.action_dim)

  # --- Embeddings -------------------------------------------------------------------------------------------------

  @at.typecheck
  def embed_prefix(self, obs: _model.Observation, *, with_language: bool = True) -> vlm.Prefix:
    return self.PaliGemma.embed_prefix(obs, with_language=with_language, language_block=self.config.language_block)

  @at.typecheck
  def embed_suffix(self, obs: _model.Observation, noisy_actions: _model.Actions, timestep: at.Float[at.Array, " b"]
                   ) -> tuple[at.Float[at.Array, "b s emb"], at.Bool[at.Array, "b s"], at.Bool[at.Array, " s"],
                              at.Float[at.Array, "b emb"] | None]:
    """-> (tokens [B, A, D], mask [B, A], ar [A], adarms_cond [B, D] for π0.5's adaptive norms or None)."""
    c = self.config
    tokens, ar = [], []
    if c.state_token:
      # The state token opens a block: the prefix does not see it.
      tokens.append(self.state_proj(obs.state)[:, None, :])
      ar.append(True)
    action_tokens = self.action_in_proj(noisy_actions)
    # t ∈ [0, 1] with periods from 4e-3 to 4: fine resolution over the whole unit interval (openpi).
    time_emb = posemb_sincos(timestep, action_tokens.shape[-1], min_period=4e-3, max_period=4.0)
    self.sow("intermediates", "time_emb", time_emb)
    if c.pi05:
      # π0.5: the time conditions every expert norm (adaptive RMSNorm); the action tokens carry no time.
      adarms_cond = nn.swish(self.time_mlp_out(nn.swish(self.time_mlp_in(time_emb))))
      self.sow("intermediates", "adarms_cond", adarms_cond)
      x = action_tokens
    else:
      adarms_cond = None
      time_tokens = einops.repeat(time_emb, "b emb -> b s emb", s=c.action_horizon)
      x = self.action_time_mlp_in(jnp.concatenate([action_tokens, time_tokens], axis=-1))
      x = self.action_time_mlp_out(nn.swish(x))
    tokens.append(x)
    # The actions open another block (nothing before sees them) and see each other.
    ar += [True] + [False] * (c.action_horizon - 1)
    tokens = jnp.concatenate(tokens, axis=1)
    return tokens, jnp.ones(tokens.shape[:2], jnp.bool_), jnp.array(ar), adarms_cond

  def _time(self, net_time):
    """The time embedding reads [0, 1], t=1 noise: the DDIM step k enters as k/T (k large = noisy)."""
    if self.config.objective == "ddim":
      return net_time / self.config.diffusion_steps
    return net_time

  # --- Masks and positions ----------------------------------------------------------------------------------------

  def _language_hidden(self, is_lang):
    """Keys hidden from the inherited attention of the suffix: Stage 2's prompt, which the expert reads only through
    its gated fusion sublayer, so that with the gates shut it sees exactly what it saw in Stage 1."""
    if self.config.apt_stage == "stage2":
      return is_lang
    return jnp.zeros_like(is_lang)

  def _positions(self, mask, hidden_lang):
    """RoPE positions: cumsum(mask) − 1, where padding takes no position (openpi). The hidden prompt takes no position
    either: the suffix keeps Stage 1's positions (Stage 2 == Stage 1 at init), and the prompt itself keeps the
    positions it has in π0, right after the images."""
    pos = jnp.cumsum(mask & ~hidden_lang, axis=1) - 1
    return pos + jnp.where(hidden_lang, jnp.cumsum(mask & hidden_lang, axis=1), 0)

  def _joint_masks(self, prefix: vlm.Prefix, suffix_mask, suffix_ar):
    """Masks for one pass over [prefix ; suffix]: attn [B, T, T], positions [B, T], fusion [B, T, T] or None."""
    mask = jnp.concatenate([prefix.mask, suffix_mask], axis=1)
    ar = jnp.concatenate([prefix.ar, suffix_ar], axis=0)
    n_suffix = suffix_mask.shape[1]
    hidden = self._language_hidden(jnp.concatenate([prefix.is_lang, jnp.zeros(n_suffix, bool)]))
    attn = vlm.make_attn_mask(mask, ar)
    positions = self._positions(mask, jnp.broadcast_to(hidden, mask.shape))
    fusion = None
    if self.config.apt_stage == "stage2":
      # Suffix queries x prompt keys move from the shared attention to the fusion sublayer.
      is_suffix = jnp.concatenate([jnp.zeros(prefix.mask.shape[1], bool), jnp.ones(n_suffix, bool)])
      cross = is_suffix[:, None] & hidden[None, :]
      fusion = cross[None] & mask[:, None, :] & mask[:, :, None]
      attn = attn & ~cross[None]
    return attn, positions, fusion

  def _suffix_masks(self, prefix: vlm.Prefix, suffix_mask, suffix_ar):
    """Masks for the suffix alone against a prefix KV cache: attn/fusion [B, A, P + A], positions [B, A]."""
    n = suffix_mask.shape[1]
    hidden = self._language_hidden(prefix.is_lang)
    # Suffix queries see every valid prefix key but the hidden prompt, and the suffix by its own block mask.
    visible = prefix.mask & ~hidden[None]
    attn = jnp.concatenate([einops.repeat(visible, "b p -> b s p", s=n), vlm.make_attn_mask(suffix_mask, suffix_ar)],
                           -1)
    # The suffix continues after the prefix tokens it sees (padding and the hidden prompt take no position).
    positions = jnp.sum(visible, axis=-1)[:, None] + jnp.cumsum(suffix_mask, axis=-1) - 1
    fusion = None
    if self.config.apt_stage == "stage2":
      lang = prefix.mask & hidden[None]
      fusion = jnp.concatenate([einops.repeat(lang, "b p -> b s p", s=n), jnp.zeros((*suffix_mask.shape, n), bool)],
                               -1)
    return attn, positions, fusion

  # --- Forward passes ---------------------------------------------------------------------------------------------

  def prefix_cache(self, prefix: vlm.Prefix):
    """Runs the VLM over the prefix alone -> (prefix_out [B, P, D], kv_cache)."""
    hidden = jnp.broadcast_to(self._language_hidden(prefix.is_lang), prefix.mask.shape)
    attn = vlm.make_attn_mask(prefix.mask, prefix.ar)
    positions = self._positions(prefix.mask, hidden)
    (prefix_out, _), kv_cache = self.PaliGemma.llm([prefix.tokens, None], mask=attn, positions=positions)
    return prefix_out, kv_cache

  def suffix_forward(self, prefix: vlm.Prefix, kv_cache, suffix_tokens, suffix_mask, suffix_ar, adarms_cond=None):
    attn, positions, fusion = self._suffix_masks(prefix, suffix_mask, suffix_ar)
    (_, suffix_out), _ = self.PaliGemma.llm([None, suffix_tokens], mask=attn, positions=positions,
                                            kv_cache=kv_cache, adarms_cond=[None, adarms_cond], fusion_mask=fusion)
    return suffix_out

  def encode(self, obs: _model.Observation, *, with_language: bool | None = None):
    """-> (prefix, kv_cache): the VLM over the prefix, once per observation."""
    c = self.config
    prefix = self.embed_prefix(obs, with_language=c.uses_language if with_language is None else with_language)
    _, kv_cache = self.prefix_cache(prefix)
    if c.stop_vlm_gradient:
      # Frozen VLM or knowledge insulation: no gradient from the expert into the VLM, no backward pass through it.
      kv_cache = jax.lax.stop_gradient(kv_cache)
    return prefix, kv_cache

  def denoise(self, obs: _model.Observation, context, x_t, net_time):
    """-> [B, AH, AD]: u = ε − a for flow, ε for DDIM."""
    prefix, kv_cache = context
    tokens, mask, ar, adarms_cond = self.embed_suffix(obs, x_t, self._time(net_time))
    suffix_out = self.suffix_forward(prefix, kv_cache, tokens, mask, ar, adarms_cond)
    return self.action_out_proj(suffix_out[:, -self.config.action_horizon:])

  def predict(self, obs: _model.Observation, x_t, net_time):
    """The training pass. With a trainable VLM this is openpi's: one pass over [prefix ; suffix], its tokens, masks,
    positions and outputs sown for the parity test; otherwise the cached prefix (`separate_prefix_pass`)."""
    c = self.config
    if c.separate_prefix_pass:
      return super().predict(obs, x_t, net_time)
    prefix = self.embed_prefix(obs, with_language=c.uses_language)
    tokens, mask, ar, adarms_cond = self.embed_suffix(obs, x_t, self._time(net_time))
    attn, positions, fusion = self._joint_masks(prefix, mask, ar)
    (prefix_out, suffix_out), _ = self.PaliGemma.llm([prefix.tokens, tokens], mask=attn, positions=positions,
                                                     adarms_cond=[None, adarms_cond], fusion_mask=fusion)
    v_t = self.action_out_proj(suffix_out[:, -c.action_horizon:])
    sown = dict(prefix_tokens=prefix.tokens, suffix_tokens=tokens, attn_mask=attn, positions=positions,
                prefix_out=prefix_out, suffix_out=suffix_out, v_t=v_t)
    for name, value in sown.items():
      self.sow("intermediates", name, value)
    return v_t


@flax.struct.dataclass
class Pi0(_model.BaseModel):
  """π0 model: `config` + `params`. Methods mirror openpi's Pi0."""

  def split_rng(self, rng):
    if self.config.objective == "flow":
      return jax.random.split(rng, 3)  # openpi's split: π0 draws openpi's noise and time (pi0_parity_test).
    return super().split_rng(rng)

  def integrate(self, denoise, noise, num_steps):
    if self.config.objective != "flow":
      return super().integrate(denoise, noise, num_steps)
    # openpi's Euler loop, t = 1 (noise) -> 0 carried in float32, so that π0 samples openpi's numbers bit for bit.
    dt = -1.0 / (num_steps or self.config.objective_fn().default_steps)
    batch = noise.shape[0]

    def step(carry):
      x_t, time = carry
      return x_t + dt * denoise(x_t, jnp.broadcast_to(time, batch)), time + dt

    # Stop at t ≈ 0 whatever the rounding of t.
    x_0, _ = jax.lax.while_loop(lambda carry: carry[1] >= -dt / 2, step, (noise, jnp.float32(1.0)))
    return x_0
