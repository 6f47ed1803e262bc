"""Shape and dtype annotations (jaxtyping), checked at run time by beartype; imported as `at`.

`Float[Array, "*b ah ad"]` names the axes; inside one `@typecheck`ed call every use of a name must agree. Under jit
the checks run once, at trace time. Turn them off with `JAXTYPING_DISABLE=1` or `with at.disable_typechecking():`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import TypeVar

import beartype
import beartype.door
import jax
import jaxtyping
import numpy as np
from jaxtyping import Bool
from jaxtyping import Float
from jaxtyping import Int
from jaxtyping import Real

__all__ = ["Array", "Bool", "Float", "Int", "KeyArrayLike", "Real", "check_fields", "disable_typechecking", "enabled",
           "typecheck"]

# What the model contract accepts: device arrays (tracers under jit) and host NumPy arrays.
Array = jax.Array | np.ndarray
KeyArrayLike = jax.typing.ArrayLike

T = TypeVar("T", bound=Callable)


def typecheck(fn: T) -> T:
  """Checks the annotated arguments and return value of `fn` on every call (one shape context per call)."""
  return jaxtyping.jaxtyped(fn, typechecker=beartype.beartype)


def enabled() -> bool:
  return not jaxtyping.config.jaxtyping_disable


@contextlib.contextmanager
def disable_typechecking():
  before = jaxtyping.config.jaxtyping_disable
  jaxtyping.config.update("jaxtyping_disable", True)
  try:
    yield
  finally:
    jaxtyping.config.update("jaxtyping_disable", before)


@functools.cache
def _field_types(cls) -> dict:
  return typing.get_type_hints(cls)


def check_fields(obj) -> None:
  """Checks every field of the dataclass `obj` against its annotation, axis names shared across the fields.

  Skipped unless every leaf of the fields that are set is an array: JAX also rebuilds pytrees from placeholders
  (None, shardings, axis numbers, shape structs), and those are not values to check.
  """
  values = {field.name: getattr(obj, field.name) for field in dataclasses.fields(obj)}
  leaves = jax.tree.leaves([v for v in values.values() if v is not None], is_leaf=lambda x: x is None)
  if not enabled() or not all(isinstance(x, (jax.Array, np.ndarray)) for x in leaves):
    return
  types = _field_types(type(obj))
  with jaxtyping.jaxtyped("context"):
    for name, value in values.items():
      hint = types[name]
      # beartype checks one item of a dict per call; check every camera.
      items = value.items() if typing.get_origin(hint) is dict else [(None, value)]
      item_hint = typing.get_args(hint)[1] if typing.get_origin(hint) is dict else hint
      for key, item in items:
        if not beartype.door.is_bearable(item, item_hint):
          where = name if key is None else f"{name}[{key!r}]"
          got = "None" if item is None else f"{item.dtype}{list(item.shape)}"
          raise TypeError(f"{type(obj).__name__}.{where} is {got}; expected {item_hint} (axis names must agree "
                          "across the fields)")
