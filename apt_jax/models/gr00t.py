"""GR00T-style action head (GR00T N1.5's DiT) on a PaliGemma backbone, with APT's two stages.

Architecture (NVIDIA Isaac-GR00T `gr00t/model/action_head/{flow_matching_action_head,cross_attention_dit}.py`):
  VL features   hidden state of VLM layer `vlm_layer` (+ the LLM's final RMSNorm) -> `vl_norm` (LayerNorm, N1.5's
                "vlln") -> `vl_adapter`: `adapter_depth` pre-LN self-attention blocks (N1.5's `vl_self_attention`).
  DiT input     [state token ; `num_future_tokens` learned tokens ; AH action tokens]:
                state_encoder = MLP(S -> state_hidden -> W, ReLU); action_encoder = W1(a), concat sinusoidal
                embedding of the time bucket, W2 + swish, W3; plus a learned position embedding over action steps.
  DiT           `depth` blocks; even blocks cross-attend to the VL features, odd blocks self-attend; each block is
                AdaLN(t) -> attention -> residual, LayerNorm -> GELU(tanh) FFN (4x) -> residual (no residual gates).
                Timestep: sinusoid(256, flip_sin_to_cos, shift 1) of the bucket -> Linear, SiLU, Linear.
  Output        AdaLN-modulated LayerNorm -> proj_out_2 (W -> output_dim) -> action_decoder MLP (-> AD); the loss
                is on the last AH tokens.
  Objective     flow matching in GR00T's convention (t=1 is data, Beta(1.5, 1) time sampling with s=0.999, t
                discretised to 1000 buckets, 4 Euler steps 0 -> 1) or the paper's DDIM (net time = k·1000/T).

APT stages (paper §1.7 describes only the idea; this port):
  "none"    plain GR00T: the VLM sees [images ; prompt] (prefix-LM), the adapter and every cross-attention see all
            VL tokens.
  "stage1"  VA prior: the prompt is dropped (VLM, adapter and cross-attention see the images only); VLM frozen.
  "stage2"  + VLA likelihood: the prompt is back. Inside the VLM and the adapter, image tokens never attend to it, so
            the vision features equal Stage 1's. The inherited cross-attention blocks still see vision tokens only;
            after every cross-attention block a new gated block (`lang_block_i`: AdaLN -> cross-attention to the
            language tokens, LayerNorm -> FFN, each added through tanh(α), α=0 at init, Flamingo-style) reads the
            prompt. At init Stage 2 therefore equals Stage 1 exactly; Stage 1 params are a strict subset by name.

Left out: embodiment-specific (`CategorySpecific*`) weights (one embodiment; the action encoder's init differs, see
ActionEncoder), dropout, GR00T's Eagle backbone
(PaliGemma instead; its 2048-d features match N1.5's `backbone_embedding_dim`), FLARE. The DiT's
cross-attention honours the VL padding mask (GR00T ignores it). `vlm_layer` < depth still runs every VLM layer
(GR00T pops the unused ones).

VLM layer: N1.5 reads layer 12 of Qwen3-1.7B's 28 (≈0.43 depth, hidden_states[12]); the APT paper's GR00T-style port
conditions on the final VLM layer. The default here is the last layer (18 of gemma_2b's 18), as in the paper;
`vlm_layer=8` is the N1.5-like proportional choice.

Letters: B batch, P VL tokens, T DiT tokens (1 + F + AH), W DiT width, Dv VLM width, AH/AD action horizon/dim.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from apt_jax import tree as tree_lib
from apt_jax.models import gemma as _gemma
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
class Gr00tConfig(_vlm.FeatureHeadConfig):
  """GR00T-style head. Defaults: N1.5 sizes, H=16, gemma_2b + So400m/14, 4 Euler steps."""

  action_horizon: int = 16
  dit_variant: Any = "n1.5"
  vlm_layer: int | None = None  # None: the last layer.

  flow_convention = "gr00t"
  # Stage 2 adds only the gated language blocks (train.py's `init_from` restores everything else by name).
  stage2_new_params_regex = r"lang_blocks_\d+/.*"

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "dit_variant", get_dit_config(_vlm._freeze(self.dit_variant)))
    if self.vlm_layer is None:
      object.__setattr__(self, "vlm_layer", self.vlm_config.depth)
    if not 0 <= self.vlm_layer <= self.vlm_config.depth:
      raise ValueError(f"vlm_layer={self.vlm_layer} outside [0, {self.vlm_config.depth}]")
    if self.dit_variant.depth % 2:
      raise ValueError(f"DiT depth {self.dit_variant.depth} must be even (cross/self pairs)")
    if self.vlm_config.width % self.dit_variant.adapter_num_heads:
      raise ValueError(f"VLM width {self.vlm_config.width} not divisible by adapter_num_heads "
                       f"{self.dit_variant.adapter_num_heads}")

  def module(self) -> "Gr00tModule":
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
    logits = jnp.einsum("BTNH,BSNH->BNTS", q, k, preferred_element_type=jnp.float32) * self.head_dim**-0.5
    logits = jnp.where(mask[:, None], logits, _gemma.BIG_NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("BNTS,BSNH->BTNH", probs, v)
    out = jnp.where(jnp.any(mask, axis=-1)[:, :, None, None], out, 0)
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
  """APT Stage 2: gated cross-attention to the language tokens, then a gated FFN (tanh gates, zero at init)."""

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


def timestep_proj(t, channels: int = 256):
  """diffusers `Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=1)`. t [B] -> [B, channels]."""
  half = channels // 2
  exponent = -math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1)
  emb = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None]
  return jnp.concatenate([jnp.cos(emb), jnp.sin(emb)], axis=-1)


def sinusoidal_encoding(t, dim: int):
  """GR00T's `SinusoidalPositionalEncoding` of the action encoder: [sin, cos] with 10000^(-i/half). t [...]."""
  half = dim // 2
  exponent = -jnp.arange(half, dtype=jnp.float32) * (math.log(10000.0) / half)
  freqs = t.astype(jnp.float32)[..., None] * jnp.exp(exponent)
  return jnp.concatenate([jnp.sin(freqs), jnp.cos(freqs)], axis=-1)


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


