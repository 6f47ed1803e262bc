"""VL co-training, the second half of π0.5's knowledge insulation: the VLM keeps training on its own prefix-LM loss
on vision-language data while the action expert's gradient into it is stopped (`knowledge_insulation`).

Head-agnostic: any head whose module holds PaliGemma at `PaliGemma` (`img` = SigLIP, `llm` = Gemma with the VLM as
expert 0) can co-train: π0 and the heads built on vlm.PaliGemma (GR00T-style, APT expert) all do.
Sequence: [image tokens ; prefix text (bidirectional) ; suffix text (causal)], cross-entropy on the suffix through
the tied embedding. Letters: B batch, N image tokens, L text tokens, V vocabulary.

VL batch (dict): image float [B, H, W, 3] in [-1, 1] (or uint8); tokens int [B, L]; input_mask, ar, loss_mask
bool [B, L] (ar: True on the causal suffix; loss_mask: True where the next token is predicted).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from apt_jax.models import vlm as _vlm

VL_KEYS = ("image", "tokens", "input_mask", "ar", "loss_mask")


def prefix_lm_logits(img, llm, images, tokens, input_mask, ar):
  """SigLIP + Gemma expert 0 over [image tokens ; tokens] -> logits [B, L, V] at the text positions; and, when `llm`
  returns hidden states, also expert 0's output of every layer at the image tokens [Depth, B, N, D]."""
  x_img = img(images)
  b, n = x_img.shape[:2]
  x = jnp.concatenate([x_img.astype(jnp.float32), llm.embed(tokens).astype(jnp.float32)], axis=1)
  mask = jnp.concatenate([jnp.ones((b, n), bool), input_mask], axis=1)
  ar_all = jnp.concatenate([jnp.zeros((b, n), bool), ar], axis=1)
  experts = [x] + [None] * (len(llm.configs) - 1)
  out = llm(experts, mask=_vlm.make_attn_mask(mask, ar_all), positions=jnp.cumsum(mask, axis=1) - 1)
  logits = llm.decode(out[0][0][:, n:])
  return (logits, out[2][:, :, :n]) if llm.return_hidden_states else logits


def prefix_lm_loss(logits, tokens, loss_mask):
  """-> (mean cross-entropy over the loss tokens, exact match [B]). The logit at position i predicts token i + 1."""
  logits, targets, w = logits[:, :-1], tokens[:, 1:], loss_mask[:, 1:]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  loss = jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1)
  exact = jnp.all((jnp.argmax(logits, -1) == targets) | ~w, axis=-1)   # teacher-forced == greedy exact match
  return loss, exact


def to_unit_range(images):
  """uint8 [..., 3] -> float32 in [-1, 1]; float images pass through."""
  if images.dtype in (jnp.uint8, np.uint8):
    return images.astype(jnp.float32) / 255.0 * 2.0 - 1.0
  return images


def vl_loss(model, batch: dict):
  """The VLM's prefix-LM loss (scalar) of `model` (any head with a `PaliGemma` submodule) on a VL batch."""
  missing = [k for k in VL_KEYS if k not in batch]
  if missing:
    raise KeyError(f"VL co-training batch is missing {missing}; has {sorted(batch)}")
  images = to_unit_range(batch["image"])
  if images.shape[1:3] != tuple(model.config.image_resolution):
    raise ValueError(f"VL batch images are {images.shape[1:3]}, the model reads {model.config.image_resolution}")

  def logits(module):
    return prefix_lm_logits(module.PaliGemma.img, module.PaliGemma.llm, images, batch["tokens"],
                            batch["input_mask"], batch["ar"])

  out = model.config.module().apply({"params": model.params}, method=logits)
  return prefix_lm_loss(out, batch["tokens"], batch["loss_mask"])[0]
