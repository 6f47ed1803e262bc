"""Image preprocessing: resize-with-pad against openpi-client's implementation, augmentation invariants."""

import jax
import jax.numpy as jnp
import numpy as np
from openpi_client import image_tools as client_image_tools

from apt_jax.models import image_tools
from apt_jax.models import model as _model


def test_resize_with_pad_matches_openpi_client():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (2, 100, 50, 3), np.uint8)
  ours = np.asarray(image_tools.resize_with_pad(img, 224, 224))
  theirs = client_image_tools.resize_with_pad(img, 224, 224)  # PIL bilinear, as openpi's data side
  assert ours.shape == theirs.shape == (2, 224, 224, 3) and ours.dtype == np.uint8
  # 100x50 -> 224x112, padded left/right by 56 columns of zeros.
  np.testing.assert_array_equal(ours[:, :, :56], 0)
  np.testing.assert_array_equal(ours[:, :, 168:], 0)
  np.testing.assert_array_equal(theirs[:, :, :56], 0)
  # Bilinear kernels differ slightly between PIL and jax.image.resize: compare the content loosely.
  assert np.abs(ours[:, :, 56:168].astype(int) - theirs[:, :, 56:168].astype(int)).mean() < 12


def test_resize_with_pad_float_pads_with_minus_one():
  img = np.zeros((1, 10, 20, 3), np.float32)
  out = np.asarray(image_tools.resize_with_pad(img, 224, 224))
  np.testing.assert_array_equal(out[:, :56], -1.0)
  np.testing.assert_array_equal(out[:, 56:168], 0.0)


def test_crop_resize_rotate_is_identity_without_crop_or_rotation():
  img = jax.random.uniform(jax.random.key(0), (32, 32, 3))
  out = image_tools.random_crop_resize_rotate(jax.random.key(1), img, crop_frac=1.0, max_degrees=0.0)
  np.testing.assert_allclose(out, img, atol=1e-5)


def test_augment_keeps_range_and_wrist_geometry():
  rng = jax.random.key(0)
  img = jax.random.uniform(rng, (2, 224, 224, 3), minval=-1, maxval=1)
  for wrist in (False, True):
    out = image_tools.augment(jax.random.key(1), img, wrist=wrist)
    assert out.shape == img.shape and float(out.min()) >= -1 and float(out.max()) <= 1
    assert not np.allclose(out, img)
  # Wrist cameras get colour jitter only: a constant image stays constant (no crop/rotation edges).
  const = jnp.full((1, 64, 64, 3), 0.2)
  out = image_tools.augment(jax.random.key(2), const, wrist=True)
  np.testing.assert_allclose(out, np.broadcast_to(out[:, :1, :1], out.shape), atol=1e-6)


def test_observation_from_dict_maps_uint8_to_minus_one_one():
  obs = _model.Observation.from_dict({"image": {"base_0_rgb": np.array([[[[0, 255, 51]]]], np.uint8)},
                                      "state": np.zeros((1, 2), np.float32)})
  np.testing.assert_allclose(obs.images["base_0_rgb"][0, 0, 0], [-1.0, 1.0, 51 / 255 * 2 - 1], atol=1e-6)
