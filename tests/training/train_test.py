"""Training: sharding, frozen VLM, resume, Stage 1 -> Stage 2, and openpi's optimizer steps."""

import contextlib
import functools
import json
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from apt_jax import checkpoints
from apt_jax import configs
from apt_jax import metrics
from apt_jax import optimizer as _optimizer
from apt_jax import sharding as _sharding
from apt_jax import testing
from apt_jax import train
from apt_jax import tree as tree_lib
from apt_jax.data import batch as _batch
from apt_jax.models import model as _model


def debug_config(arg="stage1", **overrides) -> ml_collections.ConfigDict:
  c = configs.load(configs.REPO_ROOT / "experiments" / "debug.py", arg)
  c.progress_bar = False
  c.num_train_steps = 4
  c.log_every_steps = 1
  for k, v in overrides.items():
    node, *path = k.split(".")
    target = c
    for p in [node, *path][:-1]:
      target = target[p]
    target[[node, *path][-1]] = v
  return c


def fake_batches(model_config, n, batch_size=8):
  data = _batch.FakeData(model_config, batch_size, seed=0)
  return [next(data) for _ in range(n)]


def global_batch(local_batch, model_config, mesh):
  spec = _batch.abstract_batch(model_config, len(local_batch["state"]), _sharding.data_sharding(mesh))
  return _batch.to_global_batch(local_batch, spec)


def run_steps(config, mesh, batches):
  model_config = configs.model_config(config)
  setup = train.make_setup(config, model_config, mesh)
  state = train.init_train_state(setup, jax.random.key(0))
  step = setup.jit_train_step()
  losses = []
  for b in batches:
    state, metrics = step(jax.random.key(1), state, global_batch(b, model_config, mesh))
    losses.append((float(metrics["loss"]), float(metrics["grad_norm"])))
  return state, losses, setup


def test_sharded_step_on_2x4_mesh_equals_single_device():
  config = debug_config("stage1", **{"mesh.min_fsdp_mbytes": 0.0, "mesh.fsdp_devices": 4})
  batches = fake_batches(configs.model_config(config), 2)
  mesh8 = _sharding.make_mesh(4)
  assert dict(mesh8.shape) == {"dcn": 1, "data": 2, "fsdp": 4}
  s8, l8, setup8 = run_steps(config, mesh8, batches)
  specs = [s.spec for s in jax.tree.leaves(setup8.state_shardings.params)]
  assert any(_sharding.FSDP_AXIS in tuple(sp) for sp in specs)  # FSDP really shards something.
  s1, l1, _ = run_steps(config, _sharding.make_mesh(1, devices=jax.devices()[:1]), batches)
  np.testing.assert_allclose(l8, l1, rtol=1e-5)  # loss and global grad norm of every step
  # Adam's first steps are ~lr·sign(g): ulp-level gradient differences of near-zero entries move params by up to
  # ~lr (1e-4 here at most), so params are compared well below that and above float noise.
  for k, v in tree_lib.flatten(s1.params).items():
    np.testing.assert_allclose(np.asarray(tree_lib.flatten(s8.params)[k]), np.asarray(v), atol=5e-5, err_msg=k)


def _constraints_in_scan_bodies(jaxpr, inside=False):
  """Specs of the sharding constraints inside scan bodies (the model's layers), however deeply nested."""
  specs = []
  for eqn in jaxpr.eqns:
    if inside and eqn.primitive.name == "sharding_constraint":
      specs.append(eqn.params["sharding"].spec)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          specs += _constraints_in_scan_bodies(sub, inside or eqn.primitive.name == "scan")
  return specs


