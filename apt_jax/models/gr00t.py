"""GR00T-style action head (GR00T N1.5's DiT) on a PaliGemma backbone, with APT's two stages.

From NVIDIA Isaac-GR00T `gr00t/model/action_head/{flow_matching_action_head,cross_attention_dit}.py`: the VL features
(VLM layer `vlm_layer`, LayerNorm, `adapter_depth` self-attention blocks) condition a DiT over [state token ;
`num_future_tokens` learned tokens ; AH action tokens], whose even blocks cross-attend to them and odd blocks
self-attend, all modulated by the timestep (AdaLN). Objective: flow matching in GR00T's convention or the paper's DDIM.
APT (the paper describes the idea only; this port): "stage1" drops the prompt; "stage2" brings it back through a
gated language block after every cross-attention block, while the inherited blocks still see the images only.
Left out: embodiment-specific (`CategorySpecific*`) weights (one embodiment), dropout, FLARE, and GR00T's Eagle
backbone (PaliGemma instead: its 2048-d features match N1.5's `backbone_embedding_dim`). The cross-attention honours
the VL padding mask (GR00T ignores it).

Letters: B batch, P VL tokens, T DiT tokens (1 + F + AH), F future tokens, W DiT width, Dv VLM width, AH/AD action
horizon/dim.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from apt_jax.models import layers
from apt_jax.models import model as _model
from apt_jax.models import variants as _variants
from apt_jax.models import vlm as _vlm


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  num_heads: int
  head_dim: int
  depth: int              # even blocks cross-attention, odd blocks self-attention
  output_dim: int         # proj_out_2 width = action decoder hidden width
  state_hidden: int       # state encoder hidden width
  num_future_tokens: int
  adapter_depth: int      # VL self-attention blocks
  adapter_num_heads: int  # head dim = VLM width / adapter_num_heads
  time_channels: int = 256

  @property
  def width(self) -> int:
    return self.num_heads * self.head_dim


_DIT_VARIANTS = {
    # GR00T N1.5: 32 heads x 48 = 1536, 16 layers, output_dim 1024, hidden_size 1024, 32 future tokens,
    # vl_self_attention 4 layers x 32 heads x 64 (over the 2048-d backbone).
    "n1.5": dict(num_heads=32, head_dim=48, depth=16, output_dim=1024, state_hidden=1024, num_future_tokens=32,
                 adapter_depth=4, adapter_num_heads=32),
    "dummy": dict(num_heads=2, head_dim=16, depth=4, output_dim=32, state_hidden=32, num_future_tokens=4,
                  adapter_depth=1, adapter_num_heads=2),
}


def get_dit_config(variant) -> DiTConfig:
  return _variants.resolve(DiTConfig, _DIT_VARIANTS, variant, "DiT")


@dataclasses.dataclass(frozen=True)
class Gr00tConfig(_model.VlaHeadConfig):
  """GR00T-style head. Defaults: N1.5 sizes, H=16, gemma_2b + So400m/14, 4 Euler steps."""

  action_horizon: int = 16
  dit_variant: Any = "n1.5"
  # Which hidden state the DiT reads (0: the input embeddings). None: the last layer, as the APT paper's GR00T-style
  # port; N1.5 reads layer 12 of Qwen3-1.7B's 28, so 8 is the proportional choice for gemma_2b. Every layer runs
  # either way (GR00T pops the unused ones).
  vlm_layer: int | None = None

  flow_convention = "gr00t"
  # Stage 2 adds only the gated language blocks; their tanh gates start at 0, so Stage 2 starts at Stage 1.
  stage2_new_params_regex = r"lang_blocks_\d+/.*"

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "dit_variant", get_dit_config(self.dit_variant))
    if self.vlm_layer is None:
      object.__setattr__(self, "vlm_layer", self.vlm_config.depth)
    if not 0 <= self.vlm_layer <= self.vlm_config.depth:
      raise ValueError(f"vlm_layer={self.vlm_layer} outside [0, {self.vlm_config.depth}]")
    if self.dit_variant.depth % 2:
      raise ValueError(f"DiT depth {self.dit_variant.depth} must be even (cross/self pairs)")
    if self.vlm_config.width % self.dit_variant.adapter_num_heads:
      raise ValueError(f"VLM width {self.vlm_config.width} not divisible by adapter_num_heads "
                       f"{self.dit_variant.adapter_num_heads}")

  def module(self) -> Gr00tModule:
    return Gr00tModule(self)

  def model_class(self):
    return Gr00t


# --- Layers ------------------------------------------------------------------------------------------------------


def _normal(std):
  return nn.initializers.normal(stddev=std)


class Attention(nn.Module):
  """diffusers `Attention` (to_q/to_k/to_v/to_out with biases). mask [B, T, S] bool; rows with no key give 0."""

  num_heads: int
  head_dim: int
  dtype: str

  @nn.compact
  def __call__(self, x, ctx, mask):
    inner = self.num_heads * self.head_dim
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name)
    split = lambda y: y.reshape(*y.shape[:-1], self.num_heads, self.head_dim)
    q, k, v = split(dense(inner, "to_q")(x)), split(dense(inner, "to_k")(ctx)), split(dense(inner, "to_v")(ctx))
    out = layers.dot_product_attention(q, k, v, mask[:, None], self.num_heads, logits_scale=self.head_dim**-0.5,
                                       zero_empty_rows=True)
    return dense(x.shape[-1], "to_out")(out.reshape(*out.shape[:2], inner))


class FeedForward(nn.Module):
  """diffusers `FeedForward(activation_fn="gelu-approximate")`: Linear(4D), GELU(tanh), Linear(D)."""

  dtype: str

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    h = nn.gelu(nn.Dense(4 * d, dtype=self.dtype, name="proj_in")(x), approximate=True)
    return nn.Dense(d, dtype=self.dtype, name="proj_out")(h)


class AdaLayerNorm(nn.Module):
  """LayerNorm without affine, then x·(1 + scale) + shift, (scale, shift) = Linear(SiLU(temb))."""

  dtype: str
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x, temb):
    scale, shift = jnp.split(nn.Dense(2 * x.shape[-1], dtype=self.dtype, name="linear")(nn.silu(temb)), 2, -1)
    x = nn.LayerNorm(epsilon=self.eps, use_scale=False, use_bias=False, dtype=self.dtype)(x)
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
  """GR00T's `BasicTransformerBlock` with norm_type="ada_norm": cross-attention if `ctx` is given, else self."""

  config: DiTConfig
  dtype: str

  @nn.compact
  def __call__(self, x, temb, ctx=None, ctx_mask=None):
    c = self.config
    h = AdaLayerNorm(self.dtype, name="norm1")(x, temb)
    if ctx is None:
      ctx, ctx_mask = h, jnp.ones((x.shape[0], x.shape[1], x.shape[1]), bool)
    else:
      ctx_mask = jnp.broadcast_to(ctx_mask[:, None, :], (x.shape[0], x.shape[1], ctx.shape[1]))
    x = x + Attention(c.num_heads, c.head_dim, self.dtype, name="attn1")(h, ctx, ctx_mask)
    h = nn.LayerNorm(epsilon=1e-5, use_scale=False, use_bias=False, dtype=self.dtype, name="norm3")(x)
    return x + FeedForward(self.dtype, name="ff")(h)


