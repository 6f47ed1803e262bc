"""Size configs by name or by fields: the one resolver behind gemma/siglip/gr00t/apt_expert `get_config`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


def resolve(cls, variants: Mapping[str, dict], variant, what: str):
  """`variant`: an instance of the dataclass `cls` (returned as is), a dict / ConfigDict of its fields, or a name in
  `variants`. Unknown fields or names raise a ValueError naming them (`what` names the config, e.g. "Gemma")."""
  if isinstance(variant, cls):
    return variant
  if isinstance(variant, dict) or hasattr(variant, "to_dict"):
    d = dict(variant.to_dict() if hasattr(variant, "to_dict") else variant)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"Unknown {what} config keys {sorted(unknown)}")
    return cls(**d)
  if variant not in variants:
    raise ValueError(f"Unknown {what} variant {variant!r}; known: {sorted(variants)} or a size dict")
  return cls(**variants[variant])
