"""Shared fixtures for the data pipeline tests: tiny RLDS datasets written through data/rlds_builders."""

from __future__ import annotations

import numpy as np
import pytest

from apt_jax import configs
from apt_jax.data import builders

IMG = 16  # tiny images keep writing and decoding fast; the pipeline still resizes them to 224


@pytest.fixture(scope="session")
def rb():
  """The data/rlds_builders package (write_episodes, libero_features, ...)."""
  return builders.rlds_builders()


@pytest.fixture(scope="session")
def tokenizer_path() -> str:
  return str(configs.SAMPLE_TOKENIZER)


def libero_steps(length: int, *, episode: int = 0, instruction: str = "put the bowl on the plate",
                 state_dim: int = 8, action_dim: int = 7, channels: int = 3) -> list[dict]:
  """Steps with recognisable values: action[t, j] = 10 * (episode + 1) + t + j / 10, state[t, j] = -(t + 1) - j / 100.

  The base camera is a constant 40 * (t + 1) image (mod 256), the wrist camera constant 200.
  """
  steps = []
  for t in range(length):
    steps.append({
        "observation": {
            "image": np.full((IMG, IMG, channels), (40 * (t + 1)) % 256, np.uint8),
            "wrist_image": np.full((IMG, IMG, channels), 200, np.uint8),
            "state": (-(t + 1) - np.arange(state_dim) / 100).astype(np.float32),
            "joint_state": np.zeros(7, np.float32),
        },
        "action": (10 * (episode + 1) + t + np.arange(action_dim) / 10).astype(np.float32),
        "language_instruction": instruction,
    })
  return steps


def libero_config(data_dir, name: str, **overrides) -> dict:
  cfg = {
      "datasets": [{"name": name, "data_dir": str(data_dir), "adapter": "libero"}],
      "shuffle_buffer": 64,
      "episodes_per_block": 1,
      "num_workers": 1,
      "prefetch": 0,
  }
  cfg.update(overrides)
  return cfg


def make_loader(cfg, tokenizer_path, *, batch_size=1, action_horizon=4, shuffle=False, train=False, seed=0, **kw):
  from apt_jax.data import create_data_loader
  return create_data_loader(cfg, batch_size=batch_size, seed=seed, action_horizon=action_horizon, action_dim=32,
                            max_token_len=kw.pop("max_token_len", 48), tokenizer_path=tokenizer_path,
                            shuffle=shuffle, train=train, **kw)


@pytest.fixture(scope="session")
def steps_fn():
  return libero_steps


@pytest.fixture(scope="session")
def config_fn():
  return libero_config


@pytest.fixture(scope="session")
def loader_fn(tokenizer_path):
  return lambda cfg, **kw: make_loader(cfg, tokenizer_path, **kw)
