"""Step-level transforms in NumPy / PIL: action chunks, delta actions, image decode, resize-with-pad, augmentation.

Shapes: T = episode length, H = action horizon, D = width of the raw state / actions.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from PIL import ImageEnhance


def chunk_indices(t: int, horizon: int, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices of the H actions of the chunk starting at step t, and the mask of real steps.

  Past the episode end the last action is repeated (index T-1) and the mask is False:
  t=1, H=4, T=3 -> idx [1, 2, 2, 2], mask [True, True, False, False].
  """
  idx = t + np.arange(horizon)
  mask = idx < length
  return np.minimum(idx, length - 1), mask


def action_chunk(actions: np.ndarray, t: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
  """actions [T, D] -> (chunk [H, D], mask bool [H]) starting at step t (see `chunk_indices`)."""
  idx, mask = chunk_indices(t, horizon, actions.shape[0])
  return actions[idx], mask


def all_action_chunks(actions: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
  """actions [T, D] -> chunks [T, H, D] and masks [T, H] for every step of the episode."""
  length = actions.shape[0]
  idx = np.arange(length)[:, None] + np.arange(horizon)[None, :]
  mask = idx < length
  return actions[np.minimum(idx, length - 1)], mask


def delta_mask(delta_action_dims, action_dim: int) -> np.ndarray | None:
  """Config value -> bool mask [action_dim] of the action dims made relative to the state (None: no delta).

  `delta_action_dims` is an int k (first k dims, openpi's `make_bool_mask(k, -(D-k))`), a sequence of bools, or
  None / 0 / False.
  """
  if delta_action_dims is None or delta_action_dims is False:
    return None
  if isinstance(delta_action_dims, (bool, np.bool_)) and delta_action_dims:
    raise ValueError("delta_action_dims=True is ambiguous; give the number of leading dims or a bool mask")
  if isinstance(delta_action_dims, (int, np.integer)):
    k = int(delta_action_dims)
    if k <= 0:
      return None
    mask = np.zeros(action_dim, bool)
    mask[: min(k, action_dim)] = True
    return mask
  mask = np.asarray(list(delta_action_dims), bool)
  out = np.zeros(action_dim, bool)
  out[: min(len(mask), action_dim)] = mask[:action_dim]
  return out if out.any() else None


def apply_delta(actions: np.ndarray, state: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
  """openpi `DeltaActions`: actions[..., i] -= state[i] where mask[i] (state of the chunk's first step).

  actions [..., H, D], state [..., S] with S > the last True index of mask; the mask is cut to D.
  """
  if mask is None:
    return actions
  d = min(mask.shape[0], actions.shape[-1])
  mask = mask[:d]
  if not mask.any():
    return actions
  if state.shape[-1] < d and mask[state.shape[-1]:].any():
    raise ValueError(f"delta_action_dims covers {d} dims but the state has only {state.shape[-1]}")
  offset = np.where(mask, _pad_last(state, d)[..., :d], 0.0).astype(actions.dtype)
  out = actions.copy()
  out[..., :d] -= offset[..., None, :]
  return out


def _pad_last(x: np.ndarray, d: int) -> np.ndarray:
  if x.shape[-1] >= d:
    return x
  return np.concatenate([x, np.zeros(x.shape[:-1] + (d - x.shape[-1],), x.dtype)], -1)


def pad_to_dim(x: np.ndarray, dim: int) -> np.ndarray:
  """Zero-pads the last axis to `dim` (openpi `PadStatesAndActions`); raises if x is wider."""
  if x.shape[-1] > dim:
    raise ValueError(f"width {x.shape[-1]} exceeds action_dim={dim}")
  return _pad_last(x, dim)


def decode_image(data) -> np.ndarray:
  """Encoded JPEG/PNG bytes (or an already decoded array) -> uint8 [H, W, C]."""
  if isinstance(data, (bytes, bytearray, memoryview, np.bytes_)):
    with Image.open(io.BytesIO(bytes(data))) as im:
      return np.asarray(im)
  return np.asarray(data, np.uint8)


def resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [h, w, 3] -> [height, width, 3]: PIL bilinear resize keeping the aspect ratio, centred on zeros.

  Same arithmetic as openpi_client.image_tools.resize_with_pad (which mirrors tf.image.resize_with_pad).
  """
  cur_h, cur_w = image.shape[:2]
  if (cur_h, cur_w) == (height, width):
    return image
  ratio = max(cur_w / width, cur_h / height)
  new_h, new_w = int(cur_h / ratio), int(cur_w / ratio)
  resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=Image.BILINEAR))
  out = np.zeros((height, width, image.shape[2]), np.uint8)
  top, left = max(0, int((height - new_h) / 2)), max(0, int((width - new_w) / 2))
  out[top:top + new_h, left:left + new_w] = resized
  return out


def augment_image(image: np.ndarray, rng: np.random.Generator, *, wrist: bool) -> np.ndarray:
  """Train-time augmentation modelled on openpi's (model-side, augmax) recipe, on uint8 [H, W, 3].

  Non-wrist cameras: random crop of 95% of height and width, resized back; rotation by U(-5, 5) degrees (bilinear,
  zero fill). All cameras: brightness x U(0.7, 1.3), contrast x U(0.6, 1.4), saturation x U(0.5, 1.5) (PIL
  ImageEnhance, in that order).
  """
  h, w = image.shape[:2]
  im = Image.fromarray(image)
  if not wrist:
    ch, cw = round(0.95 * h), round(0.95 * w)
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    im = im.resize((w, h), resample=Image.BILINEAR, box=(left, top, left + cw, top + ch))
    im = im.rotate(float(rng.uniform(-5.0, 5.0)), resample=Image.BILINEAR, fillcolor=(0, 0, 0))
  im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.7, 1.3)))
  im = ImageEnhance.Contrast(im).enhance(float(rng.uniform(0.6, 1.4)))
  im = ImageEnhance.Color(im).enhance(float(rng.uniform(0.5, 1.5)))
  return np.asarray(im)
