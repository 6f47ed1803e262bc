"""Step samples: action chunks at episode ends, delta actions, camera mapping, resize-with-pad, prompt tokens."""

from __future__ import annotations

import numpy as np
import pytest

NAME = "chunk_ds"


@pytest.fixture(scope="module")
def chunk_dir(tmp_path_factory, rb, steps_fn):
  d = tmp_path_factory.mktemp("chunk")
  episodes = [rb.as_episode(steps_fn(3, episode=0), "ep0.hdf5"), rb.as_episode(steps_fn(2, episode=1), "ep1.hdf5")]
  rb.write_episodes(d, NAME, episodes, rb.libero_features(16))
  return d


def _pad(rows, width=32):
  rows = np.asarray(rows, np.float32)
  return np.concatenate([rows, np.zeros(rows.shape[:-1] + (width - rows.shape[-1],), np.float32)], -1)


def _all(loader, n):
  batches = [next(loader) for _ in range(n)]
  return {k: np.concatenate([b[k] for b in batches]) for k in ("actions", "actions_mask", "state", "episode_index",
                                                                "step_index")}


def test_chunks_at_episode_end_match_hand_built(chunk_dir, config_fn, loader_fn):
  loader = loader_fn(config_fn(chunk_dir, NAME, return_metadata=True), batch_size=5, action_horizon=4)
  got = _all(loader, 1)
  a = lambda e, t: [10 * (e + 1) + t + j / 10 for j in range(7)]  # the action written at step t of episode e
  expected_actions = _pad([
      [a(0, 0), a(0, 1), a(0, 2), a(0, 2)],  # episode 0 (T=3), t=0: one repeat of the last action
      [a(0, 1), a(0, 2), a(0, 2), a(0, 2)],
      [a(0, 2), a(0, 2), a(0, 2), a(0, 2)],
      [a(1, 0), a(1, 1), a(1, 1), a(1, 1)],  # episode 1 (T=2)
      [a(1, 1), a(1, 1), a(1, 1), a(1, 1)],
  ])
  expected_mask = np.array([
      [1, 1, 1, 0],
      [1, 1, 0, 0],
      [1, 0, 0, 0],
      [1, 1, 0, 0],
      [1, 0, 0, 0],
  ], bool)
  np.testing.assert_array_equal(got["episode_index"], [0, 0, 0, 1, 1])
  np.testing.assert_array_equal(got["step_index"], [0, 1, 2, 0, 1])
  np.testing.assert_allclose(got["actions"], expected_actions, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(got["actions_mask"], expected_mask)
  s = lambda t: [-(t + 1) - j / 100 for j in range(8)]
  np.testing.assert_allclose(got["state"], _pad([s(0), s(1), s(2), s(0), s(1)]), atol=1e-6)


def test_delta_actions_subtract_current_state_on_first_k_dims(chunk_dir, config_fn, loader_fn):
  loader = loader_fn(config_fn(chunk_dir, NAME, delta_action_dims=2, return_metadata=True), batch_size=5,
                     action_horizon=2)
  got = _all(loader, 1)
  # Episode 0, t=2 (last step): a = [12.0, 12.1, ..., 12.6], state = [-3, -3.01, ...]; both chunk entries repeat a.
  expected = np.array([12.0 + 3.0, 12.1 + 3.01, 12.2, 12.3, 12.4, 12.5, 12.6], np.float32)
  np.testing.assert_allclose(got["actions"][2, 0, :7], expected, atol=1e-5)
  np.testing.assert_allclose(got["actions"][2, 1, :7], expected, atol=1e-5)
  assert np.all(got["actions"][:, :, 7:] == 0)


def test_cameras_masks_and_prompt(chunk_dir, config_fn, loader_fn, tokenizer_path):
  from apt_jax.models.tokenizer import PaligemmaTokenizer
  batch = next(loader_fn(config_fn(chunk_dir, NAME), batch_size=3))
  assert batch["image"]["base_0_rgb"].shape == (3, 224, 224, 3)
  assert batch["image"]["base_0_rgb"].dtype == np.uint8
  # Constant images survive bilinear resizing (16x16 -> 224x224 needs no padding) up to jpeg rounding.
  for t in range(3):
    assert abs(int(np.median(batch["image"]["base_0_rgb"][t])) - 40 * (t + 1)) <= 2
  assert abs(int(np.median(batch["image"]["left_wrist_0_rgb"])) - 200) <= 2
  assert not batch["image"]["right_wrist_0_rgb"].any()
  np.testing.assert_array_equal(batch["image_mask"]["base_0_rgb"], [True] * 3)
  np.testing.assert_array_equal(batch["image_mask"]["left_wrist_0_rgb"], [True] * 3)
  np.testing.assert_array_equal(batch["image_mask"]["right_wrist_0_rgb"], [False] * 3)
  tokens, mask = PaligemmaTokenizer(tokenizer_path, max_len=48).tokenize("put the bowl on the plate")
  np.testing.assert_array_equal(batch["tokenized_prompt"], np.stack([tokens] * 3))
  np.testing.assert_array_equal(batch["tokenized_prompt_mask"], np.stack([mask] * 3))
  assert batch["tokenized_prompt"].dtype == np.int32
  np.testing.assert_array_equal(batch["action_pad_mask"], batch["actions_mask"])


def test_resize_with_pad_matches_openpi_client():
  from openpi_client import image_tools

  from apt_jax.data import transforms
  rng = np.random.default_rng(0)
  for shape in [(180, 320, 3), (256, 256, 3), (300, 120, 3)]:
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(transforms.resize_with_pad(image, 224, 224),
                                  image_tools.resize_with_pad(image, 224, 224))


def test_augmentation_is_seeded_and_keeps_shape():
  from apt_jax.data import transforms
  image = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
  a = transforms.augment_image(image, np.random.default_rng(5), wrist=False)
  b = transforms.augment_image(image, np.random.default_rng(5), wrist=False)
  c = transforms.augment_image(image, np.random.default_rng(6), wrist=True)
  assert a.shape == c.shape == image.shape and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, image) and not np.array_equal(a, c)


