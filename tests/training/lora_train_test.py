"""LoRA training as openpi's low-memory fine-tune: only the adapters (and a non-LoRA expert) train and hold optimizer
state, the frozen weights stay bit-identical; from the CLI, the merged export loads as plain π0 and acts the same."""

import subprocess
import sys

import jax
import numpy as np

from apt_jax import checkpoints
from apt_jax import configs
from apt_jax import export
from apt_jax import sharding as _sharding
from apt_jax import train
from apt_jax import tree as tree_lib
from apt_jax.models import lora
from apt_jax.models import model as _model
from apt_jax.models import registry
from tests.training.train_test import fake_batches
from tests.training.train_test import global_batch


def lora_config(arg):
  c = configs.load(configs.REPO_ROOT / "experiments" / "debug_lora.py", arg)
  c.progress_bar = False
  c.async_checkpoint = False
  return c


def _opt_state_paths(opt_state) -> set[str]:
  return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(opt_state)}


def test_lora_trains_only_adapters_and_frozen_weights_stay_bit_identical():
  config = lora_config("joint")
  model_config = configs.model_config(config)
  mesh = _sharding.make_mesh(1, devices=jax.devices()[:1])
  setup = train.make_setup(config, model_config, mesh)
  state0 = train.init_train_state(setup, jax.random.key(0))
  frozen0 = tree_lib.flatten(jax.tree.map(np.asarray, state0.frozen))
  trainable0 = tree_lib.flatten(jax.tree.map(np.asarray, state0.params))
  # openpi's freeze filter with LoRA on both Gemmas: every Gemma weight but the adapters (SigLIP and the projections
  # train), i.e. everything under PaliGemma/llm that is not an adapter.
  want_frozen = {k for k in tree_lib.flatten(model_config.abstract_params())
                 if k.startswith("PaliGemma/llm/") and not lora.is_lora_param(k)}
  assert set(frozen0) == want_frozen
  assert any(lora.is_lora_param(k) for k in trainable0)
  # No optimizer state for a frozen weight: Adam's moments exist for the trainable params only.
  opt_paths = _opt_state_paths(state0.opt_state)
  assert not any("'llm'" in p and "lora" not in p for p in opt_paths), sorted(opt_paths)[:5]
  assert any("lora_a" in p for p in opt_paths)
  step = setup.jit_train_step(donate=False)
  state = state0
  for b in fake_batches(model_config, 2):
    state, _ = step(jax.random.key(1), state, global_batch(b, model_config, mesh))
  for k, v in tree_lib.flatten(state.frozen).items():
    np.testing.assert_array_equal(np.asarray(v), frozen0[k], err_msg=k)
  params = tree_lib.flatten(state.params)
  changed = {k for k, v in params.items() if np.any(np.asarray(v) != trainable0[k])}
  # Every adapter moves (lora_b from zero: its gradient is x·a, not zero).
  assert {k for k in params if lora.is_lora_param(k)} <= changed


def test_stage2_vlm_lora_trains_the_expert_in_full_and_only_the_vlm_adapters():
  model_config = configs.model_config(lora_config("stage2"))
  keys = tree_lib.flatten(model_config.abstract_params())
  trainable = {k for k in keys if not model_config.freeze_filter(k)}
  assert "PaliGemma/llm/layers/attn/q_einsum_1/w" in trainable and "PaliGemma/llm/layers/mlp_1/linear" in trainable
  assert "PaliGemma/llm/layers/attn/q_einsum/lora_a" in trainable
  assert not {k for k in trainable if k.startswith("PaliGemma/img/")}
  assert not {k for k in trainable if apt_vlm_weight(k)}


def apt_vlm_weight(k):
  """A weight of the VLM's Gemma (expert 0), not an adapter."""
  return _model.llm_expert(k) == 0 and not lora.is_lora_param(k)


def _run(*args):
  r = subprocess.run([sys.executable, "-m", *args], check=False, cwd=configs.REPO_ROOT, capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


def test_lora_trains_from_the_cli_and_the_merged_export_is_plain_pi0(tmp_path):
  work, out = tmp_path / "run", tmp_path / "merged"
  _run("apt_jax.train", "--config", "experiments/debug_lora.py:joint", "--workdir", str(work),
       "--config.num_train_steps=3", "--config.ckpt_every_steps=3", "--config.progress_bar=False",
       "--config.async_checkpoint=False")
  step = work / "checkpoints" / "3"
  _run("apt_jax.export", "--checkpoint", str(step), "--out", str(out), "--merge_lora")
  lora_model = checkpoints.load_model_config(step).load(checkpoints.restore_params(step / "params"))
  assert lora_model.config.vlm_config.lora is not None
  merged_config = registry.load_config(out / "assets" / checkpoints.MODEL_CONFIG_FILE)
  assert merged_config == lora_model.config.without_lora()
  merged_params = checkpoints.restore_params(out / "params")
  # The plain π0 tree: no adapter left, every weight of the model without LoRA (openpi's `pi0` at these sizes).
  assert set(tree_lib.flatten(merged_params)) == set(tree_lib.flatten(export.openpi_reference_tree(merged_config)))
  merged = merged_config.load(merged_params)
  batch = fake_batches(merged_config, 1, batch_size=2)[0]
  obs = _model.Observation.from_dict(batch)
  noise = np.random.default_rng(0).normal(size=batch["actions"].shape).astype(np.float32)

  def loss_and_actions(m):
    return (m.compute_loss(jax.random.key(0), obs, batch["actions"]),
            m.sample_actions(jax.random.key(1), obs, num_steps=3, noise=noise))

  for x, y in zip(loss_and_actions(lora_model), loss_and_actions(merged)):
    np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-4)
