"""π0 and π0.5 equal openpi's own runs (../shared/testdata/openpi_pi0_tiny, openpi_pi05_tiny): internals, loss,
gradients, sampling."""

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
# Intermediates sown by Pi0Module.predict, compared with openpi's; π0.5 adds the time MLP's output.
INTERNALS = {"pi0": ["prefix_tokens", "suffix_tokens", "prefix_out", "suffix_out", "time_emb", "v_t"]}
INTERNALS["pi05"] = INTERNALS["pi0"] + ["adarms_cond"]
FIXTURE_DIRS = {"pi0": "openpi_fixture_dir", "pi05": "openpi_pi05_fixture_dir"}


def fixture_obs(d) -> _model.Observation:
  return _model.Observation(
      images={k: d[f"in/image/{k}"] for k in _model.IMAGE_KEYS},
      image_masks={k: d[f"in/image_mask/{k}"] for k in _model.IMAGE_KEYS},
      state=d["in/state"], tokenized_prompt=d["in/tokenized_prompt"],
      tokenized_prompt_mask=d["in/tokenized_prompt_mask"])


@pytest.fixture(scope="module", params=["pi0", "pi05"])
def fixture(request):
  """(name, fixture dir, expected.npz as a dict, f32 params) of openpi's π0 or π0.5 run."""
  path = request.getfixturevalue(FIXTURE_DIRS[request.param])
  with np.load(path / "expected.npz", allow_pickle=False) as f:
    d = {k: f[k] for k in f.files}
  return request.param, path, d, checkpoints.restore_params(path / "checkpoint" / "params")


def test_fixture_configs_are_pi0_and_pi05(fixture):
  name, path, _, params = fixture
  config = testing.fixture_model_config(path)
  assert config.pi05 == (name == "pi05") and config.max_token_len == (200 if name == "pi05" else 48)
  assert ("time_mlp_in" in params) == (name == "pi05") and ("state_proj" in params) == (name == "pi0")


@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_internals_and_loss_match_openpi(fixture, dt):
  name, path, d, params = fixture
  model = testing.fixture_model_config(path, DTYPE[dt]).load(params)
  loss, inter = jax.jit(lambda m, o: m.compute_loss_with_intermediates(
      jax.random.key(1234), o, d["in/actions"], noise=d[f"{dt}/internal/noise"], time=d[f"{dt}/internal/time"]))(
          model, fixture_obs(d))
  for k in INTERNALS[name]:
    np.testing.assert_allclose(np.asarray(inter[k], np.float32), d[f"{dt}/internal/{k}"].astype(np.float32),
                               err_msg=k, **TOL[dt])
  np.testing.assert_array_equal(inter["positions"], d[f"{dt}/internal/positions"])
  np.testing.assert_array_equal(inter["attn_mask"], d[f"{dt}/internal/attn_mask"])
  np.testing.assert_allclose(loss, d[f"{dt}/loss"], **TOL[dt])
  np.testing.assert_allclose(jnp.mean(loss), d[f"{dt}/loss_mean"], **TOL[dt])


@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_rng_path_draws_openpi_noise_and_time(fixture, dt):
  _, path, d, params = fixture
  model = testing.fixture_model_config(path, DTYPE[dt]).load(params)
  loss = jax.jit(lambda m, o: m.compute_loss(jax.random.key(1234), o, d["in/actions"]))(model, fixture_obs(d))
  np.testing.assert_allclose(loss, d[f"{dt}/loss"], **TOL[dt])


@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_gradient_norms_match_openpi(fixture, dt):
  _, path, d, params = fixture
  model = testing.fixture_model_config(path, DTYPE[dt]).load(params)
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
def test_sample_actions_match_openpi(fixture, dt):
  _, path, d, params = fixture
  model = testing.fixture_model_config(path, DTYPE[dt]).load(params)
  sample = jax.jit(lambda m, o, n: m.sample_actions(jax.random.key(5678), o, noise=n))
  np.testing.assert_allclose(sample(model, fixture_obs(d), d["in/sample_noise"]), d[f"{dt}/sample_actions"],
                             **TOL[dt])
  from_rng = jax.jit(lambda m, o: m.sample_actions(jax.random.key(5678), o))(model, fixture_obs(d))
  np.testing.assert_allclose(from_rng, d[f"{dt}/sample_actions_from_rng"], **TOL[dt])


def test_sample_actions_with_bf16_params_matches_openpi_policy_path(fixture):
  """openpi's inference restores params in bfloat16 (policy_config.create_trained_policy)."""
  _, path, d, _ = fixture
  params = checkpoints.restore_params(path / "checkpoint" / "params", dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  model = testing.fixture_model_config(path, "bfloat16").load(params)
  actions = jax.jit(lambda m, o, n: m.sample_actions(jax.random.key(5678), o, noise=n))(
      model, fixture_obs(d), d["in/sample_noise"])
  np.testing.assert_allclose(actions, d["policy_path/sample_actions_bf16_params"], **TOL["bf16"])


def test_load_rejects_mismatched_tree(openpi_fixture_dir):
  cfg = testing.fixture_model_config(openpi_fixture_dir, "float32")
  flat = tree_lib.flatten(checkpoints.restore_params(openpi_fixture_dir / "checkpoint" / "params"))
  del flat["state_proj/bias"]
  flat["action_out_proj/kernel"] = np.zeros((3, 3), np.float32)
  flat["extra/w"] = np.zeros(1)
  with pytest.raises(tree_lib.TreeMismatchError) as e:
    cfg.load(tree_lib.unflatten(flat))
  msg = str(e.value)
  assert "state_proj/bias" in msg and "extra/w" in msg and "action_out_proj/kernel" in msg
  assert "(3, 3)" in msg and "(128, 32)" in msg


def test_pi0_params_do_not_load_as_pi05(openpi_fixture_dir, openpi_pi05_fixture_dir):
  """The two trees differ exactly where openpi's do: π0's state token and action-time MLP, π0.5's time MLP and
  adaptive expert norms."""
  pi0_params = checkpoints.restore_params(openpi_fixture_dir / "checkpoint" / "params")
  with pytest.raises(tree_lib.TreeMismatchError) as e:
    testing.fixture_model_config(openpi_pi05_fixture_dir).load(pi0_params)
  msg = str(e.value)
  for k in ("state_proj/kernel", "action_time_mlp_in/kernel", "time_mlp_in/kernel",
            "PaliGemma/llm/layers/pre_attention_norm_1/Dense_0/kernel", "PaliGemma/llm/final_norm_1/scale"):
    assert k in msg, k
