"""Weight loaders: small objects that fill part of a freshly initialised param tree (openpi's pattern).

Each loader's `load(params) -> params` returns the model's params with its weights merged in, after checking that
every loaded key exists in the model with the same shape (errors name the key and both shapes).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import jax
import numpy as np

from apt_jax import checkpoints
from apt_jax import tree as tree_lib


def _checked_partial(params: dict, loaded: dict, *, what: str, allow_missing: str | None = None) -> dict:
  """Validates `loaded` against `params` (arrays or ShapeDtypeStructs; loaded ⊆ params, same shapes) and returns
  the loaded leaves cast to the params' dtypes."""
  tree_lib.check_tree(loaded, params, what=what, allow_missing=allow_missing or ".*")
  flat_p = tree_lib.flatten(params)
  flat_l = {k: np.asarray(v).astype(flat_p[k].dtype) for k, v in tree_lib.flatten(loaded).items()}
  logging.info("%s: loaded %d of %d param arrays", what, len(flat_l), len(flat_p))
  return tree_lib.unflatten(flat_l)


def _merge_checked(params: dict, loaded: dict, *, what: str, allow_missing: str | None = None) -> dict:
  """Validates `loaded` against `params` (loaded ⊆ params, same shapes) and merges it, cast to params' dtypes."""
  return tree_lib.merge(params, _checked_partial(params, loaded, what=what, allow_missing=allow_missing))


class _Loader:
  """`load_partial(params)` -> only the loaded leaves (validated, cast); `load(params)` -> params with them merged."""

  def load_partial(self, params) -> dict:
    raise NotImplementedError

  def load(self, params):
    return tree_lib.merge(params, self.load_partial(params))


@dataclasses.dataclass(frozen=True)
class NoOpWeightLoader(_Loader):
  def load_partial(self, params):
    return {}


@dataclasses.dataclass(frozen=True)
class PaliGemmaWeightLoader(_Loader):
  """Loads a big_vision PaliGemma `.npz` (flat keys `params/img/...`, `params/llm/...`) under `PaliGemma/`.

  Every key of the npz must exist in the model with the same shape, and every SigLIP / VLM key of the model must be
  in the npz; the expert (`_1`), fusion and projection params keep their fresh initialisation.
  """

  npz_path: str

  def load_partial(self, params):
    return _checked_partial(params, {"PaliGemma": load_paligemma_npz(self.npz_path)},
                          what=f"PaliGemma checkpoint {self.npz_path}", allow_missing=_NOT_IN_PALIGEMMA)


# Model keys a PaliGemma npz does not hold: everything outside PaliGemma/{img,llm}, the llm's extra experts (a path
# segment ending in `_1`, `_2`, ...: `q_einsum_1`, `mlp_1`, `fusion_1`, ...), APT fusion layers and LoRA. Any other key
# (SigLIP or the VLM) must be in the npz: a missing one would silently keep its random init.
_NOT_IN_PALIGEMMA = r"(?!PaliGemma/(img|llm)/).*|PaliGemma/llm/(.*/)?([^/]*_[1-9][0-9]*|fusion)(/.*)?|.*lora.*"


@dataclasses.dataclass(frozen=True)
class CheckpointWeightLoader(_Loader):
  """Loads an openpi-format params directory (e.g. pi0_base/params); keys it lacks keep their initialisation."""

  params_path: str

  def load_partial(self, params):
    loaded = checkpoints.restore_params(self.params_path, restore_type=np.ndarray)
    return _checked_partial(params, loaded, what=f"checkpoint {self.params_path}")


def load_paligemma_npz(path: str | os.PathLike) -> dict:
  """big_vision npz -> nested dict `{"img": ..., "llm": ...}` (the `params/` prefix removed)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"PaliGemma checkpoint not found: {path}")
  with np.load(path, allow_pickle=False) as f:
    flat = {k: f[k] for k in f.files}
  bad = sorted(k for k in flat if not k.startswith(("params/img/", "params/llm/")))
  if bad:
    raise tree_lib.TreeMismatchError(
        f"{path}: keys must start with 'params/img/' or 'params/llm/' (big_vision layout); got {bad[:5]}")
  return tree_lib.unflatten({k[len("params/"):]: v for k, v in flat.items()})


def save_paligemma_npz(path: str | os.PathLike, paligemma_params: dict) -> None:
  """Writes `{"img": ..., "llm": ...}` (the VLM part only: no `_1` expert keys) as a big_vision npz, atomically."""
  flat = {"params/" + k: np.asarray(jax.device_get(v)) for k, v in tree_lib.flatten(paligemma_params).items()}
  # Expert segments (`q_einsum_1`, `mlp_1`, ...) exist only in the llm; SigLIP has `LayerNorm_1`, `Dense_1`, ...
  expert = [k for k in flat
            if k.startswith("params/llm/") and any(re.search(r"_[1-9][0-9]*$", p) for p in k.split("/"))]
  if expert:
    raise ValueError(f"PaliGemma npz must hold the VLM only; found expert keys {expert[:3]}")
  tmp = os.fspath(path) + ".tmp.npz"
  np.savez(tmp, **flat)
  os.replace(tmp, path)


def create_weight_loader(cfg) -> _Loader:
  """From a config block `weight_loader`: kind in {"none", "paligemma_npz", "openpi"} and `path`."""
  kind = cfg.get("kind", "none") if cfg else "none"
  if kind == "none":
    return NoOpWeightLoader()
  if not cfg.get("path"):
    raise ValueError(f"weight_loader.kind={kind!r} needs weight_loader.path")
  if kind == "paligemma_npz":
    return PaliGemmaWeightLoader(cfg.path)
  if kind == "openpi":
    return CheckpointWeightLoader(cfg.path)
  raise ValueError(f"weight_loader.kind={kind!r}; expected none, paligemma_npz or openpi")
