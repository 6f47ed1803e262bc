"""Multi-expert Gemma (apt_jax.models.gemma) checked against NumPy re-derivations and openpi's parameter tree."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apt_jax import tree as tree_lib
from apt_jax.models import gemma
from apt_jax.models import layers
from apt_jax.models import siglip

# ----------------------------------------------------------------------------------------------------------------------
# NumPy references (float64).


def np_rms_norm(x, scale):
  x = np.asarray(x, np.float64)
  return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6) * (1 + scale)


def np_gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def np_rope_complex(x, positions, max_wavelength=10_000):
  """RoPE as a complex rotation: (x1 + i·x2)·exp(i·pos/λ^(2j/H)) for the halves x1, x2 of each head vector."""
  x = np.asarray(x, np.float64)
  h = x.shape[-1]
  z = x[..., : h // 2] + 1j * x[..., h // 2:]
  inv_freq = max_wavelength ** (-2.0 * np.arange(h // 2) / h)
  theta = np.asarray(positions, np.float64)[:, :, None, None] * inv_freq  # [B, T, 1, H/2]
  z = z * np.exp(1j * theta)
  return np.concatenate([z.real, z.imag], axis=-1)


def np_attention(q, k, v, mask):
  """q [B,T,N,H], k/v [B,S,K,H], mask [B,T,S]; query head n uses kv head n // (N/K). No visible key -> mean of v."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b_, t_, n_, _ = q.shape
  s_, k_ = k.shape[1], k.shape[2]
  g = n_ // k_
  out = np.zeros_like(q)
  for b in range(b_):
    for n in range(n_):
      kv = n // g
      for t in range(t_):
        visible = mask[b, t]
        if not visible.any():
          w = np.full(s_, 1.0 / s_)
        else:
          logits = k[b, :, kv] @ q[b, t, n]
          logits = np.where(visible, logits, -np.inf)
          w = np.exp(logits - logits.max())
          w /= w.sum()
        out[b, t, n] = w @ v[b, :, kv]
  return out


def np_prefix_lm_mask(input_mask, ar):
  """openpi make_attn_mask: token i sees j iff cumsum(ar)[j] <= cumsum(ar)[i] and both are valid."""
  c = np.cumsum(ar, axis=1)
  return (c[:, None, :] <= c[:, :, None]) & input_mask[:, None, :] & input_mask[:, :, None]


# ----------------------------------------------------------------------------------------------------------------------
# Norms, RoPE, attention, MLP.


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_rms_norm_matches_numpy(dtype, tol):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 16)) * 3, dtype)
  scale = rng.normal(size=(16,)).astype(np.float32)
  out, gate = gemma.RMSNorm().apply({"params": {"scale": scale}}, x)
  assert gate is None
  assert out.dtype == dtype
  want = np_rms_norm(np.asarray(x, np.float64), scale)
  np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=tol, atol=tol)


def test_adaptive_rms_norm_matches_numpy():
  rng = np.random.default_rng(1)
  b, t, d, c = 2, 3, 8, 5
  x = rng.normal(size=(b, t, d)).astype(np.float32)
  cond = rng.normal(size=(b, c)).astype(np.float32)
  kernel = rng.normal(size=(c, 3 * d)).astype(np.float32) * 0.5
  bias = rng.normal(size=(3 * d,)).astype(np.float32) * 0.5
  out, gate = gemma.RMSNorm().apply({"params": {"Dense_0": {"kernel": kernel, "bias": bias}}}, x, cond)

  mod = cond.astype(np.float64) @ kernel + bias  # [B, 3D]
  scale, shift, want_gate = mod[:, None, :d], mod[:, None, d:2 * d], mod[:, None, 2 * d:]
  want = np_rms_norm(x, 0.0) * (1 + scale) + shift
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gate), np.broadcast_to(want_gate, (b, 1, d)), rtol=1e-5, atol=1e-5)


def test_adaptive_rms_norm_zero_init_is_identity_modulation():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 8)), jnp.float32)
  cond = jnp.ones((2, 4), jnp.float32)
  norm = gemma.RMSNorm()
  params = norm.init(jax.random.key(0), x, cond)
  out, gate = norm.apply(params, x, cond)
  # Zero-init Dense: scale = shift = gate = 0, i.e. plain normalisation and a closed residual gate.
  np.testing.assert_allclose(np.asarray(out), np_rms_norm(x, 0.0), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(gate), 0.0)