class LanguageBlock(nn.Module):
  """APT Stage 2: cross-attention to the language tokens, then an FFN, each added through tanh(α) with α = 0 at init
  (Flamingo): the block starts as the identity, so Stage 2 starts exactly at Stage 1."""

  config: DiTConfig
  dtype: str

  @nn.compact
  def __call__(self, x, temb, ctx, ctx_mask):
    c = self.config
    attn_gate = self.param("attn_gate", nn.initializers.zeros_init(), (1,))
    ff_gate = self.param("ff_gate", nn.initializers.zeros_init(), (1,))
    h = AdaLayerNorm(self.dtype, name="norm1")(x, temb)
    mask = jnp.broadcast_to(ctx_mask[:, None, :], (x.shape[0], x.shape[1], ctx.shape[1]))
    y = Attention(c.num_heads, c.head_dim, self.dtype, name="attn1")(h, ctx, mask)
    x = x + (jnp.tanh(attn_gate) * y).astype(x.dtype)
    h = nn.LayerNorm(epsilon=1e-5, use_scale=False, use_bias=False, dtype=self.dtype, name="norm3")(x)
    return x + (jnp.tanh(ff_gate) * FeedForward(self.dtype, name="ff")(h)).astype(x.dtype)


class AdapterBlock(nn.Module):
  """N1.5's `vl_self_attention` block: LayerNorm (affine) -> self-attention -> LayerNorm -> FFN, pre-norm."""

  num_heads: int
  dtype: str

  @nn.compact
  def __call__(self, x, mask):
    head_dim = x.shape[-1] // self.num_heads
    h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm1")(x)
    x = x + Attention(self.num_heads, head_dim, self.dtype, name="attn1")(h, h, mask)
    h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm3")(x)
    return x + FeedForward(self.dtype, name="ff")(h)