@pytest.mark.parametrize("use_quantiles", [False, True])
def test_loader_normalizes_before_padding(chunk_dir, config_fn, loader_fn, tmp_path, use_quantiles):
  from apt_jax.data import normalize as N
  st = N.NormStats(mean=np.full(8, -2.0), std=np.full(8, 0.5), q01=np.full(8, -4.0), q99=np.full(8, 0.0))
  at = N.NormStats(mean=np.full(7, 10.0), std=np.full(7, 2.0), q01=np.full(7, 9.0), q99=np.full(7, 13.0))
  path = N.save(tmp_path, {"state": st, "actions": at})
  cfg = config_fn(chunk_dir, NAME, norm_stats_path=str(path), use_quantile_norm=use_quantiles)
  b = next(loader_fn(cfg, batch_size=1, action_horizon=2))  # episode 0, t=0
  s0 = np.array([-1 - j / 100 for j in range(8)])
  a = np.array([[10 + j / 10 for j in range(7)], [11 + j / 10 for j in range(7)]])
  if use_quantiles:
    want_s, want_a = (s0 + 4) / (4 + 1e-6) * 2 - 1, (a - 9) / (4 + 1e-6) * 2 - 1
  else:
    want_s, want_a = (s0 + 2) / (0.5 + 1e-6), (a - 10) / (2 + 1e-6)
  np.testing.assert_allclose(b["state"][0], _pad(want_s), atol=1e-5)
  np.testing.assert_allclose(b["actions"][0], _pad(want_a), atol=1e-5)


def test_pi05_loader_puts_the_normalized_state_in_the_prompt(chunk_dir, config_fn, loader_fn, tmp_path,
                                                             tokenizer_path):
  """openpi's π0.5 data path: quantile-normalized state (8 dims, before padding) in 256 bins in the prompt."""
  from apt_jax.data import normalize as N
  from apt_jax.models.tokenizer import PaligemmaTokenizer
  st = N.NormStats(mean=np.zeros(8), std=np.ones(8), q01=np.full(8, -4.0), q99=np.full(8, 0.0))
  at = N.NormStats(mean=np.zeros(7), std=np.ones(7), q01=np.full(7, 0.0), q99=np.full(7, 1.0))
  path = N.save(tmp_path, {"state": st, "actions": at})
  cfg = config_fn(chunk_dir, NAME, norm_stats_path=str(path), use_quantile_norm=True)
  b = next(loader_fn(cfg, batch_size=3, max_token_len=200, discrete_state_input=True))
  tok = PaligemmaTokenizer(tokenizer_path, max_len=200)
  for t in range(3):
    # state[t, j] = -(t + 1) - j/100 -> x = (s + 4) / (4 + 1e-6) * 2 - 1 in [-1, 1): bin floor((x + 1) * 128).
    x = [(3 - t - j / 100) / (4 + 1e-6) * 2 - 1 for j in range(8)]
    bins = [int(np.floor((v + 1) * 128)) for v in x]
    text = f"Task: put the bowl on the plate, State: {' '.join(map(str, bins))};\nAction: "
    want = [tok.bos_id] + tok.encode(text)
    np.testing.assert_array_equal(b["tokenized_prompt"][t, :len(want)], want, err_msg=f"step {t}")
    np.testing.assert_array_equal(b["tokenized_prompt_mask"][t], np.arange(200) < len(want))


def test_pi05_prompt_longer_than_max_token_len_is_an_error_naming_the_episode(chunk_dir, config_fn, loader_fn):
  from apt_jax.data import rlds
  with pytest.raises(rlds.DataError, match=r"episode \d+ .*field prompt with the state at step \d+ is longer"):
    next(loader_fn(config_fn(chunk_dir, NAME), batch_size=1, max_token_len=24, discrete_state_input=True))
