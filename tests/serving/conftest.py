"""Fixtures for the serving tests: a tiny π0 checkpoint in our step layout, policies on it, a background server."""

from __future__ import annotations

import contextlib
import shutil

import jax
import numpy as np
import pytest

from apt_jax import checkpoints
from apt_jax import policy as _policy
from apt_jax import serve
from apt_jax.data import normalize
from apt_jax.models import pi0
from apt_jax.models import tokenizer as _tokenizer

ASSET_ID = "physical-intelligence/libero"


def tiny_config(vocab_size: int, **kw) -> pi0.Pi0Config:
  return pi0.Pi0Config(
      paligemma_variant=dict(width=48, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16),
      action_expert_variant=dict(width=32, depth=2, mlp_dim=48, num_heads=2, num_kv_heads=1, head_dim=16),
      siglip_variant=dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(56, 56)),
      vocab_size=vocab_size, action_horizon=4, remat_policy="none", dtype="float32", **kw)


def libero_stats(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {
      "state": normalize.NormStats(mean=rng.normal(size=8), std=rng.uniform(0.5, 2.0, 8),
                                   q01=-rng.uniform(1, 2, 8), q99=rng.uniform(1, 2, 8)),
      "actions": normalize.NormStats(mean=rng.normal(size=7), std=rng.uniform(0.5, 2.0, 7),
                                     q01=-rng.uniform(1, 2, 7), q99=rng.uniform(1, 2, 7)),
  }


def write_checkpoint(step_dir, model, tokenizer_path, *, policy_config=None):
  """A checkpoint step in our layout: params, model config, LIBERO norm stats, tokenizer, policy config."""
  checkpoints.save_params(step_dir / "params", model.params)
  checkpoints.write_assets(step_dir / "assets", model_config=model.config, norm_stats=libero_stats(),
                           asset_id=ASSET_ID)
  shutil.copy(tokenizer_path, step_dir / "assets" / _policy.TOKENIZER_FILE)
  if policy_config is not None:
    _policy.write_policy_config(step_dir / "assets", policy_config)
  return step_dir


@pytest.fixture(scope="session")
def tiny_vocab(tiny_tokenizer_path) -> int:
  return _tokenizer.PaligemmaTokenizer(tiny_tokenizer_path).vocab_size


@pytest.fixture(scope="session")
def tiny_model(tiny_vocab):
  return tiny_config(tiny_vocab).create(jax.random.key(0))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_model, tiny_tokenizer_path):
  """`<step>` of a plain π0 (apt_stage none), LIBERO, delta actions on the first 6 dims (openpi's pi0_libero)."""
  step = tmp_path_factory.mktemp("ckpt") / "1000"
  return write_checkpoint(step, tiny_model, tiny_tokenizer_path,
                          policy_config=_policy.PolicyConfig(env="libero", delta_action_dims=6, seed=0))


@pytest.fixture(scope="session")
def tiny_policy(tiny_ckpt):
  """The policy as the server builds it (bfloat16 params, compute dtype float32 from the config), warmed up."""
  pol = _policy.create_trained_policy(tiny_ckpt)
  pol.warmup()
  return pol


def clone(pol: _policy.Policy, seed: int) -> _policy.Policy:
  """Same model and transforms, a fresh rng: two clones with one seed return the same actions call for call."""
  return _policy.Policy(pol.model, pol.transforms, pol.norm_stats, num_steps=pol.num_steps, seed=seed,
                        metadata=pol.metadata)


@contextlib.contextmanager
def running_server(pol, **kwargs):
  server = serve.PolicyServer(pol, host="127.0.0.1", port=0, **kwargs).start(timeout=30)
  try:
    yield server
  finally:
    server.stop(timeout=10)


@pytest.fixture
def rng():
  return np.random.default_rng(0)
