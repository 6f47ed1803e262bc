"""Small pytree helpers: "/"-joined flat views and structure checks whose errors name the keys."""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax
import numpy as np
from flax import traverse_util


def flatten(tree: Mapping, sep: str = "/") -> dict:
  return traverse_util.flatten_dict(tree, sep=sep)


def unflatten(flat: Mapping, sep: str = "/") -> dict:
  return traverse_util.unflatten_dict(dict(flat), sep=sep)


def shapes(tree) -> dict:
  return {k: tuple(np.shape(v)) for k, v in flatten(tree).items()}


class TreeMismatchError(ValueError):
  """Raised when a loaded tree does not fit the expected one; the message names every offending key."""


def check_tree(got: Mapping, want: Mapping, *, what: str = "params", check_shapes: bool = True,
               check_dtypes: bool = False, allow_missing: str | None = None, allow_extra: str | None = None):
  """Compares two nested dicts of arrays (or ShapeDtypeStructs).

  allow_missing / allow_extra are regexes over "/"-joined keys that may be absent from `got` / only in `got`.
  Raises TreeMismatchError listing missing keys, extra keys and mis-shaped keys with both shapes.
  """
  g, w = flatten(got), flatten(want)
  missing = sorted(k for k in w.keys() - g.keys() if not (allow_missing and re.fullmatch(allow_missing, k)))
  extra = sorted(k for k in g.keys() - w.keys() if not (allow_extra and re.fullmatch(allow_extra, k)))
  problems = []
  if missing:
    problems.append("missing keys: " + ", ".join(missing))
  if extra:
    problems.append("unexpected keys: " + ", ".join(extra))
  for k in sorted(g.keys() & w.keys()):
    gs, ws = tuple(np.shape(g[k])), tuple(np.shape(w[k]))
    if check_shapes and gs != ws:
      problems.append(f"{k}: shape {gs} in {what}, expected {ws}")
    if check_dtypes and np.dtype(g[k].dtype) != np.dtype(w[k].dtype):
      problems.append(f"{k}: dtype {g[k].dtype} in {what}, expected {w[k].dtype}")
  if problems:
    raise TreeMismatchError(f"{what} do not match the model:\n  " + "\n  ".join(problems))


def merge(base: Mapping, update: Mapping) -> dict:
  """Returns base with every leaf that `update` has replaced (both nested dicts)."""
  out = flatten(base)
  out.update(flatten(update))
  return unflatten(out)


def tree_size(tree) -> int:
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))