def test_train_step_keeps_the_layers_activations_on_the_batch_axes():
  """Inside the traced step every SigLIP and Gemma layer pins its residual stream's batch axis to the data axes:
  without it XLA may follow the FSDP weights and gather the whole batch onto every chip (a full-size GR00T step on a
  v4-8 did: batch 256 per chip)."""
  config = debug_config("joint", **{"mesh.min_fsdp_mbytes": 0.0, "mesh.fsdp_devices": 4})
  model_config = configs.model_config(config)
  setup = train.make_setup(config, model_config, _sharding.make_mesh(4))
  batch = _batch.abstract_batch(model_config, 8, _sharding.data_sharding(setup.ctx.mesh))
  jaxpr = jax.make_jaxpr(functools.partial(train.train_step, setup.ctx))(
      jax.random.key(0), setup.abstract_state, batch).jaxpr
  specs = _constraints_in_scan_bodies(jaxpr)
  assert specs and all(spec == _sharding.P(_sharding.BATCH_AXES) for spec in specs)
  # Outside a train step (sampling, export) the same model traces with no constraint at all.
  model = model_config.create(jax.random.key(0))
  obs = _model.Observation.from_dict(_batch.FakeData(model_config, 2, seed=0).__next__())
  assert not _constraints_in_scan_bodies(jax.make_jaxpr(
      lambda p: model.replace(params=p).sample_actions(jax.random.key(0), obs, num_steps=1))(model.params).jaxpr)


def test_stage1_leaves_vlm_params_bit_identical_and_without_optimizer_state():
  config = debug_config("stage1")
  mesh = _sharding.make_mesh(1)
  model_config = configs.model_config(config)
  setup = train.make_setup(config, model_config, mesh)
  state0 = train.init_train_state(setup, jax.random.key(0))
  frozen0 = jax.tree.map(np.asarray, state0.frozen)
  trainable0 = jax.tree.map(np.asarray, state0.params)
  opt_keys = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state0.opt_state)}
  assert not any("PaliGemma']['img" in k or "input_embedding" in k for k in opt_keys)
  assert set(tree_lib.flatten(frozen0)) == {k for k in tree_lib.flatten(model_config.abstract_params())
                                            if _model.is_vlm_param(k)}
  step = setup.jit_train_step(donate=False)
  state = state0
  for b in fake_batches(model_config, 2):
    state, _ = step(jax.random.key(1), state, global_batch(b, model_config, mesh))
  for k, v in tree_lib.flatten(state.frozen).items():
    np.testing.assert_array_equal(np.asarray(v), tree_lib.flatten(frozen0)[k], err_msg=k)
  assert any(np.any(np.asarray(v) != tree_lib.flatten(trainable0)[k])
             for k, v in tree_lib.flatten(state.params).items())


def _final_params(workdir, step):
  return tree_lib.flatten(checkpoints.restore_params(workdir / "checkpoints" / str(step) / "params",
                                                     restore_type=np.ndarray))


@contextlib.contextmanager
def counted_steps():
  """Counts the train steps `train.main` executes (calls of its jitted step) in the list it yields."""
  calls, jit_train_step = [], train.Setup.jit_train_step

  def counting(self, **kw):
    step = jit_train_step(self, **kw)
    return lambda *args: (calls.append(1), step(*args))[1]

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train.Setup, "jit_train_step", counting)
    yield calls


def _run(config, workdir) -> int:
  """train.main -> the number of steps it executed."""
  with counted_steps() as calls:
    train.main(config, workdir)
  return len(calls)


@pytest.fixture(scope="module")
def stage1_runs(tmp_path_factory):
  """4 steps straight, and 2 steps + a fresh restart + 2 more, both on the shipped sample data (async saves)."""
  root = tmp_path_factory.mktemp("resume")
  straight, resumed = root / "straight", root / "resumed"
  assert _run(debug_config("stage1", ckpt_every_steps=2, max_to_keep=3), straight) == 4
  assert _run(debug_config("stage1", ckpt_every_steps=2, max_to_keep=3, num_train_steps=2), resumed) == 2
  executed = _run(debug_config("stage1", ckpt_every_steps=2, max_to_keep=3), resumed)
  return straight, resumed, executed


def _steps_logged(workdir):
  return [r["step"] for r in metrics.read_metrics(workdir)]


