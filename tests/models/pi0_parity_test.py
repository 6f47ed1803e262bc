"""π0 equals openpi's own run (../shared/testdata/openpi_pi0_tiny): internals, loss, gradients, sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apt_jax import checkpoints
from apt_jax import testing
from apt_jax import tree as tree_lib
from apt_jax.models import model as _model

TOL = {"f32": dict(atol=1e-4, rtol=0), "bf16": dict(atol=5e-2, rtol=2e-2)}
DTYPE = {"f32": "float32", "bf16": "bfloat16"}


def fixture_obs(d) -> _model.Observation:
  return _model.Observation(
      images={k: d[f"in/image/{k}"] for k in _model.IMAGE_KEYS},
      image_masks={k: d[f"in/image_mask/{k}"] for k in _model.IMAGE_KEYS},
      state=d["in/state"], tokenized_prompt=d["in/tokenized_prompt"],
      tokenized_prompt_mask=d["in/tokenized_prompt_mask"])


@pytest.fixture(scope="module")
def params(openpi_fixture_dir):
  return checkpoints.restore_params(openpi_fixture_dir / "checkpoint" / "params")


@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_internals_and_loss_match_openpi(openpi_fixture_dir, fixture_npz, params, dt):
  d = fixture_npz
  model = testing.fixture_model_config(openpi_fixture_dir, DTYPE[dt]).load(params)
  loss, inter = jax.jit(lambda m, o: m.compute_loss_with_intermediates(
      jax.random.key(1234), o, d["in/actions"], noise=d[f"{dt}/internal/noise"], time=d[f"{dt}/internal/time"]))(
          model, fixture_obs(d))
  for k in ["prefix_tokens", "suffix_tokens", "prefix_out", "suffix_out", "time_emb", "v_t"]:
    np.testing.assert_allclose(np.asarray(inter[k], np.float32), d[f"{dt}/internal/{k}"].astype(np.float32),
                               err_msg=k, **TOL[dt])
  np.testing.assert_array_equal(inter["positions"], d[f"{dt}/internal/positions"])
  np.testing.assert_array_equal(inter["attn_mask"], d[f"{dt}/internal/attn_mask"])
  np.testing.assert_allclose(loss, d[f"{dt}/loss"], **TOL[dt])
  np.testing.assert_allclose(jnp.mean(loss), d[f"{dt}/loss_mean"], **TOL[dt])


@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_rng_path_draws_openpi_noise_and_time(openpi_fixture_dir, fixture_npz, params, dt):
  d = fixture_npz
  model = testing.fixture_model_config(openpi_fixture_dir, DTYPE[dt]).load(params)
  loss = jax.jit(lambda m, o: m.compute_loss(jax.random.key(1234), o, d["in/actions"]))(model, fixture_obs(d))
  np.testing.assert_allclose(loss, d[f"{dt}/loss"], **TOL[dt])


@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_gradient_norms_match_openpi(openpi_fixture_dir, fixture_npz, params, dt):
  d = fixture_npz
  model = testing.fixture_model_config(openpi_fixture_dir, DTYPE[dt]).load(params)
  obs = fixture_obs(d)

  def loss_fn(p):
    return jnp.mean(model.replace(params=p).compute_loss(jax.random.key(1234), obs, d["in/actions"]))

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  rtol = 1e-4 if dt == "f32" else 5e-2
  # bf16 gradients of a few 1e-4 (e.g. SigLIP key biases) are at bf16 noise level: judge them absolutely.
  atol = 1e-6 if dt == "f32" else 1e-4
  np.testing.assert_allclose(loss, d[f"{dt}/grad_loss"], rtol=rtol)
  global_norm = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(grads)))
  np.testing.assert_allclose(global_norm, d[f"{dt}/grad_global_norm"], rtol=rtol)
  flat = tree_lib.flatten(grads)
  assert set(flat) == {k[len(f"{dt}/grad_norm/"):] for k in d if k.startswith(f"{dt}/grad_norm/")}
  for k, g in flat.items():
    np.testing.assert_allclose(np.linalg.norm(np.asarray(g, np.float64).ravel()), d[f"{dt}/grad_norm/{k}"],
                               rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_sample_actions_match_openpi(openpi_fixture_dir, fixture_npz, params, dt):
  d = fixture_npz
  model = testing.fixture_model_config(openpi_fixture_dir, DTYPE[dt]).load(params)
  sample = jax.jit(lambda m, o, n: m.sample_actions(jax.random.key(5678), o, noise=n))
  np.testing.assert_allclose(sample(model, fixture_obs(d), d["in/sample_noise"]), d[f"{dt}/sample_actions"],
                             **TOL[dt])
  from_rng = jax.jit(lambda m, o: m.sample_actions(jax.random.key(5678), o))(model, fixture_obs(d))
  np.testing.assert_allclose(from_rng, d[f"{dt}/sample_actions_from_rng"], **TOL[dt])


def test_sample_actions_with_bf16_params_matches_openpi_policy_path(openpi_fixture_dir, fixture_npz):
  """openpi's inference restores params in bfloat16 (policy_config.create_trained_policy)."""
  d = fixture_npz
  params = checkpoints.restore_params(openpi_fixture_dir / "checkpoint" / "params", dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  model = testing.fixture_model_config(openpi_fixture_dir, "bfloat16").load(params)
  actions = jax.jit(lambda m, o, n: m.sample_actions(jax.random.key(5678), o, noise=n))(
      model, fixture_obs(d), d["in/sample_noise"])
  np.testing.assert_allclose(actions, d["policy_path/sample_actions_bf16_params"], **TOL["bf16"])


def test_load_rejects_mismatched_tree(openpi_fixture_dir, params):
  cfg = testing.fixture_model_config(openpi_fixture_dir, "float32")
  flat = tree_lib.flatten(params)
  del flat["state_proj/bias"]
  flat["action_out_proj/kernel"] = np.zeros((3, 3), np.float32)
  flat["extra/w"] = np.zeros(1)
  with pytest.raises(tree_lib.TreeMismatchError) as e:
    cfg.load(tree_lib.unflatten(flat))
  msg = str(e.value)
  assert "state_proj/bias" in msg and "extra/w" in msg and "action_out_proj/kernel" in msg
  assert "(3, 3)" in msg and "(128, 32)" in msg
