"""Layers shared by the model files: the masked attention core, the sinusoidal embedding and block remat.

Letters: B batch, T query length, S key length, N query heads, K key/value heads, G = N / K, H head dim, F frequencies.
"""

from __future__ import annotations

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

# big_vision/gemma mask with this instead of -inf, so that a row with no visible key stays finite.
BIG_NEG = -2.3819763e38


REMAT_POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def remat(block_cls, policy: str, *, in_scan: bool = False):
  """`block_cls` rematerialised under REMAT_POLICIES[policy] ("none": unchanged). Under nothing_saveable its backward
  keeps only the block's inputs: the attention logits, [B, N, T, S] in float32, are recomputed instead of held for
  every layer. Outside a scan, `prevent_cse` keeps XLA from merging the recompute back into the forward; a scan body
  needs no such guard (openpi, big_vision)."""
  if policy == "none":
    return block_cls
  if policy not in REMAT_POLICIES:
    raise ValueError(f"Unknown remat_policy {policy!r}; known: {sorted(REMAT_POLICIES)} or 'none'")
  return nn.remat(block_cls, prevent_cse=not in_scan, policy=REMAT_POLICIES[policy])


def dot_product_attention(q, k, v, mask, num_kv_heads: int, *, logits_scale: float | None = None,
                          zero_empty_rows: bool = False):
  """q [B, T, N, H], k/v [B, S, K, H], mask [B, 1, T, S] bool -> [B, T, N, H] in q's dtype.

  Query head n reads key/value head n // G (multi-query and grouped-query attention). Logits and softmax run in
  float32, the probabilities are cast back to the compute dtype (as openpi).
  logits_scale: multiplies the float32 logits (diffusers' attention); None when q arrives scaled (Gemma).
  zero_empty_rows: a query that sees no key gets 0. Otherwise it averages every value (BIG_NEG everywhere): that is
    what openpi computes for padding tokens, whose outputs are never read.
  """
  dtype = q.dtype
  if mask.shape != (q.shape[0], 1, q.shape[1], k.shape[1]):
    raise ValueError(f"Attention mask has shape {mask.shape}, want {(q.shape[0], 1, q.shape[1], k.shape[1])}")
  q = einops.rearrange(q, "B T (K G) H -> B T K G H", K=num_kv_heads)
  logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
  if logits_scale is not None:
    logits = logits * logits_scale
  logits = jnp.where(mask[:, :, None, :, :], logits, BIG_NEG)
  probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
  encoded = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)
  encoded = einops.rearrange(encoded, "B T K G H -> B T (K G) H")
  if zero_empty_rows:
    encoded = jnp.where(jnp.any(mask, axis=-1)[:, 0, :, None, None], encoded, 0).astype(dtype)
  return encoded


def sinusoidal_embedding(x, freqs, *, cos_first: bool = False):
  """[sin(x·ω) ; cos(x·ω)] of scalars x [...] at frequencies ω [F] -> [..., 2F] in float32.

  `cos_first` is diffusers' `flip_sin_to_cos`. The frequencies are the caller's, computed as its reference computes
  them (openpi: 2π / geometric periods; diffusers, GR00T, BayesVLA: exp(−j·log(max_period)/d) in their own order of
  float32 operations), so each head's embedding stays bit for bit what its reference gives.
  """
  emb = x.astype(jnp.float32)[..., None] * freqs
  parts = [jnp.sin(emb), jnp.cos(emb)]
  return jnp.concatenate(parts[::-1] if cos_first else parts, axis=-1)