def test_resume_executes_exactly_the_remaining_steps(stage1_runs):
  straight, resumed, executed = stage1_runs
  assert executed == 2  # a run that started over would execute 4 (and Orbax would skip its existing step 2)
  a, b = _final_params(straight, 4), _final_params(resumed, 4)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  la = {r["step"]: r["loss"] for r in metrics.read_metrics(straight)}
  lb = {r["step"]: r["loss"] for r in metrics.read_metrics(resumed)}
  assert la == lb and _steps_logged(resumed) == [0, 1, 2, 3]
  assert (straight / "loss.png").stat().st_size > 0
  assert (straight / "checkpoints" / "4" / "assets" / "libero_sample" / "norm_stats.json").exists()


def test_resume_after_a_crash_drops_the_metrics_logged_after_the_checkpoint(stage1_runs, tmp_path):
  """A run killed after logging steps 2 and 3 but before committing step 4 resumes at 2: metrics.jsonl then holds
  each step once, in order (without truncation it would read 0, 1, 2, 3, 2, 3), and the final params are the
  uninterrupted run's."""
  straight, _, _ = stage1_runs
  crashed = tmp_path / "crashed"
  shutil.copytree(straight, crashed)
  shutil.rmtree(crashed / "checkpoints" / "4")
  with open(crashed / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "loss": 1.0')  # a row cut short by the crash
  assert _run(debug_config("stage1", ckpt_every_steps=2, max_to_keep=3), crashed) == 2
  assert _steps_logged(crashed) == [0, 1, 2, 3]
  for k, v in _final_params(straight, 4).items():
    np.testing.assert_array_equal(_final_params(crashed, 4)[k], v, err_msg=k)


def test_a_broken_latest_checkpoint_is_reported_set_aside_and_the_previous_one_resumed(stage1_runs, tmp_path,
                                                                                       caplog):
  straight, _, _ = stage1_runs
  work = tmp_path / "work"
  shutil.copytree(straight, work)
  broken = work / "checkpoints" / "4"
  (broken / "params" / "manifest.ocdbt").unlink()
  files = sorted(str(p.relative_to(broken)) for p in broken.rglob("*"))
  assert _run(debug_config("stage1", ckpt_every_steps=2, max_to_keep=3), work) == 2
  assert f"{broken} does not restore: {broken / 'params' / 'manifest.ocdbt'} is missing" in caplog.text
  kept = work / "checkpoints" / "corrupt" / "4"
  assert sorted(str(p.relative_to(kept)) for p in kept.rglob("*")) == files  # never deleted
  for k, v in _final_params(straight, 4).items():
    np.testing.assert_array_equal(_final_params(work, 4)[k], v, err_msg=k)


def test_stage2_initialised_from_stage1_reproduces_stage1(stage1_runs):
  straight, _, _ = stage1_runs
  s1_params = checkpoints.restore_params(straight / "checkpoints" / "4" / "params", restore_type=np.ndarray)
  config = debug_config("stage2", init_from=str(straight))
  s2_config = configs.model_config(config)
  setup = train.make_setup(config, s2_config, _sharding.make_mesh(1))
  abstract = setup.abstract_params()
  _, restored, new = s2_config.stage2_partial_params(s1_params, abstract)
  assert restored == sorted(tree_lib.flatten(s1_params)) and new and all("fusion_1" in k for k in new)
  state = train.init_train_state(setup, jax.random.key(3), train.load_initial_params(config, s2_config, abstract))
  s2 = s2_config.model_class()(config=s2_config, params=_optimizer.combine(state.params, state.frozen))
  s1 = configs.model_config(debug_config("stage1")).load(s1_params)
  batch = _batch.FakeData(s2_config, 2, seed=5).__next__()
  obs = _model.Observation.from_dict(batch)
  f = jax.jit(lambda m: (m.compute_loss(jax.random.key(0), obs, batch["actions"]),
                         m.sample_actions(jax.random.key(0), obs, num_steps=2)))
  for x, y in zip(f(s1), f(s2)):
    np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5)