def test_rope_matches_complex_rotation():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 6, 3, 16)).astype(np.float32)
  positions = np.array([[0, 1, 2, 3, 4, 5], [0, 0, 1, 7, 30, 99]], np.int32)
  out = gemma.apply_rope(jnp.asarray(x), jnp.asarray(positions))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), np_rope_complex(x, positions), rtol=1e-5, atol=1e-5)
  # Position 0 is the identity.
  np.testing.assert_allclose(np.asarray(out)[:, 0], x[:, 0], rtol=1e-6, atol=1e-6)


def test_rope_preserves_norms_and_depends_on_relative_position():
  rng = np.random.default_rng(4)
  h = 32
  q = rng.normal(size=(h,)).astype(np.float32)
  k = rng.normal(size=(h,)).astype(np.float32)

  def rot(vec, pos):
    return np.asarray(gemma.apply_rope(jnp.asarray(vec)[None, None, None], jnp.asarray([[pos]], jnp.int32)))[0, 0, 0]

  for pos in [0, 1, 17, 250]:
    np.testing.assert_allclose(np.linalg.norm(rot(q, pos)), np.linalg.norm(q), rtol=1e-5)
  # <R(p)q, R(p')k> depends on p - p' only.
  for p_q, p_k in [(5, 2), (9, 9), (3, 11)]:
    ref = rot(q, p_q) @ rot(k, p_k)
    for shift in [1, 13, 64]:
      np.testing.assert_allclose(rot(q, p_q + shift) @ rot(k, p_k + shift), ref, rtol=1e-4, atol=1e-4)
  # ... and does change with the distance (RoPE is not a no-op).
  assert abs(rot(q, 5) @ rot(k, 2) - rot(q, 5) @ rot(k, 4)) > 1e-3


def test_dot_product_attention_gqa_matches_numpy():
  rng = np.random.default_rng(5)
  b, t, s, n, k, h = 2, 4, 6, 4, 2, 8
  q = rng.normal(size=(b, t, n, h)).astype(np.float32)
  key = rng.normal(size=(b, s, k, h)).astype(np.float32)
  v = rng.normal(size=(b, s, k, h)).astype(np.float32)
  mask = rng.random((b, t, s)) > 0.3
  mask[:, :, 0] = True
  mask[0, :, 2] = False  # A key that no query may see.
  mask[1, 3, :] = False  # A query that sees no key (openpi: uniform weights, finite output).
  out = layers.dot_product_attention(jnp.asarray(q), jnp.asarray(key), jnp.asarray(v), jnp.asarray(mask)[:, None],
                                    num_kv_heads=k)
  assert out.shape == (b, t, n, h)
  np.testing.assert_allclose(np.asarray(out), np_attention(q, key, v, mask), rtol=1e-5, atol=1e-5)

  # The fully masked key has no influence on batch element 0.
  v2 = v.copy()
  v2[0, 2] += 100.0
  out2 = layers.dot_product_attention(jnp.asarray(q), jnp.asarray(key), jnp.asarray(v2), jnp.asarray(mask)[:, None],
                                     num_kv_heads=k)
  np.testing.assert_array_equal(np.asarray(out2)[0], np.asarray(out)[0])


def test_dot_product_attention_rejects_bad_mask_shape():
  q = jnp.zeros((1, 2, 2, 4))
  kv = jnp.zeros((1, 3, 1, 4))
  with pytest.raises(ValueError, match="mask"):
    layers.dot_product_attention(q, kv, kv, jnp.ones((1, 1, 2, 2), bool), num_kv_heads=1)


def test_feed_forward_matches_numpy_gelu_tanh():
  rng = np.random.default_rng(6)
  d, f = 8, 24
  x = rng.normal(size=(2, 3, d)).astype(np.float32)
  w_gating = rng.normal(size=(2, d, f)).astype(np.float32) * 0.5
  w_linear = rng.normal(size=(f, d)).astype(np.float32) * 0.5
  out = gemma.FeedForward(features=d, hidden_dim=f).apply(
      {"params": {"gating_einsum": w_gating, "linear": w_linear}}, jnp.asarray(x))
  x64 = x.astype(np.float64)
  want = (np_gelu_tanh(x64 @ w_gating[0]) * (x64 @ w_gating[1])) @ w_linear
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# The two-expert Module.

_VLM = gemma.Config(width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=2, head_dim=8)
_EXPERT = gemma.Config(width=16, depth=2, mlp_dim=48, num_heads=4, num_kv_heads=2, head_dim=8)