def timestep_proj(t, channels: int):
  """diffusers `Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=1)`. t [B] -> [B, channels]."""
  half = channels // 2
  return layers.sinusoidal_embedding(
      t, jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1)), cos_first=True)


def sinusoidal_encoding(t, dim: int):
  """GR00T's `SinusoidalPositionalEncoding` of the action encoder: [sin, cos] at 10000^(−j/half). t [...]."""
  half = dim // 2
  return layers.sinusoidal_embedding(t, jnp.exp(-jnp.arange(half, dtype=jnp.float32) * (math.log(10000.0) / half)))


class TimestepEncoder(nn.Module):
  """GR00T's `TimestepEncoder`: `timestep_proj` -> Linear -> SiLU -> Linear. bucket [B] -> [B, W]."""

  width: int
  channels: int
  dtype: str

  @nn.compact
  def __call__(self, bucket):
    x = nn.Dense(self.width, dtype=self.dtype, name="linear_1")(timestep_proj(bucket, self.channels))
    return nn.Dense(self.width, dtype=self.dtype, name="linear_2")(nn.silu(x))


class Mlp2(nn.Module):
  """GR00T's `CategorySpecificMLP` for one category: Linear, ReLU, Linear (weights N(0, 0.02), biases 0)."""

  hidden: int
  out: int
  dtype: str

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.hidden, kernel_init=_normal(0.02), dtype=self.dtype, name="layer1")(x))
    return nn.Dense(self.out, kernel_init=_normal(0.02), dtype=self.dtype, name="layer2")(x)


class ActionEncoder(nn.Module):
  """GR00T's `MultiEmbodimentActionEncoder` for one embodiment. x [B, AH, AD], bucket [B] -> [B, AH, W].

  Weights use lecun-normal init, not GR00T's N(0, 0.02): with 0.02 the noisy-action signal enters the residual
  stream ~50x below the cross-attention output and a small DiT did not learn its dependence on x_t (2-D mixture
  test: flow loss stuck at 1.56 for 1600 steps against an optimum of 1.09, which lecun init reaches in ~300).
  """

  width: int
  dtype: str

  @nn.compact
  def __call__(self, x, bucket):
    dense = lambda name: nn.Dense(self.width, dtype=self.dtype, name=name)
    a = dense("W1")(x)
    tau = sinusoidal_encoding(jnp.broadcast_to(bucket[:, None], x.shape[:2]), self.width).astype(a.dtype)
    h = nn.swish(dense("W2")(jnp.concatenate([a, tau], axis=-1)))
    return dense("W3")(h)


# --- The head ----------------------------------------------------------------------------------------------------


