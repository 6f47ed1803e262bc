"""Image ops on device: resize with pad (openpi semantics) and π0's train-time augmentation.

Images are [B, H, W, C]; float images are in [-1, 1] unless stated otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def resize_with_pad(images, height: int, width: int, method="linear"):
  """Resizes keeping the aspect ratio, then pads to [height, width] (0 for uint8, -1 for float), centred."""
  has_batch = images.ndim == 4
  if not has_batch:
    images = images[None]
  cur_h, cur_w = images.shape[1:3]
  ratio = max(cur_w / width, cur_h / height)
  rh, rw = int(cur_h / ratio), int(cur_w / ratio)
  resized = jax.image.resize(images.astype(jnp.float32), (images.shape[0], rh, rw, images.shape[3]), method=method)
  if images.dtype == jnp.uint8:
    resized = jnp.round(resized).clip(0, 255).astype(jnp.uint8)
    pad_value = 0
  else:
    resized = resized.clip(-1.0, 1.0).astype(images.dtype)
    pad_value = -1.0
  pad_h0, rem_h = divmod(height - rh, 2)
  pad_w0, rem_w = divmod(width - rw, 2)
  out = jnp.pad(resized, ((0, 0), (pad_h0, pad_h0 + rem_h), (pad_w0, pad_w0 + rem_w), (0, 0)),
                constant_values=pad_value)
  return out if has_batch else out[0]


def _warp(image, matrix):
  """Samples image [H, W, C] at matrix @ (y, x, 1) for every output pixel (bilinear, edge-clamped)."""
  h, w = image.shape[:2]
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  coords = jnp.stack([ys, xs, jnp.ones_like(ys)], 0).reshape(3, -1)
  src = matrix @ coords
  out = jax.vmap(lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src[0], src[1]], order=1, mode="nearest"),
                 in_axes=-1, out_axes=-1)(image)
  return out.reshape(h, w, -1)


def random_crop_resize_rotate(rng, image, crop_frac=0.95, max_degrees=5.0):
  """Crops a random crop_frac window, resizes it back, and rotates by U(-max, max) degrees, as one warp."""
  h, w = image.shape[:2]
  k1, k2, k3 = jax.random.split(rng, 3)
  ch, cw = int(h * crop_frac), int(w * crop_frac)
  oy = jax.random.randint(k1, (), 0, h - ch + 1).astype(jnp.float32)
  ox = jax.random.randint(k2, (), 0, w - cw + 1).astype(jnp.float32)
  theta = jnp.deg2rad(jax.random.uniform(k3, (), minval=-max_degrees, maxval=max_degrees))
  # Output pixel -> rotate about the centre -> scale into the crop -> offset.
  cy, cx = (h - 1) / 2, (w - 1) / 2
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  to_centre = jnp.array([[1, 0, -cy], [0, 1, -cx], [0, 0, 1]], jnp.float32)
  rot = jnp.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], jnp.float32)
  scale = jnp.array([[ch / h, 0, (ch - 1) / 2], [0, cw / w, (cw - 1) / 2], [0, 0, 1]], jnp.float32)
  offset = jnp.array([[1, 0, oy], [0, 1, ox], [0, 0, 1]], jnp.float32)
  return _warp(image, offset @ scale @ rot @ to_centre)


def color_jitter(rng, image, brightness=0.3, contrast=0.4, saturation=0.5):
  """image in [0, 1]: brightness, contrast and saturation factors drawn from U(1-s, 1+s), then clipped."""
  kb, kc, ks = jax.random.split(rng, 3)
  b = jax.random.uniform(kb, (), minval=1 - brightness, maxval=1 + brightness)
  c = jax.random.uniform(kc, (), minval=1 - contrast, maxval=1 + contrast)
  s = jax.random.uniform(ks, (), minval=1 - saturation, maxval=1 + saturation)
  image = jnp.clip(image * b, 0, 1)
  gray = image @ jnp.array([0.299, 0.587, 0.114], image.dtype)
  image = jnp.clip((image - gray.mean()) * c + gray.mean(), 0, 1)
  gray = (image @ jnp.array([0.299, 0.587, 0.114], image.dtype))[..., None]
  return jnp.clip((image - gray) * s + gray, 0, 1)


def augment(rng, images, *, wrist: bool):
  """π0's train-time augmentation of [B, H, W, 3] images in [-1, 1]: crop+resize+rotate (non-wrist) and colour."""
  images = images / 2.0 + 0.5

  def one(key, image):
    k1, k2 = jax.random.split(key)
    if not wrist:
      image = random_crop_resize_rotate(k1, image)
    return color_jitter(k2, image)

  images = jax.vmap(one)(jax.random.split(rng, images.shape[0]), images)
  return images * 2.0 - 1.0
