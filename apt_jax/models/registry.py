"""Action heads by name, and model configs to/from JSON (so a checkpoint can rebuild its model alone).

Every head's config is a frozen dataclass subclassing model.VlaHeadConfig; choosing a head is one config field
(`model.head`). Heads register themselves lazily here, so adding one does not touch the others.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any

from apt_jax.models import model as _model

# head name -> "module:ConfigClass"
HEADS = {
    "pi0": "apt_jax.models.pi0:Pi0Config",
    "gr00t": "apt_jax.models.gr00t:Gr00tConfig",
    "apt_expert": "apt_jax.models.apt_expert:AptExpertConfig",
}


def config_class(head: str) -> type[_model.VlaHeadConfig]:
  if head not in HEADS:
    raise ValueError(f"Unknown model head {head!r}; known: {sorted(HEADS)}")
  module, cls = HEADS[head].split(":")
  return getattr(importlib.import_module(module), cls)


def head_name(config: _model.VlaHeadConfig) -> str:
  for name, path in HEADS.items():
    module, cls = path.split(":")
    if type(config).__module__ == module and type(config).__name__ == cls:
      return name
  raise ValueError(f"{type(config).__name__} is not a registered head")


def _to_jsonable(x: Any):
  if dataclasses.is_dataclass(x):
    return {f.name: _to_jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
  if isinstance(x, tuple):
    return list(x)
  return x


def config_to_dict(config: _model.VlaHeadConfig) -> dict:
  return {"head": head_name(config), "config": _to_jsonable(config)}


def config_from_dict(d: dict) -> _model.VlaHeadConfig:
  """Inverse of config_to_dict. Unknown fields raise, naming them."""
  if "head" not in d or "config" not in d:
    raise ValueError(f"Model config JSON needs 'head' and 'config'; got keys {sorted(d)}")
  cls = config_class(d["head"])
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = set(d["config"]) - fields
  if unknown:
    raise ValueError(f"Unknown {cls.__name__} fields in model config: {sorted(unknown)}")
  return cls(**d["config"])


def create_config(head: str, **kwargs) -> _model.VlaHeadConfig:
  """From an ml_collections `config.model` block: `create_config(config.model.head, **config.model.kwargs)`."""
  return config_from_dict({"head": head, "config": kwargs})


def save_config(path, config: _model.VlaHeadConfig) -> None:
  with open(path, "w") as f:
    json.dump(config_to_dict(config), f, indent=1)


def load_config(path) -> _model.VlaHeadConfig:
  with open(path) as f:
    return config_from_dict(json.load(f))