class Gr00tModule(_model.VlaHeadModule):
  config: Gr00tConfig

  def setup(self):
    c = self.config
    d = c.dit_variant
    self.PaliGemma = _vlm.from_config(c, return_hidden_states=True)
    self.vl_norm = nn.LayerNorm(epsilon=1e-5, dtype=c.dtype)
    adapter_block, dit_block = layers.remat(AdapterBlock, c.remat_policy), layers.remat(DiTBlock, c.remat_policy)
    self.vl_adapter = [adapter_block(d.adapter_num_heads, c.dtype) for _ in range(d.adapter_depth)]
    self.state_encoder = Mlp2(d.state_hidden, d.width, c.dtype)
    self.action_encoder = ActionEncoder(d.width, c.dtype)
    self.position_embedding = self.param("position_embedding", _normal(0.02), (c.action_horizon, d.width))
    self.future_tokens = self.param("future_tokens", _normal(0.02), (d.num_future_tokens, d.width))
    self.timestep_encoder = TimestepEncoder(d.width, d.time_channels, c.dtype)
    self.blocks = [dit_block(d, c.dtype) for _ in range(d.depth)]
    if c.apt_stage == "stage2":
      self.lang_blocks = [layers.remat(LanguageBlock, c.remat_policy)(d, c.dtype) for _ in range(d.depth // 2)]
    self.norm_out = nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, dtype=c.dtype)
    self.proj_out_1 = nn.Dense(2 * d.width, dtype=c.dtype)
    self.proj_out_2 = nn.Dense(d.output_dim, dtype=c.dtype)
    self.action_decoder = Mlp2(d.output_dim, c.action_dim, c.dtype)

  # --- VL features ------------------------------------------------------------------------------------------------

  def encode(self, obs: _model.Observation, *, with_language: bool | None = None):
    """-> context: VL features [B, P, Dv] and key masks [B, P] for the inherited and the language cross-attention."""
    c = self.config
    if with_language is None:
      with_language = c.uses_language
    prefix = self.PaliGemma.embed_prefix(obs, with_language=with_language, language_block=c.language_block)
    hidden = self.PaliGemma.hidden_states(prefix)[c.vlm_layer]
    feats = self.PaliGemma.final_norm(hidden)
    if c.stop_vlm_gradient:
      feats = jax.lax.stop_gradient(feats)
    x = self.vl_norm(feats.astype(c.dtype))
    # The VLM's own mask: in Stage 2 the prompt is a block of its own, so the image features, here as in the VLM, are
    # those of Stage 1.
    adapter_mask = _vlm.make_attn_mask(prefix.mask, prefix.ar)
    for block in self.vl_adapter:
      x = block(x, adapter_mask)
    is_lang = jnp.asarray(prefix.is_lang)[None]
    if c.apt_stage == "stage2":
      # The inherited cross-attention keeps reading the images only; the language blocks read the prompt.
      return {"vl": x, "mask": prefix.mask & ~is_lang, "lang_mask": prefix.mask & is_lang}
    return {"vl": x, "mask": prefix.mask}

  # --- Denoiser ---------------------------------------------------------------------------------------------------

  def _bucket(self, net_time):
    """The DiT's timestep input: GR00T's bucket for flow; the DDIM step rescaled to the same 0..1000 range."""
    c = self.config
    if c.objective == "ddim":
      return net_time * (1000.0 / c.diffusion_steps)
    return net_time

  def denoise(self, obs: _model.Observation, context, x_t, net_time):
    """-> prediction [B, AH, AD] (velocity a − ε for flow, ε for DDIM) from the DiT's last AH tokens."""
    c = self.config
    context, state = _vlm.broadcast_batch((context, obs.state), x_t.shape[0])
    bucket = self._bucket(net_time)
    temb = self.timestep_encoder(bucket)
    state = self.state_encoder(state.astype(jnp.float32))[:, None]
    actions = self.action_encoder(x_t, bucket) + self.position_embedding[None].astype(c.dtype)
    future = jnp.broadcast_to(self.future_tokens[None], (x_t.shape[0], *self.future_tokens.shape))
    x = jnp.concatenate([state.astype(c.dtype), future.astype(c.dtype), actions.astype(c.dtype)], axis=1)
    for i, block in enumerate(self.blocks):
      if i % 2 == 0:
        x = block(x, temb, context["vl"], context["mask"])
        if c.apt_stage == "stage2":
          x = self.lang_blocks[i // 2](x, temb, context["vl"], context["lang_mask"])
      else:
        x = block(x, temb)
    shift, scale = jnp.split(self.proj_out_1(nn.silu(temb)), 2, axis=-1)
    x = self.proj_out_2(self.norm_out(x) * (1 + scale[:, None]) + shift[:, None])
    return self.action_decoder(x)[:, -c.action_horizon:]


@flax.struct.dataclass
class Gr00t(_model.BaseModel):
  """GR00T-style model: `config` + `params`; compute_loss / sample_actions from BaseModel."""
