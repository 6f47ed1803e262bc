"""Gemma decoder with N experts that share attention (openpi's π0 mixture of transformers).

Each expert has its own weights; their tokens are concatenated along the sequence inside every attention, so expert 0
(the PaliGemma LLM) and expert 1 (the action expert) attend to each other through one mask. Parameter names are
openpi's (itself big_vision's Gemma): expert 0 keeps the PaliGemma names, expert i > 0 gets a `_i` suffix. An expert
with `fusion=True` (APT Stage 2) also gets a gated cross-attention sublayer in every layer (`FusionAttention`).

Letters used in shapes and einsum strings:
  B: batch              T: query length       S: key length
  N: query heads        K: key/value heads    G: query heads per kv head (N = K·G)
  H: head dim           D: model width        F: MLP hidden width
  L: depth (layers)     V: vocabulary
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp

from apt_jax import sharding as _sharding
from apt_jax.models import layers
from apt_jax.models import lora as lora_lib
from apt_jax.models import variants as _variants

PALIGEMMA_VOCAB_SIZE = 257_152

FusionGate = Literal["tanh", "tanh_zero_proj", "sigmoid"]
FUSION_GATES = get_args(FusionGate)


@dataclasses.dataclass(frozen=True)
class Config:
  """Size of one Gemma expert."""

  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  # APT Stage 2: give this expert a gated cross-attention sublayer in every layer.
  fusion: bool = False
  fusion_gate: FusionGate = "tanh"
  # LoRA rank on every attention einsum and MLP weight (0: none) and its α (openpi's `*_lora` variants).
  lora_rank: int = 0
  lora_alpha: float = 1.0

  @property
  def lora(self) -> lora_lib.LoraConfig | None:
    return lora_lib.LoraConfig(self.lora_rank, self.lora_alpha) if self.lora_rank else None


_VARIANTS = {
    "dummy": dict(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    "gemma_300m": dict(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_2b": dict(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
}
_VARIANTS["gemma_300m_lora"] = dict(_VARIANTS["gemma_300m"], lora_rank=32, lora_alpha=32.0)
_VARIANTS["gemma_2b_lora"] = dict(_VARIANTS["gemma_2b"], lora_rank=16, lora_alpha=16.0)


def get_config(variant: str | Config | dict) -> Config:
  """A named variant ("dummy", "gemma_300m", "gemma_2b", "gemma_300m_lora", "gemma_2b_lora"), a Config, or a dict
  of Config fields."""
  return _variants.resolve(Config, _VARIANTS, variant, "Gemma")


def _name(name: str, i: int) -> str:
  # Expert 0 keeps the PaliGemma checkpoint names; the action expert gets `_1`, and so on.
  return name if i == 0 else f"{name}_{i}"


class RMSNorm(nn.Module):
  """RMSNorm with the scale stored as an offset (zero init), or adaptive when a condition is given.

  Adaptive (π0.5): Dense(3D, zero init)(cond) → scale, shift, gate; returns (x·(1+scale)+shift, gate).
  """

  @nn.compact
  def __call__(self, x, cond=None):
    dtype = x.dtype
    var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    normed = x * jax.lax.rsqrt(var + 1e-6)
    if cond is None:
      scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
      return (normed * (1 + scale)).astype(dtype), None
    modulation = nn.Dense(3 * x.shape[-1], kernel_init=nn.initializers.zeros_init(), dtype=dtype)(cond)
    scale, shift, gate = jnp.split(modulation[:, None, :], 3, axis=-1)
    return (normed * (1 + scale) + shift).astype(dtype), gate


class Embedder(nn.Module):
  """Token embedding, scaled by sqrt(width) as in Gemma."""

  vocab_size: int
  embed_dim: int

  def setup(self):
    self.input_embedding_table = self.param(
        "input_embedding", nn.initializers.normal(), (self.vocab_size, self.embed_dim))

  def encode(self, tokens):
    x = self.input_embedding_table[(tokens,)]
    return x * jnp.sqrt(self.embed_dim).astype(x.dtype)

  def decode(self, x):
    """[B, T, D] -> logits [B, T, V] (tied weights, for PaliGemma's prefix-LM loss)."""
    return jnp.dot(x, self.input_embedding_table.T.astype(x.dtype), preferred_element_type=jnp.float32)


def apply_rope(x, positions, max_wavelength=10_000):
  """RoPE, half-split convention, computed in float32. x: [B, T, N, H]; positions: [B, T]."""
  freq_exponents = (2.0 / x.shape[-1]) * jnp.arange(x.shape[-1] // 2, dtype=jnp.float32)
  timescale = max_wavelength**freq_exponents
  radians = positions[..., None] / timescale[None, None, :]
  radians = radians[..., None, :]  # [B, T, 1, H/2]
  sin, cos = jnp.sin(radians), jnp.cos(radians)
  x1, x2 = jnp.split(x, 2, axis=-1)
  res = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return res.astype(x.dtype)


def _init(in_axis, out_axis, batch_axis=()):
  return nn.initializers.lecun_normal(in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis)


Einsum = lora_lib.Einsum


class Attention(nn.Module):
  """Attention shared by the experts: per-expert projections, one softmax over the joint sequence."""

  configs: Sequence[Config]

  @nn.compact
  def __call__(self, xs, positions, attn_mask, kv_cache):
    c0 = self.configs[0]
    for c in self.configs:
      if (c.head_dim, c.num_heads, c.num_kv_heads) != (c0.head_dim, c0.num_heads, c0.num_kv_heads):
        raise ValueError("All experts must share num_heads, num_kv_heads and head_dim")

    qkvs = []
    for i, (x, c) in enumerate(zip(xs, self.configs)):
      if x is None:
        continue
      if c.num_kv_heads == c.num_heads:
        qkv_einsum = Einsum((3, c.num_heads, c.width, c.head_dim), _init(-2, -1, (0, 1)), c.lora,
                            name=_name("qkv_einsum", i))
        qkvs.append(tuple(qkv_einsum("BSD,3KDH->3BSKH", x)))
      else:
        q = Einsum((c.num_heads, c.width, c.head_dim), _init(-2, -1, (0,)), c.lora, name=_name("q_einsum", i))(
            "BTD,NDH->BTNH", x)
        k, v = Einsum((2, c.num_kv_heads, c.width, c.head_dim), _init(-2, -1, (0, 1)), c.lora,
                      name=_name("kv_einsum", i))("BSD,2KDH->2BSKH", x)
        qkvs.append((q, k, v))

    q, k, v = (jnp.concatenate(y, axis=1) for y in zip(*qkvs))
    q = apply_rope(q, positions)
    q *= c0.head_dim**-0.5
    k = apply_rope(k, positions)
    if kv_cache is not None:  # The cache holds rotated keys of the prefix.
      cache_k, cache_v = kv_cache
      k = jnp.concatenate([cache_k, k], axis=1)
      v = jnp.concatenate([cache_v, v], axis=1)

    encoded = layers.dot_product_attention(q, k, v, attn_mask, c0.num_kv_heads)
    out, start = [], 0
    for i, (x, c) in enumerate(zip(xs, self.configs)):
      if x is None:
        out.append(None)
        continue
      end = start + x.shape[1]
      out_einsum = Einsum((c.num_heads, c.head_dim, c.width), _init((-3, -2), -1), c.lora,
                          name=_name("attn_vec_einsum", i))
      out.append(out_einsum("BTNH,NHD->BTD", encoded[:, start:end]))
      start = end
    return out, (k, v)


class FusionAttention(nn.Module):
  """APT Stage 2 gated cross-attention sublayer for one expert.

  Queries come from this expert's (normed) tokens; keys/values are the joint ones of the same layer (all experts,
  cache included), restricted by `fusion_mask` (e.g. to language tokens). Output enters through a gate:
    tanh:           x + tanh(α)·y     α = 0 at init (Flamingo): exactly the Stage 1 output, but until α moves only
                                      α gets a gradient (slow: tanh(α) ≈ 0.04 after 3000 testbed steps).
    tanh_zero_proj: x + tanh(α)·y     α = 1 at init and y's output projection zero (ControlNet / adaLN-Zero): exactly
                                      the Stage 1 output, and the projection gets a gradient from the first step.
    sigmoid:        σ(g)·x + (1 − σ(g))·y   (the paper's convex mix; 0.5 at init, does NOT preserve outputs)
  """

  config: Config

  @nn.compact
  def __call__(self, x, k, v, positions, fusion_mask):
    c = self.config
    dtype = x.dtype
    h, _ = RMSNorm(name="norm")(x)
    q = Einsum((c.num_heads, c.width, c.head_dim), _init(-2, -1, (0,)), name="q_einsum")("BTD,NDH->BTNH", h)
    q = apply_rope(q, positions) * c.head_dim**-0.5
    # A query with no visible key (an empty prompt) reads nothing, rather than the mean of every value.
    enc = layers.dot_product_attention(q, k, v, fusion_mask, c.num_kv_heads, zero_empty_rows=True)
    if c.fusion_gate not in FUSION_GATES:
      raise ValueError(f"Unknown fusion_gate {c.fusion_gate!r}; expected one of {FUSION_GATES}")
    zero_proj = c.fusion_gate == "tanh_zero_proj"
    out_init = nn.initializers.zeros_init() if zero_proj else _init((-3, -2), -1)
    y = Einsum((c.num_heads, c.head_dim, c.width), out_init, name="attn_vec_einsum")("BTNH,NHD->BTD", enc)
    gate = self.param("gate", nn.initializers.ones_init() if zero_proj else nn.initializers.zeros_init(), (1,))
    if c.fusion_gate == "sigmoid":
      g = jax.nn.sigmoid(gate)
      return (g * x + (1 - g) * y).astype(dtype)
    return x + (jnp.tanh(gate) * y).astype(dtype)


class FeedForward(nn.Module):
  """Gated GELU MLP (tanh approximation): (gelu(x W0) ⊙ x W1) W_linear, with LoRA adapters when `lora` is set."""

  features: int
  hidden_dim: int
  lora: lora_lib.LoraConfig | None = None

  @nn.compact
  def __call__(self, x):
    gating_shape, linear_shape = (2, self.features, self.hidden_dim), (self.hidden_dim, self.features)
    w_gating = self.param("gating_einsum", nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,)),
                          gating_shape)
    w_linear = self.param("linear", nn.initializers.lecun_normal(in_axis=-2, out_axis=-1), linear_shape)
    gating_lora = lora_lib.dense_adapters(self, "gating_einsum", gating_shape, self.lora)
    linear_lora = lora_lib.dense_adapters(self, "linear", linear_shape, self.lora)

    def gating(i):
      adapters = None if gating_lora is None else (gating_lora[0][i], gating_lora[1][i])
      return lora_lib.dense(x, w_gating[i], adapters)

    return lora_lib.dense(nn.gelu(gating(0)) * gating(1), w_linear, linear_lora)