def _random_params(module, seed, *args, **kwargs):
  """Random params of the right shapes, without running the (slow to compile) initialisers.

  Norm scales get non-zero offsets too, so that every param matters.
  """
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    std = 0.2 if "scale" in name else 1 / math.sqrt(s.shape[-2])
    return (rng.normal(size=s.shape) * std).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _prefix_suffix_inputs(b=2, tp=7, ts=4):
  rng = np.random.default_rng(7)
  prefix = rng.normal(size=(b, tp, _VLM.width)).astype(np.float32)
  suffix = rng.normal(size=(b, ts, _EXPERT.width)).astype(np.float32)
  prefix_valid = np.ones((b, tp), bool)
  prefix_valid[1, -2:] = False  # Padding in the prefix of the second example.
  input_mask = np.concatenate([prefix_valid, np.ones((b, ts), bool)], axis=1)
  ar = np.zeros((b, tp + ts), bool)
  ar[:, tp] = True  # Prefix: block 0 (bidirectional). Suffix: block 1 (sees the prefix and itself).
  mask = np_prefix_lm_mask(input_mask, ar)
  positions = (np.cumsum(input_mask, axis=1) - 1).astype(np.int32)
  return prefix, suffix, mask, positions


def test_kv_cache_path_equals_joint_path():
  tp = 7
  prefix, suffix, mask, positions = _prefix_suffix_inputs(tp=tp)
  llm = gemma.Module(configs=[_VLM, _EXPERT], embed_dtype="float32", vocab_size=16)
  params = _random_params(llm, 1, [prefix, suffix], positions=positions, mask=mask)
  apply = jax.jit(lambda p, xs, pos, m, cache: llm.apply(p, xs, positions=pos, mask=m, kv_cache=cache))

  (full_prefix, full_suffix), _ = apply(params, [prefix, suffix], positions, mask, None)
  (cached_prefix, none_out), kv_cache = apply(params, [prefix, None], positions[:, :tp], mask[:, :tp, :tp], None)
  assert none_out is None
  k, v = kv_cache
  assert k.shape == v.shape == (_VLM.depth, 2, tp, _VLM.num_kv_heads, _VLM.head_dim)
  (none_out, cached_suffix), _ = apply(params, [None, suffix], positions[:, tp:], mask[:, tp:, :], kv_cache)
  assert none_out is None
  assert cached_suffix.shape == suffix.shape
  np.testing.assert_allclose(np.asarray(cached_suffix), np.asarray(full_suffix), rtol=1e-5, atol=1e-5)
  # The prefix never sees the suffix, so its valid tokens agree too. (Padded prefix tokens see no key at all; their
  # uniform attention spans whatever keys a call has, so they legitimately differ.)
  valid = mask[:, :tp].any(-1)
  np.testing.assert_allclose(np.asarray(cached_prefix)[valid], np.asarray(full_prefix)[valid], rtol=1e-5, atol=1e-5)
  # Sanity: the suffix does read the prefix (changing the prefix changes the suffix output).
  (_, other_suffix), _ = apply(params, [prefix + 1.0, suffix], positions, mask, None)
  assert np.abs(np.asarray(other_suffix) - np.asarray(full_suffix)).max() > 1e-3


def test_remat_none_and_nothing_saveable_agree():
  prefix, suffix, mask, positions = _prefix_suffix_inputs()
  llms = {p: gemma.Module(configs=[_VLM, _EXPERT], embed_dtype="float32", vocab_size=16, remat_policy=p)
          for p in ("none", "nothing_saveable")}
  params = _random_params(llms["none"], 2, [prefix, suffix], positions=positions, mask=mask)

  def loss_fn(llm):
    def loss(p):
      (a, b), _ = llm.apply(p, [prefix, suffix], positions=positions, mask=mask)
      return jnp.sum(a**2) + jnp.sum(jnp.sin(b))
    return loss

  results = {name: jax.jit(jax.value_and_grad(loss_fn(llm)))(params) for name, llm in llms.items()}
  (l0, g0), (l1, g1) = results["none"], results["nothing_saveable"]
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  flat0, flat1 = tree_lib.flatten(g0["params"]), tree_lib.flatten(g1["params"])
  assert flat0.keys() == flat1.keys()
  for key in flat0:
    np.testing.assert_allclose(np.asarray(flat1[key]), np.asarray(flat0[key]), rtol=1e-5, atol=1e-6, err_msg=key)


