"""Parameter counts of the GR00T and APT-expert heads, derived by hand from their architectures (test oracles).

They read only the size fields of a config, never the heads' own code (no module, no config method), so a head that
builds a layer too many, a wrong width or a missing bias disagrees with them. The VLM (`PaliGemma/...`) is not
counted here (tests/heads/full_size_test.py counts it).
"""

dense = lambda i, o: i * o + o  # A Linear layer with its bias.


def gr00t_head(config) -> int:
  """GR00T N1.5's DiT head: VL LayerNorm and self-attention adapter, state / action encoders, DiT blocks (even:
  cross-attention to the VL features, odd: self-attention), output; Stage 2 adds a gated language block (a cross
  block plus 2 tanh gates) after every cross block."""
  d = config.dit_variant
  w, dv, ad = d.num_heads * d.head_dim, config.vlm_config.width, config.action_dim
  attn = lambda dq, dkv, inner: dense(dq, inner) + 2 * dense(dkv, inner) + dense(inner, dq)  # to_q/k/v, to_out
  ff = lambda x: dense(x, 4 * x) + dense(4 * x, x)
  ada = dense(w, 2 * w)  # AdaLayerNorm's (scale, shift) Linear
  cross = ada + attn(w, dv, w) + ff(w)
  self_ = ada + attn(w, w, w) + ff(w)
  parts = [
      2 * dv,                                                               # vl_norm
      d.adapter_depth * (2 * 2 * dv + attn(dv, dv, dv) + ff(dv)),           # vl_adapter (2 affine LayerNorms)
      dense(config.action_dim, d.state_hidden) + dense(d.state_hidden, w),  # state encoder (state dim = AD)
      dense(ad, w) + dense(2 * w, w) + dense(w, w),                         # action encoder W1, W2, W3
      config.action_horizon * w + d.num_future_tokens * w,                  # position embedding, future tokens
      dense(d.time_channels, w) + dense(w, w),                              # timestep encoder
      d.depth // 2 * (cross + self_),                                       # DiT blocks
      dense(w, 2 * w) + dense(w, d.output_dim),                             # proj_out_1, proj_out_2
      dense(d.output_dim, d.output_dim) + dense(d.output_dim, ad),          # action decoder
  ]
  if config.apt_stage == "stage2":
    parts.append(d.depth // 2 * (cross + 2))
  return sum(parts)


def apt_expert_head(config) -> int:
  """The APT expert: N = expert depth layers (N/2 in Stage 1), each a fused-QKV attention with qk-RMSNorm, an FFN,
  2 RMSNorm scales and 2 AdaRMSNorm modulations; Stage 2's N/2 new layers also carry `fusion_open` [W]. One highway
  projection per tap the layers fuse (N/2 in Stage 1, N otherwise), plus `vl_in`."""
  e = config.expert_variant
  w, dv, ad = e.width, config.vlm_config.width, config.action_dim
  num_layers = e.depth // 2 if config.apt_stage == "stage1" else e.depth
  layer = (dense(w, 3 * w) + dense(w, w) + dense(w, e.mlp_ratio * w) + dense(e.mlp_ratio * w, w)
           + 2 * w + 2 * dense(w, 3 * w) + 2 * (w // e.num_heads))
  new_layers = e.depth // 2 if config.apt_stage == "stage2" else 0
  token_mlp = lambda i: dense(i, w) + 2 * w + dense(w, w)  # Linear, LayerNorm, Linear
  parts = [
      num_layers * layer + new_layers * w,          # attention layers (+ fusion_open)
      dense(dv, w) + num_layers * dense(dv, w),     # vl_in + one highway per fused tap
      e.depth * w,                                  # gate
      2 * dense(w, w),                              # time MLP
      token_mlp(config.action_dim) + token_mlp(ad),  # state (dim = AD) and action token MLPs
      w + dense(w, ad),                             # final norm, action_out
  ]
  return sum(parts)