def _gated_residual(x, y, gate):
  if x is None:
    return None
  return x + y if gate is None else x + y * gate


class Block(nn.Module):
  """One decoder layer for all experts: pre-norm shared attention, [gated fusion], pre-norm gated MLP.

  With `return_hidden`, the scan output is ((k, v), expert-0 output of this layer) instead of (k, v).
  """

  configs: Sequence[Config]
  return_hidden: bool = False

  @nn.compact
  def __call__(self, xs, kv_cache, positions, attn_mask, adarms_cond, fusion_mask):
    # The residual stream and each sub-layer's output stay batch-split (openpi's constraints, at the same points).
    xs = _sharding.constrain_batch(xs)
    pre_attn, gates = [], []
    for i, x in enumerate(xs):
      gate = None
      if x is not None:
        x, gate = RMSNorm(name=_name("pre_attention_norm", i))(x, adarms_cond[i])
      pre_attn.append(x)
      gates.append(gate)
    pre_attn = _sharding.constrain_batch(pre_attn)
    post_attn, new_kv = Attention(configs=self.configs, name="attn")(pre_attn, positions, attn_mask, kv_cache)
    post_attn = _sharding.constrain_batch(post_attn)
    xs = _sharding.constrain_batch([_gated_residual(x, y, g) for x, y, g in zip(xs, post_attn, gates)])

    # APT Stage 2: gated cross-attention of fused experts into the same layer's keys/values.
    if fusion_mask is not None:
      k, v = new_kv
      start = 0  # Offsets into this call's tokens; keys also include the cache.
      for i, (x, c) in enumerate(zip(xs, self.configs)):
        if x is None:
          continue
        end = start + x.shape[1]
        if c.fusion:
          xs[i] = FusionAttention(c, name=_name("fusion", i))(
              x, k, v, positions[:, start:end], fusion_mask[:, :, start:end])
        start = end

    out, gates = [], []
    for i, (x, c) in enumerate(zip(xs, self.configs)):
      gate = None
      if x is not None:
        x, gate = RMSNorm(name=_name("pre_ffw_norm", i))(x, adarms_cond[i])
        x = FeedForward(features=c.width, hidden_dim=c.mlp_dim, lora=c.lora, name=_name("mlp", i))(x)
      out.append(x)
      gates.append(gate)
    out = _sharding.constrain_batch(out)
    xs = _sharding.constrain_batch([_gated_residual(x, y, g) for x, y, g in zip(xs, out, gates)])
    if self.return_hidden:
      return xs, (new_kv, xs[0])
    return xs, new_kv


