"""SigLIP ViT as PaliGemma (and openpi's π0) uses it: no pooling, a `head` Dense to the LLM width.

Parameter tree (openpi's `PaliGemma/img/...`): `embedding/{kernel,bias}`, `pos_embedding`,
`Transformer/encoderblock/{LayerNorm_0,LayerNorm_1,MlpBlock_0/Dense_{0,1},MultiHeadDotProductAttention_0/...}`
stacked over depth, `Transformer/encoder_norm`, `head`.

Letters: B batch, P patches (h·w), D width, F MLP width, N heads, H head dim, L depth.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from apt_jax import sharding as _sharding
from apt_jax.models import layers
from apt_jax.models import variants as _variants


@dataclasses.dataclass(frozen=True)
class Config:
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: tuple[int, int] = (14, 14)


_VARIANTS = {
    "So400m/14": dict(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=(14, 14)),
    # Small enough for CPU tests; still 224/14 = 16x16 = 256 tokens per image.
    "dummy": dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=(14, 14)),
}


def get_config(variant: str | Config | dict) -> Config:
  """A named variant ("So400m/14", "dummy"), a Config, or a dict of Config fields."""
  c = _variants.resolve(Config, _VARIANTS, variant, "SigLIP")
  return dataclasses.replace(c, patch_size=tuple(c.patch_size))   # lists from JSON / ml_collections


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype_mm: str = "float32"

  @nn.compact
  def __call__(self, x):
    inits = dict(kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(stddev=1e-6))
    d = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype_mm, **inits)(x)
    x = nn.gelu(x)
    return nn.Dense(d, dtype=self.dtype_mm, **inits)(x)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block."""

  mlp_dim: int
  num_heads: int
  dtype_mm: str = "float32"

  @nn.compact
  def __call__(self, x, _=None):
    # The residual stream and each sub-layer's output stay batch-split (openpi's constraints, at the same points).
    x = _sharding.constrain_batch(x)
    y = nn.LayerNorm(dtype=self.dtype_mm)(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(), dtype=self.dtype_mm)(y, y)
    x = x + _sharding.constrain_batch(y)
    y = nn.LayerNorm(dtype=self.dtype_mm)(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, dtype_mm=self.dtype_mm)(y)
    return _sharding.constrain_batch(x + _sharding.constrain_batch(y)), None


class Encoder(nn.Module):
  depth: int
  mlp_dim: int
  num_heads: int
  remat_policy: str = "nothing_saveable"
  dtype_mm: str = "float32"

  @nn.compact
  def __call__(self, x):
    block = layers.remat(Encoder1DBlock, self.remat_policy, in_scan=True)
    x, _ = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast, length=self.depth,
    )(name="encoderblock", mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype_mm=self.dtype_mm)(x, None)
    return nn.LayerNorm(name="encoder_norm", dtype=self.dtype_mm)(x)


def posemb_sincos2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
  """big_vision's fixed 2-D sin-cos position embedding [1, h * w, width] (row-major patches; width % 4 == 0).
  SigLIP's own posemb is learned; this is a better *initial value* for tiny models trained from scratch."""
  if width % 4:
    raise ValueError(f"posemb_sincos2d: width {width} must be a multiple of 4")
  y, x = np.mgrid[:h, :w]
  omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1))
  y = np.einsum("m,d->md", y.flatten(), omega)
  x = np.einsum("m,d->md", x.flatten(), omega)
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None].astype(np.float32)


class Module(nn.Module):
  """SigLIP ViT. images [B, H, W, 3] in [-1, 1] -> tokens [B, P, num_classes] in dtype_mm.

  The patch conv and the position embedding run in float32 (as openpi), then activations are cast to dtype_mm.
  """

  config: Config
  num_classes: int
  dtype_mm: str = "float32"
  remat_policy: str = "nothing_saveable"

  @nn.compact
  def __call__(self, image):
    c = self.config
    image = jnp.asarray(image, jnp.float32)
    x = nn.Conv(c.width, c.patch_size, strides=c.patch_size, padding="VALID", name="embedding",
                dtype=jnp.float32)(image)
    n, h, w, d = x.shape
    x = jnp.reshape(x, [n, h * w, d])
    posemb = self.param("pos_embedding", nn.initializers.normal(stddev=1 / np.sqrt(d)), (1, h * w, d), jnp.float32)
    x = (x + posemb).astype(self.dtype_mm)
    x = Encoder(depth=c.depth, mlp_dim=c.mlp_dim, num_heads=c.num_heads, remat_policy=self.remat_policy,
                dtype_mm=self.dtype_mm, name="Transformer")(x)
    return nn.Dense(self.num_classes, dtype=self.dtype_mm, kernel_init=nn.initializers.zeros_init(), name="head")(x)