# openpi reference/openpi.md §2, `PaliGemma/llm/...` (VLM names + `_1` for the action expert).
OPENPI_LLM_KEYS = {
    "embedder/input_embedding",
    "layers/attn/q_einsum/w", "layers/attn/kv_einsum/w", "layers/attn/attn_vec_einsum/w",
    "layers/attn/q_einsum_1/w", "layers/attn/kv_einsum_1/w", "layers/attn/attn_vec_einsum_1/w",
    "layers/mlp/gating_einsum", "layers/mlp/linear", "layers/mlp_1/gating_einsum", "layers/mlp_1/linear",
    "layers/pre_attention_norm/scale", "layers/pre_ffw_norm/scale",
    "layers/pre_attention_norm_1/scale", "layers/pre_ffw_norm_1/scale",
    "final_norm/scale", "final_norm_1/scale",
}


def _init_llm_shapes(configs, vocab_size=gemma.PALIGEMMA_VOCAB_SIZE):
  """Abstract init (no allocation) touching the embedder and both experts."""
  llm = gemma.Module(configs=configs, embed_dtype="float32", vocab_size=vocab_size)

  def init(module, tokens, suffix, positions, mask):
    return module([module.embed(tokens), suffix], positions=positions, mask=mask)

  tokens = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  suffix = jax.ShapeDtypeStruct((1, 1, configs[1].width), jnp.float32)
  positions = jax.ShapeDtypeStruct((1, 3), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, 3, 3), jnp.bool_)
  variables = jax.eval_shape(lambda *a: llm.init(jax.random.key(0), *a, method=init), tokens, suffix, positions, mask)
  return tree_lib.flatten(variables["params"])


def test_two_expert_param_names_are_openpi_names():
  vlm = gemma.Config(width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=1, head_dim=8)
  expert = gemma.Config(width=16, depth=2, mlp_dim=32, num_heads=4, num_kv_heads=1, head_dim=8)
  flat = _init_llm_shapes([vlm, expert], vocab_size=16)
  assert set(flat) == OPENPI_LLM_KEYS


# Full-size shapes from reference/openpi.md §2 (gemma_2b + gemma_300m, SigLIP So400m/14 with head to 2048).
FULL_LLM_SHAPES = {
    "embedder/input_embedding": (257152, 2048),
    "layers/attn/q_einsum/w": (18, 8, 2048, 256),
    "layers/attn/kv_einsum/w": (18, 2, 1, 2048, 256),
    "layers/attn/attn_vec_einsum/w": (18, 8, 256, 2048),
    "layers/attn/q_einsum_1/w": (18, 8, 1024, 256),
    "layers/attn/kv_einsum_1/w": (18, 2, 1, 1024, 256),
    "layers/attn/attn_vec_einsum_1/w": (18, 8, 256, 1024),
    "layers/mlp/gating_einsum": (18, 2, 2048, 16384),
    "layers/mlp/linear": (18, 16384, 2048),
    "layers/mlp_1/gating_einsum": (18, 2, 1024, 4096),
    "layers/mlp_1/linear": (18, 4096, 1024),
    "layers/pre_attention_norm/scale": (18, 2048),
    "layers/pre_ffw_norm/scale": (18, 2048),
    "layers/pre_attention_norm_1/scale": (18, 1024),
    "layers/pre_ffw_norm_1/scale": (18, 1024),
    "final_norm/scale": (2048,),
    "final_norm_1/scale": (1024,),
}
_ENC = "Transformer/encoderblock/"
_MHA = _ENC + "MultiHeadDotProductAttention_0/"
FULL_IMG_SHAPES = {
    "embedding/kernel": (14, 14, 3, 1152), "embedding/bias": (1152,),
    "pos_embedding": (1, 256, 1152),
    _ENC + "LayerNorm_0/scale": (27, 1152), _ENC + "LayerNorm_0/bias": (27, 1152),
    _ENC + "LayerNorm_1/scale": (27, 1152), _ENC + "LayerNorm_1/bias": (27, 1152),
    _ENC + "MlpBlock_0/Dense_0/kernel": (27, 1152, 4304), _ENC + "MlpBlock_0/Dense_0/bias": (27, 4304),
    _ENC + "MlpBlock_0/Dense_1/kernel": (27, 4304, 1152), _ENC + "MlpBlock_0/Dense_1/bias": (27, 1152),
    **{_MHA + f"{n}/kernel": (27, 1152, 16, 72) for n in ("query", "key", "value")},
    **{_MHA + f"{n}/bias": (27, 16, 72) for n in ("query", "key", "value")},
    _MHA + "out/kernel": (27, 16, 72, 1152), _MHA + "out/bias": (27, 1152),
    "Transformer/encoder_norm/scale": (1152,), "Transformer/encoder_norm/bias": (1152,),
    "head/kernel": (1152, 2048), "head/bias": (2048,),
}


