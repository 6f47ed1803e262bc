"""Analytic matmul FLOPs of π0 (openpi's algorithm): the train step and `sample_actions`, by part.

2 FLOPs per multiply-add of every dense layer, patch embedding and attention product (QKᵀ and PV over the full
masked square, as openpi computes it); norms, softmax, RoPE and other elementwise work are left out. Per example:

  SigLIP      per camera: patch embedding, L_v × (QKV + out + attention + MLP), head to the VLM width
  prefix      VLM expert over P = cameras·patches + prompt tokens (no prompt in Stage 1)
  suffix      state/action/time embeddings, action expert over A = 1 + AH tokens attending to P + A keys,
              Stage 2's fusion sublayers, the output projection
  backward    2× the forward of everything a gradient flows through, less the input gradients nobody needs
              (images, noisy actions, state; the frozen VLM's keys and values)
  remat       with `remat_policy="nothing_saveable"`, the forward of every scanned layer that is differentiated runs
              again in the backward pass, less its last MLP projection (whose output nothing in the backward reads)

Letters: B batch, P prefix tokens, A suffix tokens, S keys, D width, F MLP width, N heads, K kv heads, H head dim.
"""

from __future__ import annotations

import math

from apt_jax.models import pi0 as _pi0


def _dense(t, d_in, d_out):
  return 2 * t * d_in * d_out


def _attention(t, s, c):
  """QKᵀ and PV for t queries over s keys."""
  return 2 * 2 * t * s * c.num_heads * c.head_dim


def _gemma_projections(t, c):
  """Q, KV, output projection and gated MLP of one layer of expert `c` for t tokens."""
  nh, kh = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  mlp = 3 * _dense(t, c.width, c.mlp_dim)  # gating (2) and linear
  return _dense(t, c.width, nh) + _dense(t, c.width, 2 * kh) + _dense(t, nh, c.width) + mlp


def _fusion(t, s, c):
  """Stage 2 gated cross-attention sublayer: its Q and output projections and attention over s keys."""
  nh = c.num_heads * c.head_dim
  return _dense(t, c.width, nh) + _attention(t, s, c) + _dense(t, nh, c.width)


def _sizes(config: _pi0.Pi0Config):
  sig = config.siglip_variant
  patches = (config.image_resolution[0] // sig.patch_size[0]) * (config.image_resolution[1] // sig.patch_size[1])
  prefix = len(config.image_keys) * patches + (config.max_token_len if config.uses_language else 0)
  return patches, prefix, 1 + config.action_horizon


def _siglip(config, patches):
  """-> (patch embedding, scanned encoder layers, head) of one camera."""
  s = config.siglip_variant
  embed = _dense(patches, math.prod(s.patch_size) * 3, s.width)
  layers = s.depth * (4 * _dense(patches, s.width, s.width) + 2 * 2 * patches * patches * s.width
                      + 2 * _dense(patches, s.width, s.mlp_dim))
  return embed, layers, _dense(patches, s.width, config.vlm_config.width)


def _suffix_embedding(config):
  """-> (state and action input projections, time MLP, output projection). The time posemb is an outer product
  (elementwise, no contraction)."""
  d, ah, ad = config.expert_config.width, config.action_horizon, config.action_dim
  return _dense(1, ad, d) + _dense(ah, ad, d), _dense(ah, 2 * d, d) + _dense(ah, d, d), _dense(ah, d, ad)


def _expert_layers(config, queries, keys):
  """Scanned action-expert work summed over layers: projections, attention to `keys`, Stage 2 fusion."""
  e = config.expert_config
  per_layer = _gemma_projections(queries, e) + _attention(queries, keys, e)
  if e.fusion:
    per_layer += _fusion(queries, keys, e)
  return e.depth * per_layer


def train_step_flops(config: _pi0.Pi0Config, batch_size: int) -> dict:
  """FLOPs of one gradient step (loss, forward and backward; the optimizer update is elementwise) by part, plus
  `model` (forward + backward, the MFU numerator) and `total` (with the remat recompute)."""
  c, cams = config, len(config.image_keys)
  patches, p, a = _sizes(c)
  v, e = c.vlm_config, c.expert_config
  embed, sig_layers, head = (cams * x for x in _siglip(c, patches))
  inputs, time_mlp, out = _suffix_embedding(c)
  # One pass over [prefix ; suffix] computes the full square of attention: the prefix queries also meet the suffix.
  prefix_keys = p if c.separate_prefix_pass else p + a
  fwd = {"siglip": embed + sig_layers + head, "prefix": v.depth * (_gemma_projections(p, v) +
                                                                   _attention(p, prefix_keys, v)),
         "suffix": inputs + time_mlp + out + _expert_layers(c, a, p + a)}
  # A rematerialised layer recomputes its forward except the last MLP projection (the next layer's saved input).
  expert_remat = _expert_layers(c, a, p + a) - e.depth * _dense(a, e.mlp_dim, e.width)
  if c.vlm_trainable and not c.knowledge_insulation:
    # No input gradient for the images, the noisy actions and the state.
    backward = 2 * sum(fwd.values()) - embed - inputs
    s = c.siglip_variant
    remat = (expert_remat + sig_layers - cams * s.depth * _dense(patches, s.mlp_dim, s.width)
             + fwd["prefix"] - v.depth * _dense(p, v.mlp_dim, v.width))
  else:
    # The frozen prefix runs once; the expert's attention needs no gradient for the P cached keys and values.
    attentions = 2 if e.fusion else 1
    backward = 2 * fwd["suffix"] - inputs - e.depth * attentions * _attention(a, p, e)
    remat = expert_remat
  parts = {**{f"forward/{k}": x for k, x in fwd.items()}, "backward": backward,
           "remat": remat if c.remat_policy == "nothing_saveable" else 0}
  parts = {k: batch_size * x for k, x in parts.items()}
  model = parts["backward"] + sum(x for k, x in parts.items() if k.startswith("forward/"))
  return {**parts, "model": model, "total": model + parts["remat"]}


def sample_actions_flops(config: _pi0.Pi0Config, batch_size: int, num_steps: int = 10) -> dict:
  """FLOPs of `sample_actions`: SigLIP and the prefix once, then `num_steps` suffix passes on the KV cache."""
  c, cams = config, len(config.image_keys)
  patches, p, a = _sizes(c)
  parts = {"siglip": cams * sum(_siglip(c, patches)),
           "prefix": c.vlm_config.depth * (_gemma_projections(p, c.vlm_config) + _attention(p, p, c.vlm_config)),
           "suffix": num_steps * (sum(_suffix_embedding(c)) + _expert_layers(c, a, p + a))}
  parts = {k: batch_size * x for k, x in parts.items()}
  return {**parts, "total": sum(parts.values())}
