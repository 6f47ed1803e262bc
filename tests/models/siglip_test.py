"""SigLIP (apt_jax.models.siglip) against openpi's outputs on the tiny parity fixture, and its openpi shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apt_jax import checkpoints
from apt_jax import tree as tree_lib
from apt_jax.models import siglip

CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
# Fixture sizes (config.json, tiny_patches.siglip); the head projects to the tiny VLM width 256.
TINY = siglip.Config(width=64, depth=2, mlp_dim=128, num_heads=4)


@pytest.fixture(scope="module")
def img_params(openpi_fixture_dir):
  return checkpoints.restore_params(openpi_fixture_dir / "checkpoint" / "params")["PaliGemma"]["img"]


@pytest.mark.parametrize("dtype_mm,prefix,atol", [("float32", "f32", 1e-4), ("bfloat16", "bf16", 5e-2)])
def test_siglip_matches_openpi_fixture(img_params, fixture_npz, dtype_mm, prefix, atol):
  model = siglip.Module(TINY, num_classes=256, dtype_mm=dtype_mm)
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
  for cam in CAMERAS:
    image = fixture_npz[f"in/image/{cam}"]
    out = apply(img_params, image)
    assert out.dtype == jnp.dtype(dtype_mm)
    want = fixture_npz[f"{prefix}/internal/img_tokens/{cam}"]
    assert out.shape == want.shape == (image.shape[0], 256, 256)
    np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=atol, rtol=0, err_msg=cam)


def test_dummy_variant_gives_256_tokens_for_224_images():
  model = siglip.Module(siglip.get_config("dummy"), num_classes=48)
  image = jax.ShapeDtypeStruct((3, 224, 224, 3), jnp.float32)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), image)
  out = jax.eval_shape(model.apply, params, image)
  assert out.shape == (3, (224 // 14) ** 2, 48)


def test_so400m_shapes_match_openpi():
  model = siglip.Module(siglip.get_config("So400m/14"), num_classes=2048, dtype_mm="bfloat16")
  image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), image)
  flat = {k: tuple(v.shape) for k, v in tree_lib.flatten(params["params"]).items()}
  mha = "Transformer/encoderblock/MultiHeadDotProductAttention_0/"
  # reference/openpi.md §2 (a selection; gemma_test checks every key).
  assert flat["embedding/kernel"] == (14, 14, 3, 1152)
  assert flat["pos_embedding"] == (1, 256, 1152)
  assert flat[mha + "query/kernel"] == (27, 1152, 16, 72)
  assert flat[mha + "out/kernel"] == (27, 16, 72, 1152)
  assert flat["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"] == (27, 1152, 4304)
  assert flat["head/kernel"] == (1152, 2048)
  # Params stay float32 with a bfloat16 compute dtype; tokens come out in the compute dtype.
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(params))
  out = jax.eval_shape(model.apply, params, image)
  assert (out.shape, out.dtype) == ((1, 256, 2048), jnp.bfloat16)


def test_unknown_variant_and_size_key_raise_naming_them():
  with pytest.raises(ValueError, match="So400m/16"):
    siglip.get_config("So400m/16")
  with pytest.raises(ValueError, match="hidden_size"):
    siglip.get_config(dict(width=8, depth=1, mlp_dim=16, num_heads=2, hidden_size=8))


def test_posemb_sincos2d_matches_hand_values():
  # width 8: omega = (1, 1e-4); token (row r, col c) -> sin(c), sin(1e-4 c), cos(c), cos(1e-4 c), then the same for r.
  pe = siglip.posemb_sincos2d(2, 3, 8)
  assert pe.shape == (1, 6, 8)
  r, c = 1, 2                                       # row-major token index 1 * 3 + 2 = 5
  w = np.array([1.0, 1e-4])
  expected = np.concatenate([np.sin(c * w), np.cos(c * w), np.sin(r * w), np.cos(r * w)])
  np.testing.assert_allclose(pe[0, 5], expected, rtol=1e-6)
  with pytest.raises(ValueError, match="width 6"):
    siglip.posemb_sincos2d(2, 2, 6)
