"""The inference settings that are not part of the model (`PolicyConfig`), and their file in a checkpoint:
`<step>/assets/policy_config.json`, next to the tokenizer copied in as `<step>/assets/tokenizer.model`.

A leaf module: checkpoints.py writes these files, policy.py reads them, and training derives them from its
experiment config (`policy_config_from_experiment`) without importing the serving code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from apt_jax import envs as _envs
from apt_jax.data import config as _data_config

POLICY_CONFIG_FILE = "policy_config.json"
TOKENIZER_FILE = "tokenizer.model"


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  """Inference settings beyond the model config (stored as `<step>/assets/policy_config.json`)."""

  env: str = "libero"
  # Action dims predicted relative to the state (int k: the first k dims; or a bool list); openpi's pi0_libero: 6.
  delta_action_dims: int | tuple[bool, ...] | None = None
  use_quantile_norm: bool = False
  # The model reads normalized states and writes normalized actions: serving needs the norm stats
  # (assets/<asset_id>/norm_stats.json) and fails without them unless told to serve unnormalized.
  normalized: bool = True
  # A prompt longer than the model's max_token_len is an error (as in training) unless this is set.
  truncate_prompt: bool = False
  default_prompt: str | None = None
  # Relative paths are resolved against the checkpoint's assets dir.
  tokenizer_path: str | None = None
  asset_id: str | None = None
  num_steps: int = 10
  seed: int = 0
  env_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    if isinstance(d["delta_action_dims"], tuple):
      d["delta_action_dims"] = list(d["delta_action_dims"])
    d["env_kwargs"] = dict(d["env_kwargs"])
    return d

  @classmethod
  def from_json(cls, d: Mapping) -> PolicyConfig:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"Unknown policy config fields {unknown}; known: {sorted(known)}")
    d = dict(d)
    if isinstance(d.get("delta_action_dims"), list):
      d["delta_action_dims"] = tuple(bool(x) for x in d["delta_action_dims"])
    return cls(**d)


def policy_config_from_experiment(config) -> PolicyConfig:
  """Inference settings implied by a training experiment config (`experiments/*.py`): the data's delta actions,
  normalization and default prompt, the env of its first dataset's adapter, the tokenizer, and the asset id of the
  norm stats: the run's `asset_id`, or with per-dataset stats only, the one dataset's name (several: none, serving
  then needs `--asset_id`)."""
  data = _data_config.parse_data_config(config.data)
  adapter = data.datasets[0].adapter if data.datasets else PolicyConfig.env
  own_stats = [e.name for e in data.datasets if e.norm_stats_path]
  asset_id = config.asset_id or None
  if not data.norm_stats_path and own_stats:
    asset_id = own_stats[0] if len(own_stats) == 1 else None
  return PolicyConfig(
      env=adapter if adapter in _envs.ENVS else PolicyConfig.env,  # e.g. oxe_generic data: no request layout
      delta_action_dims=data.delta_action_dims,
      use_quantile_norm=data.use_quantile_norm,
      normalized=bool(data.norm_stats_path or own_stats),
      default_prompt=data.default_prompt,
      tokenizer_path=config.tokenizer_path or None,
      asset_id=asset_id)


def write_policy_config(assets_dir: str | os.PathLike, config: PolicyConfig) -> pathlib.Path:
  path = pathlib.Path(assets_dir) / POLICY_CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(config.to_json(), indent=1))
  return path


def read_policy_config(step_dir: str | os.PathLike) -> PolicyConfig | None:
  path = pathlib.Path(step_dir) / "assets" / POLICY_CONFIG_FILE
  if not path.exists():
    return None
  return PolicyConfig.from_json(json.loads(path.read_text()))