class Gr00tModule(nn.Module):
  config: Gr00tConfig

  def setup(self):
    c = self.config
    d = c.dit_variant
    self.PaliGemma = c.make_vlm()
    self.vl_norm = nn.LayerNorm(epsilon=1e-5, dtype=c.dtype)
    self.vl_adapter = [AdapterBlock(d.adapter_num_heads, c.dtype) for _ in range(d.adapter_depth)]
    self.state_encoder = Mlp2(d.state_hidden, d.width, c.dtype)
    self.action_encoder = ActionEncoder(d.width, c.dtype)
    self.position_embedding = self.param("position_embedding", _normal(0.02), (c.action_horizon, d.width))
    self.future_tokens = self.param("future_tokens", _normal(0.02), (d.num_future_tokens, d.width))
    self.timestep_encoder = TimestepEncoder(d.width, d.time_channels, c.dtype)
    self.blocks = [DiTBlock(d, c.dtype) for _ in range(d.depth)]
    if c.apt_stage == "stage2":
      self.lang_blocks = [LanguageBlock(d, c.dtype) for _ in range(d.depth // 2)]
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
    prefix = self.PaliGemma.embed(obs, with_language=with_language, language_block=c.language_block)
    hidden = self.PaliGemma(prefix)[c.vlm_layer]
    feats = self.PaliGemma.final_norm(hidden)
    if c.stop_vlm_gradient:
      feats = jax.lax.stop_gradient(feats)
    x = self.vl_norm(feats.astype(c.dtype))
    # Images never see the prompt in the APT stages (prefix-LM mask with the prompt as a new block).
    adapter_mask = _vlm.make_attn_mask(prefix.mask, prefix.ar)
    for block in self.vl_adapter:
      x = block(x, adapter_mask)
    is_lang = jnp.asarray(prefix.is_lang)[None]
    if c.apt_stage == "stage2":
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
    """-> prediction [B, AH, AD] (velocity a − ε for flow, ε for DDIM)."""
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

  def predict(self, obs, x_t, net_time):
    return self.denoise(obs, self.encode(obs), x_t, net_time)

  def init_all(self, obs, actions):
    """Touches every parameter (prompt embedding included) whatever the stage."""
    context = self.encode(obs, with_language=True)
    return self.denoise(obs, context, actions, jnp.zeros(actions.shape[0]))


@flax.struct.dataclass
class Gr00t(_vlm.FeatureHeadModel):
  """GR00T-style model: `config` + `params`; compute_loss / sample_actions from FeatureHeadModel."""


def param_count(config: Gr00tConfig) -> dict:
  """Hand-computed parameter counts of the head's parts (for the full-size shape test)."""
  c, d = config, config.dit_variant
  w, dv, ad, ah = d.width, c.vlm_config.width, c.action_dim, c.action_horizon
  dense = lambda i, o: i * o + o
  attn = lambda dq, dkv, inner: dense(dq, inner) + 2 * dense(dkv, inner) + dense(inner, dq)
  ff = lambda x: dense(x, 4 * x) + dense(4 * x, x)
  ada = dense(w, 2 * w)
  cross = ada + attn(w, dv, w) + ff(w)
  self_ = ada + attn(w, w, w) + ff(w)
  out = {
      "vl_norm": 2 * dv,
      "vl_adapter": d.adapter_depth * (2 * 2 * dv + attn(dv, dv, dv) + ff(dv)),
      "state_encoder": dense(c.action_dim, d.state_hidden) + dense(d.state_hidden, w),
      "action_encoder": dense(ad, w) + dense(2 * w, w) + dense(w, w),
      "embeddings": ah * w + d.num_future_tokens * w,
      "timestep_encoder": dense(d.time_channels, w) + dense(w, w),
      "dit_blocks": d.depth // 2 * (cross + self_),
      "output": dense(w, 2 * w) + dense(w, d.output_dim) + dense(d.output_dim, d.output_dim) + dense(d.output_dim, ad),
  }
  if c.apt_stage == "stage2":
    out["lang_blocks"] = d.depth // 2 * (cross + 2)
  out["head_total"] = sum(out.values())
  return out


def _check_subset(stage1_params, stage2_params) -> list[str]:
  """Stage 1 param names and shapes are a strict subset of Stage 2's; returns the new (Stage 2 only) keys."""
  s1, s2 = tree_lib.shapes(stage1_params), tree_lib.shapes(stage2_params)
  bad = [k for k in s1 if s2.get(k) != s1[k]]
  if bad:
    raise ValueError(f"Stage 1 params missing or mis-shaped in Stage 2: {bad[:10]}")
  return sorted(set(s2) - set(s1))


def stage2_params_from_stage1(stage1_params, stage2_init_params, init: str = "preserving"):
  """Stage 2 params: every Stage 1 param restored by name, the language blocks new (gates 0 => equals Stage 1).

  Returns (params, restored_keys, new_keys). Both `init`s give the same tree here: the new blocks keep their fresh
  random weights and their tanh gates start at 0, so the output equals Stage 1's at init either way.
  """
  if init not in ("preserving", "paper"):
    raise ValueError(f"init={init!r}; expected 'preserving' or 'paper'")
  new = _check_subset(stage1_params, stage2_init_params)
  return tree_lib.merge(stage2_init_params, stage1_params), sorted(tree_lib.flatten(stage1_params)), new