def test_init_from_rejects_mismatched_stage1(tmp_path, stage1_runs):
  straight, _, _ = stage1_runs
  params = checkpoints.restore_params(straight / "checkpoints" / "4" / "params", restore_type=np.ndarray)
  flat = tree_lib.flatten(params)
  flat["state_proj/kernel"] = np.zeros((3, 3), np.float32)
  bad = tmp_path / "bad_params"
  checkpoints.save_params(bad, tree_lib.unflatten(flat))
  config = debug_config("stage2", init_from=str(bad))
  s2_config = configs.model_config(config)
  with pytest.raises(tree_lib.TreeMismatchError, match=r"state_proj/kernel: shape \(3, 3\)"):
    train.load_initial_params(config, s2_config, s2_config.abstract_params())


def test_nan_loss_stops_training_with_the_step(tmp_path):
  config = debug_config("joint", **{"schedule.peak_lr": 1e30, "schedule.warmup_steps": 0, "num_train_steps": 3})
  config.optimizer.clip_gradient_norm = 0.0
  with pytest.raises(FloatingPointError, match=r"at step [12]"):
    train.main(config, tmp_path)


def test_non_finite_params_stop_training_before_their_checkpoint(tmp_path):
  """lr = 1e39 overflows float32: step 0 (finite loss and gradients) makes every param inf or NaN. With a checkpoint
  after every step, that state must not be committed."""
  config = debug_config("joint", **{"schedule.peak_lr": 1e39, "schedule.warmup_steps": 0, "num_train_steps": 3,
                                    "ckpt_every_steps": 1})
  config.optimizer.clip_gradient_norm = 0.0
  with pytest.raises(FloatingPointError, match=r"Non-finite params after step 0: stopping before its checkpoint"):
    train.main(config, tmp_path)
  assert checkpoints.CheckpointManager(tmp_path / "checkpoints").all_steps() == []


def test_non_finite_gradient_with_a_finite_loss_stops_before_the_checkpoint(tmp_path, monkeypatch):
  """A loss term 0·sqrt(0·Σw) is 0, but its gradient is NaN (0·∞): the loss stays finite. The old loop checked only
  the loss, so the NaN update was committed at the checkpoint."""
  loss_fn = train._loss_fn

  def nan_gradient(ctx, trainable, frozen, rng, batch):
    w = trainable["state_proj"]["kernel"]
    loss, aux = loss_fn(ctx, trainable, frozen, rng, batch)
    return loss + 0.0 * jax.numpy.sqrt(0.0 * jax.numpy.sum(w)), aux

  monkeypatch.setattr(train, "_loss_fn", nan_gradient)
  config = debug_config("stage1", num_train_steps=2, ckpt_every_steps=1)
  with pytest.raises(FloatingPointError, match=r"Non-finite grad_norm nan at step 0"):
    train.main(config, tmp_path)
  assert checkpoints.CheckpointManager(tmp_path / "checkpoints").all_steps() == []