def _init_img_shapes(num_classes, variant="So400m/14"):
  img = siglip.Module(siglip.get_config(variant), num_classes=num_classes)
  image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  return tree_lib.flatten(jax.eval_shape(lambda x: img.init(jax.random.key(0), x), image)["params"])


def _count(flat):
  return sum(math.prod(v.shape) for v in flat.values())


@pytest.fixture(scope="module")
def full_size_shapes():
  llm = _init_llm_shapes([gemma.get_config("gemma_2b"), gemma.get_config("gemma_300m")])
  img = _init_img_shapes(num_classes=2048)
  return llm, img


def test_full_size_llm_shapes_match_openpi(full_size_shapes):
  llm, _ = full_size_shapes
  assert {k: tuple(v.shape) for k, v in llm.items()} == FULL_LLM_SHAPES
  assert all(v.dtype == jnp.float32 for v in llm.values())


def test_full_size_siglip_shapes_match_openpi(full_size_shapes):
  _, img = full_size_shapes
  assert {k: tuple(v.shape) for k, v in img.items()} == FULL_IMG_SHAPES


def test_full_size_param_count_matches_openpi_pi0(full_size_shapes):
  llm, img = full_size_shapes
  pi0_total = 3_238_048_528  # openpi pi0 gemma_2b + gemma_300m (reference/openpi.md §2), 50 leaves.
  projections = {  # pi0-only heads outside PaliGemma/, expert width 1024, action dim 32.
      "state_proj": 32 * 1024 + 1024,
      "action_in_proj": 32 * 1024 + 1024,
      "action_time_mlp_in": 2048 * 1024 + 1024,
      "action_time_mlp_out": 1024 * 1024 + 1024,
      "action_out_proj": 1024 * 32 + 32,
  }
  assert _count(llm) + _count(img) == pi0_total - sum(projections.values())
  assert len(llm) + len(img) + 2 * len(projections) == 50


def test_dummy_param_count_matches_openpi_pi0_dummy():
  # openpi pi0 dummy/dummy: 429,337,808 params, with the full So400m SigLIP (head to 64) and width-64 experts.
  llm = _init_llm_shapes([gemma.get_config("dummy"), gemma.get_config("dummy")])
  img = _init_img_shapes(num_classes=64)
  w = 64
  projections = (32 * w + w) + (32 * w + w) + (2 * w * w + w) + (w * w + w) + (w * 32 + 32)
  assert _count(llm) + _count(img) == 429_337_808 - projections


# ----------------------------------------------------------------------------------------------------------------------
# Config errors.


def test_unknown_variant_raises_naming_it():
  with pytest.raises(ValueError, match="gemma_7b"):
    gemma.get_config("gemma_7b")


def test_unknown_size_key_raises_naming_it():
  with pytest.raises(ValueError, match="num_layers"):
    gemma.get_config(dict(width=8, depth=1, mlp_dim=8, num_heads=1, num_kv_heads=1, head_dim=8, num_layers=3))


def test_unknown_remat_policy_raises_naming_it():
  prefix, suffix, mask, positions = _prefix_suffix_inputs()
  llm = gemma.Module(configs=[_VLM, _EXPERT], embed_dtype="float32", vocab_size=16, remat_policy="save_everything")
  with pytest.raises(ValueError, match="save_everything"):
    jax.eval_shape(lambda: llm.init(jax.random.key(0), [prefix, suffix], positions=positions, mask=mask))


def test_experts_with_different_depths_raise():
  prefix, suffix, mask, positions = _prefix_suffix_inputs()
  shallow = gemma.Config(width=16, depth=1, mlp_dim=48, num_heads=4, num_kv_heads=2, head_dim=8)
  llm = gemma.Module(configs=[_VLM, shallow], embed_dtype="float32", vocab_size=16)
  with pytest.raises(ValueError, match="depth"):
    jax.eval_shape(lambda: llm.init(jax.random.key(0), [prefix, suffix], positions=positions, mask=mask))
