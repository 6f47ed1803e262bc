"""Named small model sizes and tiny checkpoints for tests, benchmarks and debug configs (gemma's `gm.testing`).

`SIZES`: name -> Pi0Config size fields. tiny: unit and serving tests; debug: experiments/debug*.py (trains on CPU in
about a minute); small: the openpi parity fixture's sizes; medium: CPU benchmarks (3 cameras x 256 tokens + 48 prompt
tokens). The gr00t and apt_expert heads take the same VLM blocks with their own `dummy` expert variants.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np

from apt_jax import checkpoints
from apt_jax import policy_config as _policy_config
from apt_jax.data import normalize
from apt_jax.envs import libero
from apt_jax.models import pi0

_SIGLIP_56 = dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(56, 56))  # 16 tokens per 224x224 camera

SIZES = {
    "tiny": dict(
        paligemma_variant=dict(width=48, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16),
        action_expert_variant=dict(width=32, depth=2, mlp_dim=48, num_heads=2, num_kv_heads=1, head_dim=16),
        siglip_variant=_SIGLIP_56),
    "debug": dict(
        paligemma_variant=dict(width=64, depth=2, mlp_dim=128, num_heads=2, num_kv_heads=1, head_dim=32),
        action_expert_variant=dict(width=32, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=32),
        siglip_variant=_SIGLIP_56, vocab_size=256),
    "small": dict(
        paligemma_variant=dict(width=256, depth=4, mlp_dim=512, num_heads=4, num_kv_heads=1, head_dim=32),
        action_expert_variant=dict(width=128, depth=4, mlp_dim=256, num_heads=4, num_kv_heads=1, head_dim=32),
        siglip_variant=dict(width=64, depth=2, mlp_dim=128, num_heads=4), vocab_size=1024),
    "medium": dict(
        paligemma_variant=dict(width=512, depth=6, mlp_dim=2048, num_heads=8, num_kv_heads=1, head_dim=64),
        action_expert_variant=dict(width=256, depth=6, mlp_dim=1024, num_heads=8, num_kv_heads=1, head_dim=64),
        siglip_variant=dict(width=192, depth=6, mlp_dim=768, num_heads=4), vocab_size=4096),
}

ASSET_ID = "physical-intelligence/libero"  # openpi's asset id for LIBERO norm stats


def tiny_pi0_config(vocab_size: int, **overrides) -> pi0.Pi0Config:
  """π0 at the `tiny` size (float32, no remat, action horizon 4); `vocab_size` of the tokenizer used with it."""
  kwargs = dict(SIZES["tiny"], vocab_size=vocab_size, action_horizon=4, remat_policy="none", dtype="float32")
  return pi0.Pi0Config(**{**kwargs, **overrides})


def libero_norm_stats(seed: int = 0) -> dict[str, normalize.NormStats]:
  """Random but plausible LIBERO norm stats (state 8, actions 7), quantiles included."""
  rng = np.random.default_rng(seed)
  stats = lambda d: normalize.NormStats(mean=rng.normal(size=d), std=rng.uniform(0.5, 2.0, d),
                                        q01=-rng.uniform(1, 2, d), q99=rng.uniform(1, 2, d))
  return {"state": stats(libero.ENV.state_dim), "actions": stats(libero.ENV.action_dim)}


def write_tiny_checkpoint(step_dir: str | os.PathLike, model, tokenizer_path: str | os.PathLike, *,
                          policy_config: _policy_config.PolicyConfig | None = None) -> pathlib.Path:
  """A checkpoint step in apt_jax's layout: `model`'s params, its config, LIBERO norm stats under ASSET_ID, the
  tokenizer, and the policy config if given. -> step_dir."""
  step_dir = pathlib.Path(step_dir)
  checkpoints.save_params(step_dir / "params", model.params)
  checkpoints.write_assets(step_dir / "assets", model_config=model.config, norm_stats={ASSET_ID: libero_norm_stats()})
  shutil.copy(tokenizer_path, step_dir / "assets" / _policy_config.TOKENIZER_FILE)
  if policy_config is not None:
    _policy_config.write_policy_config(step_dir / "assets", policy_config)
  return step_dir


def fixture_model_kwargs(fixture_dir: str | os.PathLike) -> dict:
  """Pi0Config fields of an openpi parity fixture (../shared/testdata/openpi_pi0_tiny, openpi_pi05_tiny), read from
  its config.json (sizes are not hard-coded)."""
  c = json.loads((pathlib.Path(fixture_dir) / "config.json").read_text())
  p = c["pi0_config"]
  return dict(action_dim=p["action_dim"], action_horizon=p["action_horizon"], max_token_len=p["max_token_len"],
              paligemma_variant=c["gemma_configs"][p["paligemma_variant"]],
              action_expert_variant=c["gemma_configs"][p["action_expert_variant"]],
              siglip_variant=c["tiny_patches"]["siglip"], vocab_size=c["vocab_size"], pi05=p.get("pi05", False),
              discrete_state_input=p.get("discrete_state_input"))


def fixture_model_config(fixture_dir: str | os.PathLike, dtype: str = "float32") -> pi0.Pi0Config:
  return pi0.Pi0Config(dtype=dtype, **fixture_model_kwargs(fixture_dir))
