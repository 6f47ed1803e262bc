"""Policy: openpi's input/output transforms around sample_actions, env adapters, checkpoint loading."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apt_jax import envs
from apt_jax import policy as _policy
from apt_jax import policy_config as _policy_config
from apt_jax.data import normalize
from apt_jax.data import transforms as data_transforms
from apt_jax.models.model import IMAGE_KEYS
from apt_jax.testing import ASSET_ID
from tests.serving.conftest import clone


def test_infer_composes_openpi_transforms(tiny_policy, tiny_ckpt, rng):
  """actions = crop7(unnormalize(sample(normalize+pad(state), resized images, tokens)) + state on dims 0..5)."""
  pol = clone(tiny_policy, seed=5)
  cfg = pol.model.config
  obs = pol.transforms.env.example(rng, image_shape=(256, 320, 3), prompt="pick up the red block")
  out = pol.infer(obs)
  assert out["actions"].shape == (cfg.action_horizon, 7) and out["actions"].dtype == np.float32
  assert set(out) == {"actions", "policy_timing"} and out["policy_timing"]["infer_ms"] > 0

  # The same by hand, through the same jitted model call with the policy's first rng (split of key(seed)).
  stats = normalize.load(tiny_ckpt / "assets" / ASSET_ID)
  state = np.asarray(obs["observation/state"], np.float32)
  tokens, tmask = pol.transforms.tokenizer.tokenize("pick up the red block")
  images = {"base_0_rgb": data_transforms.resize_with_pad(obs["observation/image"], 224, 224),
            "left_wrist_0_rgb": data_transforms.resize_with_pad(obs["observation/wrist_image"], 224, 224),
            "right_wrist_0_rgb": np.zeros((224, 224, 3), np.uint8)}
  norm_state = (state - stats["state"].mean) / (stats["state"].std + 1e-6)
  data = {
      "image": {k: v[None] for k, v in images.items()},
      "image_mask": {"base_0_rgb": np.array([True]), "left_wrist_0_rgb": np.array([True]),
                     "right_wrist_0_rgb": np.array([False])},
      "state": np.pad(norm_state, (0, cfg.action_dim - 8))[None].astype(np.float32),
      "tokenized_prompt": tokens[None], "tokenized_prompt_mask": tmask[None]}
  _, key = jax.random.split(jax.random.key(5))
  raw = np.asarray(_policy.sample_actions_jit(pol.model, key, data, None, num_steps=10))[0]
  want = raw[:, :7] * (stats["actions"].std + 1e-6) + stats["actions"].mean
  want[:, :6] += state[:6]
  np.testing.assert_allclose(out["actions"], want, atol=1e-5, rtol=1e-5)


def test_noise_argument(tiny_policy, rng):
  obs = tiny_policy.transforms.env.example(rng)
  noise = rng.standard_normal((4, 32)).astype(np.float32)
  a = clone(tiny_policy, 1).infer(obs, noise=noise)["actions"]
  np.testing.assert_array_equal(a, clone(tiny_policy, 2).infer(obs, noise=noise)["actions"])


def test_loads_bf16_params_and_metadata(tiny_policy):
  leaves = jax.tree.leaves(tiny_policy.model.params)
  assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}
  m = tiny_policy.metadata
  assert m["head"] == "pi0" and m["apt_stage"] == "none" and m["env"] == "libero"
  assert (m["action_horizon"], m["action_dim"], m["model_action_dim"]) == (4, 7, 32)
  assert m["norm_stats"] == "physical-intelligence/libero" and m["delta_action_dims"] == 6


def test_same_seed_same_actions_and_rng_advances(tiny_policy, rng):
  obs = tiny_policy.transforms.env.example(rng)
  a, b = clone(tiny_policy, 3), clone(tiny_policy, 3)
  first = a.infer(obs)["actions"]
  np.testing.assert_array_equal(first, b.infer(obs)["actions"])
  assert not np.array_equal(first, a.infer(obs)["actions"])


def test_images_any_size_float_and_chw_are_accepted(tiny_policy, rng):
  obs = tiny_policy.transforms.env.example(rng, image_shape=(120, 160, 3))
  data, _ = tiny_policy.prepare(obs)
  assert all(v.shape == (1, 224, 224, 3) and v.dtype == np.uint8 for v in data["image"].values())
  # openpi's _parse_image: float [0, 1] -> uint8 via (255 * x).astype(uint8); (3, H, W) -> (H, W, 3).
  img = obs["observation/image"]
  as_float_chw = dict(obs, **{"observation/image": np.transpose(img.astype(np.float32) / 255.0, (2, 0, 1))})
  data2, _ = tiny_policy.prepare(as_float_chw)
  parsed = (255 * (img.astype(np.float32) / 255.0)).astype(np.uint8)
  np.testing.assert_array_equal(data2["image"]["base_0_rgb"][0], data_transforms.resize_with_pad(parsed, 224, 224))
  assert data["image_mask"]["right_wrist_0_rgb"].tolist() == [False]
  # The model's own float convention, [-1, 1] (negative values): back to uint8 by (x + 1) * 127.5.
  signed = img.astype(np.float32) / 127.5 - 1.0
  data3, _ = tiny_policy.prepare(dict(obs, **{"observation/image": signed}))
  np.testing.assert_array_equal(data3["image"]["base_0_rgb"][0], data_transforms.resize_with_pad(img, 224, 224))


@pytest.mark.parametrize("mutate, field", [
    (lambda o: o.pop("observation/wrist_image"), "observation/wrist_image"),
    (lambda o: o.pop("prompt"), "prompt"),
    (lambda o: o.__setitem__("observation/image", np.zeros((224, 224, 4), np.uint8)), "observation/image"),
    (lambda o: o.__setitem__("observation/image", np.zeros((224, 224), np.uint8)), "observation/image"),
    (lambda o: o.__setitem__("observation/image", np.zeros((224, 224, 3), np.int64)), "observation/image"),
    (lambda o: o.__setitem__("observation/image", np.full((8, 8, 3), 1.5, np.float32)), "observation/image"),
    (lambda o: o.__setitem__("observation/wrist_image", np.full((8, 8, 3), -1.01, np.float64)),
     "observation/wrist_image"),
    (lambda o: o.__setitem__("observation/state", np.zeros(7)), "observation/state"),
    (lambda o: o.__setitem__("observation/state", np.array(["a"] * 8)), "observation/state"),
    (lambda o: o.__setitem__("observation/state", np.full(8, np.nan)), "observation/state"),
    (lambda o: o.__setitem__("prompt", 42), "prompt"),
])
def test_bad_fields_raise_input_error_naming_them(tiny_policy, rng, mutate, field):
  obs = tiny_policy.transforms.env.example(rng)
  mutate(obs)
  with pytest.raises(envs.InputError) as e:
    tiny_policy.infer(obs)
  assert e.value.field == field and repr(field) in str(e.value)


def test_default_prompt(tiny_policy, rng):
  obs = tiny_policy.transforms.env.example(rng)
  del obs["prompt"]
  pol = _policy.Policy(tiny_policy.model, _policy.Transforms(
      env=tiny_policy.transforms.env, tokenizer=tiny_policy.transforms.tokenizer, default_prompt="pick up the cup"),
      tiny_policy.norm_stats)
  with_default = pol.prepare(obs)[0]["tokenized_prompt"]
  explicit = pol.prepare(dict(obs, prompt="pick up the cup"))[0]["tokenized_prompt"]
  np.testing.assert_array_equal(with_default, explicit)


@pytest.mark.parametrize("env, robot_dims", [("droid", 8), ("aloha", 14)])
def test_droid_and_aloha_layouts(tiny_policy, rng, env, robot_dims):
  adapter = envs.get_env(env)
  pol = _policy.Policy(tiny_policy.model, _policy.Transforms(env=adapter, tokenizer=tiny_policy.transforms.tokenizer))
  obs = adapter.example(rng, image_shape=(96, 128, 3))
  out = pol.infer(obs)
  assert out["actions"].shape == (4, robot_dims) and np.all(np.isfinite(out["actions"]))
  data, state = pol.prepare(obs)
  assert state.shape == (adapter.state_dim,) and data["state"].shape == (1, 32)
  if env == "droid":
    np.testing.assert_allclose(state, np.concatenate([obs["observation/joint_position"],
                                                      obs["observation/gripper_position"]]), rtol=1e-6)
    assert [bool(data["image_mask"][k][0]) for k in IMAGE_KEYS] == [True, True, False]
  else:
    # ALOHA: cameras are (3, H, W); cam_low is accepted but unused (openpi); missing wrists become masked zeros.
    obs2 = dict(obs, images={k: v for k, v in obs["images"].items() if k != "cam_right_wrist"})
    d2, _ = pol.prepare(obs2)
    assert [bool(d2["image_mask"][k][0]) for k in IMAGE_KEYS] == [True, True, False]
    assert not d2["image"]["right_wrist_0_rgb"].any()
    with pytest.raises(envs.InputError, match="images"):
      pol.prepare(dict(obs, images={"cam_top": obs["images"]["cam_high"]}))


def test_aloha_conversions_match_openpi_formulas():
  a = envs.get_env("aloha")
  actions = np.tile(np.linspace(-1, 1, 14, dtype=np.float32), (2, 1))
  out = a.outputs(np.pad(actions, ((0, 0), (0, 18))))
  flip = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1])
  want = flip * actions
  want[:, [6, 13]] = (want[:, [6, 13]] + 0.5476 - (-0.6213)) / (1.4910 - (-0.6213))
  np.testing.assert_allclose(out, want, rtol=1e-6)
  no_adapt = envs.get_env("aloha", adapt_to_pi=False)
  np.testing.assert_array_equal(no_adapt.outputs(actions), actions)
  # State: fully open (1.0) / closed (0.0) ALOHA grippers map into π0's normalized angle range.
  st = no_adapt.inputs({"images": {"cam_high": np.zeros((3, 8, 8), np.uint8)}, "state": np.zeros(14)})["state"]
  assert not st.any()
  st = a.inputs({"images": {"cam_high": np.zeros((3, 8, 8), np.uint8)}, "state": np.ones(14)})["state"]
  np.testing.assert_array_equal(st[[0, 1, 2, 8, 9]], [1, -1, -1, -1, -1])
  assert 0.0 < st[6] < 1.5


def test_quantile_norm_and_no_delta(tiny_policy, rng):
  stats = tiny_policy.norm_stats
  pol = _policy.Policy(tiny_policy.model, _policy.Transforms(
      env=tiny_policy.transforms.env, tokenizer=tiny_policy.transforms.tokenizer, use_quantile_norm=True), stats)
  obs = tiny_policy.transforms.env.example(rng)
  data, _ = pol.prepare(obs)
  s = stats["state"]
  want = (obs["observation/state"] - s.q01) / (s.q99 - s.q01 + 1e-6) * 2 - 1
  np.testing.assert_allclose(data["state"][0, :8], want, rtol=1e-5, atol=1e-6)
  raw = np.linspace(-1, 1, 4 * 32, dtype=np.float32).reshape(4, 32)
  a = stats["actions"]
  np.testing.assert_allclose(pol.finish(raw, np.ones(8, np.float32)),
                             (raw[:, :7] + 1) / 2 * (a.q99 - a.q01 + 1e-6) + a.q01, rtol=1e-5)


def test_policy_config_json_and_overrides(tiny_ckpt, tmp_path):
  pc = _policy_config.read_policy_config(tiny_ckpt)
  assert pc.env == "libero" and pc.delta_action_dims == 6
  assert _policy_config.PolicyConfig.from_json(json.loads(json.dumps(pc.to_json()))) == pc
  with pytest.raises(ValueError, match="bogus"):
    _policy_config.PolicyConfig.from_json({"bogus": 1})
  # DROID's 8 actions do not fit the checkpoint's LIBERO stats (7): refused, naming both; served unnormalized here.
  with pytest.raises(ValueError, match="norm stats for 'actions' have 7 dims but the actions has 8"):
    _policy.create_trained_policy(tiny_ckpt, env="droid")
  pol = _policy.create_trained_policy(tiny_ckpt, dtype=None, env="droid", delta_action_dims=0, num_steps=3,
                                      normalized=False)
  assert pol.metadata["env"] == "droid" and pol.metadata["action_dim"] == 8 and pol.num_steps == 3
  assert pol.metadata["param_dtype"] == "float32"


def test_openpi_checkpoint_needs_a_model_config(openpi_fixture_dir):
  with pytest.raises(FileNotFoundError, match="model_config"):
    _policy.create_trained_policy(openpi_fixture_dir / "checkpoint")


def test_apt_stage1_policy_needs_no_prompt(tiny_policy, rng):
  """A Stage 1 (VA prior) model ignores language: no tokenizer, no prompt needed; metadata says stage1."""
  import dataclasses
  cfg = dataclasses.replace(tiny_policy.model.config, apt_stage="stage1", vlm_trainable=False)
  model = cfg.load(tiny_policy.model.params)
  pol = _policy.Policy(model, _policy.Transforms(env=tiny_policy.transforms.env), metadata={"apt_stage": "stage1"})
  obs = tiny_policy.transforms.env.example(rng)
  del obs["prompt"]
  assert pol.infer(obs)["actions"].shape == (4, 7)
  with pytest.raises(ValueError, match="tokenizer"):
    _policy.Policy(tiny_policy.model, _policy.Transforms(env=tiny_policy.transforms.env))


def _checkpoint_without_stats(tmp_path, tiny_ckpt, **policy_config):
  step = tmp_path / "1000"
  shutil.copytree(tiny_ckpt, step)
  shutil.rmtree(step / "assets" / "physical-intelligence")
  if policy_config:
    pc = dataclasses.replace(_policy_config.read_policy_config(step), **policy_config)
    _policy_config.write_policy_config(step / "assets", pc)
  return step


def test_missing_norm_stats_fail_at_startup_unless_allowed(tiny_ckpt, tmp_path):
  step = _checkpoint_without_stats(tmp_path, tiny_ckpt)
  with pytest.raises(FileNotFoundError, match=r"No norm stats under .*1000/assets.*allow_unnormalized"):
    _policy.create_trained_policy(step)
  assert _policy.create_trained_policy(step, allow_unnormalized=True).norm_stats is None
  # An asset the checkpoint lacks is named with the ones it has.
  with pytest.raises(FileNotFoundError, match=r"No norm stats for asset_id 'droid' at .*droid/norm_stats.json "
                                              r"\(the checkpoint has: \['physical-intelligence/libero'\]\)"):
    _policy.create_trained_policy(tiny_ckpt, asset_id="droid")
  # A model trained without normalization needs none.
  unnormalized = _checkpoint_without_stats(tmp_path / "u", tiny_ckpt, normalized=False)
  assert _policy.create_trained_policy(unnormalized).norm_stats is None


def test_norm_stats_of_the_wrong_width_are_refused_naming_both_dims(tiny_policy):
  stats = dict(tiny_policy.norm_stats)
  s = stats["state"]
  stats["state"] = normalize.NormStats(mean=np.append(s.mean, 0.0), std=np.append(s.std, 1.0))
  with pytest.raises(ValueError, match=r"norm stats for 'state' have 9 dims but the state has 8"):
    _policy.Policy(tiny_policy.model, tiny_policy.transforms, stats)
  stats = dict(tiny_policy.norm_stats, actions=normalize.NormStats(mean=np.zeros(6), std=np.ones(6)))
  with pytest.raises(ValueError, match=r"norm stats for 'actions' have 6 dims but the actions has 7"):
    _policy.Policy(tiny_policy.model, tiny_policy.transforms, stats)