def test_optimizer_and_ema_reproduce_openpi_three_steps(openpi_fixture_dir, fixture_npz):
  """openpi's 3 training steps on the fixture (settings from its README): losses and grad norms; EMA by hand."""
  d = fixture_npz
  model_config = testing.fixture_model_config(openpi_fixture_dir, "bfloat16")
  readme = json.loads((openpi_fixture_dir / "config.json").read_text())["train"]
  config = configs.base_config()
  config.schedule = dict(kind="warmup_cosine", peak_lr=1e-3, warmup_steps=2, decay_steps=10, decay_lr=1e-4)
  config.optimizer.update(dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-10, clip_gradient_norm=1.0, decay_all=True))
  config.update(dict(ema_decay=readme["ema_decay"], frozen_dtype="", train_augment=False))
  mesh = _sharding.make_mesh(1, devices=jax.devices()[:1])
  # The model config is fixed by the fixture; make_setup builds the optimizer for it.
  setup = train.make_setup(config, model_config, mesh)
  params0 = checkpoints.restore_params(openpi_fixture_dir / "checkpoint" / "params", restore_type=np.ndarray)
  state = train.init_train_state(setup, jax.random.key(0), params0)
  batch = {"image": {k: d[f"in/image/{k}"] for k in _model.IMAGE_KEYS},
           "image_mask": {k: d[f"in/image_mask/{k}"] for k in _model.IMAGE_KEYS},
           "state": d["in/state"], "tokenized_prompt": d["in/tokenized_prompt"],
           "tokenized_prompt_mask": d["in/tokenized_prompt_mask"], "actions": d["in/actions"]}
  step = setup.jit_train_step(donate=False)
  losses, grad_norms, trajectory = [], [], [tree_lib.flatten(params0)]
  for _ in range(3):
    state, metrics = step(jax.random.key(42), state, batch)
    losses.append(float(metrics["loss"]))
    grad_norms.append(float(metrics["grad_norm"]))
    trajectory.append(tree_lib.flatten(jax.tree.map(np.asarray, state.params)))
  np.testing.assert_allclose(losses, d["train/losses"], rtol=2e-3)
  np.testing.assert_allclose(grad_norms, d["train/grad_norms"], rtol=5e-3)
  assert losses[2] < losses[0]
  # EMA by hand: e_{t+1} = 0.99 e_t + 0.01 p_{t+1}, e_0 = p_0.
  decay = readme["ema_decay"]
  ema = tree_lib.flatten(jax.tree.map(np.asarray, state.ema_params))
  for k in ["action_out_proj/kernel", "PaliGemma/llm/layers/attn/q_einsum_1/w"]:
    e = trajectory[0][k].astype(np.float64)
    for p in trajectory[1:]:
      e = decay * e + (1 - decay) * p[k]
    np.testing.assert_allclose(ema[k], e, rtol=1e-5, atol=1e-7, err_msg=k)


def test_trained_checkpoint_serves_without_extra_settings(stage1_runs):
  """A training checkpoint carries model config, norm stats, tokenizer and policy settings in assets/."""
  from apt_jax import policy

  straight, _, _ = stage1_runs
  p = policy.create_trained_policy(straight / "checkpoints" / "4")
  rng = np.random.default_rng(0)
  out = p.infer({"observation/image": rng.integers(0, 256, (64, 64, 3), np.uint8),
                 "observation/wrist_image": rng.integers(0, 256, (64, 64, 3), np.uint8),
                 "observation/state": rng.normal(size=8).astype(np.float32),
                 "prompt": "put the bowl on the plate"})
  assert out["actions"].shape == (10, 7) and np.all(np.isfinite(out["actions"]))


def test_weight_loaders_initialise_from_paligemma_npz_and_openpi_checkpoint(tmp_path):
  """Init paths of train: a big_vision PaliGemma npz fills exactly the VLM; an openpi checkpoint fills everything."""
  from apt_jax import weight_loaders

  config = debug_config("joint")
  model_config = configs.model_config(config)
  source = model_config.create(jax.random.key(7)).params
  weight_loaders.save_paligemma_npz(tmp_path / "pg.npz", source["PaliGemma"] | {
      "llm": tree_lib.unflatten({k: v for k, v in tree_lib.flatten(source["PaliGemma"]["llm"]).items()
                                 if _model.is_vlm_param("PaliGemma/llm/" + k)})})
  checkpoints.save_params(tmp_path / "openpi_params", source)
  abstract = model_config.abstract_params()
  want = tree_lib.flatten(source)
  for kind, path, expected_keys in [
      ("paligemma_npz", tmp_path / "pg.npz", {k for k in want if _model.is_vlm_param(k)}),
      ("openpi", tmp_path / "openpi_params", set(want))]:
    config.weight_loader = dict(kind=kind, path=str(path))
    partial = tree_lib.flatten(train.load_initial_params(config, model_config, abstract))
    assert set(partial) == expected_keys, kind
    for k, v in partial.items():
      np.testing.assert_array_equal(v, np.asarray(want[k]), err_msg=k)
