"""Shared layers: each head's sinusoidal embedding against its reference's formula (NumPy, float64), and the
attention core's options against a NumPy softmax."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from apt_jax.models import apt_expert
from apt_jax.models import gr00t
from apt_jax.models import layers
from apt_jax.models import pi0

D = 16  # embedding width: 8 frequencies
J = np.arange(D // 2)


def sin_cos(x, freqs, cos_first=False):
  arg = np.asarray(x, np.float64)[..., None] * freqs
  parts = [np.sin(arg), np.cos(arg)]
  return np.concatenate(parts[::-1] if cos_first else parts, axis=-1)


def test_pi0_time_embedding_is_openpis():
  """openpi `posemb_sincos`: periods 4e-3 · 1000^(j/7), angle 2π·t/period, [sin, cos]."""
  t = np.array([0.001, 0.25, 0.5, 1.0], np.float32)
  want = sin_cos(t, 2 * np.pi / (4e-3 * 1000.0 ** (J / (D // 2 - 1))))
  np.testing.assert_allclose(pi0.posemb_sincos(jnp.asarray(t), D, 4e-3, 4.0), want, atol=2e-4)


def test_gr00t_timestep_embedding_is_diffusers():
  """diffusers `get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=1)`: 10000^(−j/7), [cos, sin]."""
  bucket = np.array([0.0, 1.0, 250.0, 999.0], np.float32)
  want = sin_cos(bucket, np.exp(-math.log(10000.0) * J / (D // 2 - 1)), cos_first=True)
  np.testing.assert_allclose(gr00t.timestep_proj(jnp.asarray(bucket), D), want, atol=2e-4)


def test_gr00t_action_encoder_embedding_is_gr00ts():
  """GR00T `SinusoidalPositionalEncoding`: 10000^(−j/8) (no shift), [sin, cos]."""
  bucket = np.array([[0.0, 1.0], [250.0, 999.0]], np.float32)
  want = sin_cos(bucket, np.exp(-math.log(10000.0) * J / (D // 2)))
  np.testing.assert_allclose(gr00t.sinusoidal_encoding(jnp.asarray(bucket), D), want, atol=2e-4)


@pytest.mark.parametrize("temperature", [1000.0, 10000.0])
def test_apt_expert_embedding_is_bayesvlas(temperature):
  """BayesVLA `SinusoidalPosEmb`: temperature^(−j/7), [sin, cos]."""
  x = np.array([0.0, 3.0, 31.0, 99.0], np.float32)
  want = sin_cos(x, np.exp(-math.log(temperature) * J / (D // 2 - 1)))
  np.testing.assert_allclose(apt_expert.sinusoidal_pos_emb(jnp.asarray(x), D, temperature), want, atol=2e-4)


def np_softmax_attention(q, k, v, mask, scale):
  """q [B, T, N, H], k/v [B, S, N, H] (one kv head per query head), mask [B, T, S]; a row with no key gives 0."""
  logits = np.einsum("btnh,bsnh->bnts", q.astype(np.float64), k) * scale
  w = np.exp(logits - logits.max(-1, keepdims=True)) * mask[:, None]
  w = w / np.maximum(w.sum(-1, keepdims=True), 1e-300)
  return np.einsum("bnts,bsnh->btnh", w, v)


def test_attention_core_scales_logits_and_zeroes_rows_without_keys():
  """diffusers' attention (GR00T): unscaled q, logits · H^-½; a query that sees nothing reads nothing."""
  rng = np.random.default_rng(0)
  b, t, s, n, h = 2, 3, 5, 2, 4
  q, k, v = (rng.normal(size=shape).astype(np.float32) for shape in [(b, t, n, h), (b, s, n, h), (b, s, n, h)])
  mask = rng.random((b, t, s)) > 0.4
  mask[0, 1] = False
  mask[1, 0] = True
  out = layers.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask)[:, None], n,
                                     logits_scale=h**-0.5, zero_empty_rows=True)
  np.testing.assert_allclose(out, np_softmax_attention(q, k, v, mask, h**-0.5), rtol=1e-5, atol=1e-5)
  assert not np.any(np.asarray(out)[0, 1])
