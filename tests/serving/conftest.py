"""Fixtures for the serving tests: a tiny π0 checkpoint in our step layout, policies on it, a background server."""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pytest

from apt_jax import policy as _policy
from apt_jax import policy_config as _policy_config
from apt_jax import serve
from apt_jax import testing
from apt_jax.models import tokenizer as _tokenizer


@pytest.fixture(scope="session")
def tiny_vocab(tiny_tokenizer_path) -> int:
  return _tokenizer.PaligemmaTokenizer(tiny_tokenizer_path).vocab_size


@pytest.fixture(scope="session")
def tiny_model(tiny_vocab):
  return testing.tiny_pi0_config(tiny_vocab).create(jax.random.key(0))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_model, tiny_tokenizer_path):
  """`<step>` of a plain π0 (apt_stage none), LIBERO, delta actions on the first 6 dims (openpi's pi0_libero)."""
  step = tmp_path_factory.mktemp("ckpt") / "1000"
  return testing.write_tiny_checkpoint(
      step, tiny_model, tiny_tokenizer_path,
      policy_config=_policy_config.PolicyConfig(env="libero", delta_action_dims=6, seed=0))


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