class Module(nn.Module):
  """Mixture of Gemma experts.

  Attributes:
    configs: one Config per expert; all share depth, heads and head_dim.
    embed_dtype: compute dtype ("bfloat16" or "float32"); params stay float32.
    vocab_size: embedder rows (257 152 for PaliGemma).
    remat_policy: a key of `layers.REMAT_POLICIES`, or "none" for no rematerialisation.
    scan: scan over layers (stacked params with a leading depth axis, as openpi).
    return_hidden_states: also return expert 0's output of every layer (the scan output), [L, B, T, D], before
      the final norm; `__call__` then returns (outputs, kv_cache, hidden_states). Used by heads that read VLM
      features of a chosen layer (GR00T) or of many layers (the APT expert's taps).
  """

  configs: Sequence[Config]
  embed_dtype: str = "bfloat16"
  vocab_size: int = PALIGEMMA_VOCAB_SIZE
  remat_policy: str = "nothing_saveable"
  return_hidden_states: bool = False

  def setup(self):
    depth = self.configs[0].depth
    if any(c.depth != depth for c in self.configs):
      raise ValueError(f"All experts must have the same depth, got {[c.depth for c in self.configs]}")
    self.embedder = Embedder(vocab_size=self.vocab_size, embed_dim=self.configs[0].width, name="embedder")
    self.layers = nn.scan(
        layers.remat(Block, self.remat_policy, in_scan=True),
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=depth,
    )(configs=self.configs, return_hidden=self.return_hidden_states)
    self.final_norms = [RMSNorm(name=_name("final_norm", i)) for i in range(len(self.configs))]

  def embed(self, tokens):
    """[B, T] int -> [B, T, D] in embed_dtype, scaled by sqrt(D)."""
    return self.embedder.encode(tokens).astype(self.embed_dtype)

  def decode(self, x):
    """Expert-0 hidden states [B, T, D] -> logits [B, T, V] (float32)."""
    return self.embedder.decode(x)

  def __call__(self, embedded, *, positions, mask, kv_cache=None, adarms_cond=None, fusion_mask=None):
    """Runs all experts.

    Args:
      embedded: list (one per expert) of [B, T_i, D_i] or None (expert absent from this call).
      positions: [B, T] int, T = Σ T_i of present experts.
      mask: [B, T, S] bool, S = cached length + T.
      kv_cache: optional (k, v), each [L, B, S_cache, K, H], from an earlier call.
      adarms_cond: optional list of [B, C] conditioning vectors (adaptive RMSNorm) per expert.
      fusion_mask: [B, T, S] bool for experts with `fusion=True` (Stage 2); None disables fusion.
    Returns:
      (list of [B, T_i, D_i] or None, (k, v) each [L, B, S, K, H]), plus expert 0's per-layer outputs
      [L, B, T_0, D_0] when `return_hidden_states`.
    """
    embedded = [None if e is None else e.astype(self.embed_dtype) for e in embedded]
    mask = jnp.asarray(mask)[:, None, :, :]
    if fusion_mask is not None:
      fusion_mask = jnp.asarray(fusion_mask)[:, None, :, :]
    if adarms_cond is None:
      adarms_cond = [None] * len(self.configs)
    embedded, scan_out = self.layers(embedded, kv_cache, positions, mask, adarms_cond, fusion_mask)
    outs = [None if e is None else f(e, a)[0] for f, e, a in zip(self.final_norms, embedded, adarms_cond)]
    if self.return_hidden_states:
      kv_cache, hidden = scan_out
      return outs, kv_cache, hidden
    return outs, scan_out
