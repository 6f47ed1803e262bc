"""openpi-format params: Orbax PyTree items whose key paths end in `value` (nnx.State layout).

`restore_params` reads openpi checkpoints (e.g. pi0_base/params) and ours; `save_params` writes the same layout, so
checkpoints move both ways. The full training CheckpointManager (params / train_state / assets) builds on these.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from apt_jax import tree as tree_lib


def add_value(tree):
  return jax.tree.map(lambda x: {"value": x}, tree)


def strip_value(tree):
  flat = tree_lib.flatten(tree)
  out = {}
  for k, v in flat.items():
    if not k.endswith("/value"):
      raise tree_lib.TreeMismatchError(f"Checkpoint key {k!r} does not end in 'value': not an openpi params item")
    out[k[: -len("/value")]] = v
  return tree_lib.unflatten(out)


def restore_params(params_dir: str | os.PathLike, *, dtype=None, sharding: jax.sharding.Sharding | None = None,
                   restore_type=jax.Array) -> dict:
  """Restores an openpi-format params item into a plain nested dict (the `value` suffixes stripped).

  Args:
    params_dir: the `params` directory of a checkpoint step (e.g. `<ckpt>/29999/params`).
    dtype: cast every leaf to this dtype on restore (openpi inference uses bfloat16).
    sharding: where to place arrays (default: replicated on the first local device). Ignored for np.ndarray.
    restore_type: jax.Array or np.ndarray.
  """
  params_dir = pathlib.Path(params_dir).absolute()
  if not params_dir.exists():
    raise FileNotFoundError(f"No params checkpoint at {params_dir}")
  ckptr = ocp.PyTreeCheckpointer()
  metadata = ckptr.metadata(params_dir)
  item = metadata.item_metadata if hasattr(metadata, "item_metadata") else metadata
  item = dict(item.tree if hasattr(item, "tree") else item)
  if "params" not in item:
    raise tree_lib.TreeMismatchError(f"{params_dir}: top-level keys {sorted(item)}, expected 'params'")
  if restore_type is np.ndarray:
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype), item)
  else:
    if sharding is None:
      sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restore_args = jax.tree.map(
        lambda _: ocp.ArrayRestoreArgs(sharding=sharding, restore_type=jax.Array, dtype=dtype), item)
  restored = ckptr.restore(params_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args))
  return strip_value(restored["params"])


def save_params(params_dir: str | os.PathLike, params: dict, *, force: bool = False) -> None:
  """Writes params in openpi's layout: one PyTree item `{"params": ...}` with every key ending in `value`.

  The write is atomic (Orbax writes to a temporary directory and renames it on commit).
  """
  params_dir = pathlib.Path(params_dir).absolute()
  params = jax.tree.map(lambda x: x if isinstance(x, (jax.Array, np.ndarray)) else np.asarray(x), params)
  ckptr = ocp.PyTreeCheckpointer()
  ckptr.save(params_dir, args=ocp.args.PyTreeSave({"params": add_value(params)}), force=force)


def cast_floating(tree, dtype):
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


# --- Checkpoint step layout (openpi's, plus our model config) -------------------------------------------------------
#   <step>/params/                          openpi params item (restore_params / save_params)
#   <step>/train_state/                     optimizer state, step, rng, data iterator state (training only)
#   <step>/assets/<asset_id>/norm_stats.json  openpi norm stats
#   <step>/assets/model_config.json         {"head": ..., "config": {...}} so a checkpoint rebuilds its model alone;
#                                           openpi ignores it. Absent in openpi checkpoints: pass a config instead.
MODEL_CONFIG_FILE = "model_config.json"


def write_assets(assets_dir: str | os.PathLike, *, model_config=None, norm_stats: dict | None = None,
                 asset_id: str | None = None, policy_config=None) -> None:
  """Writes the assets of a checkpoint step: model config JSON, norm stats under `<asset_id>/`, and the inference
  settings (`policy_config.json`, apt_jax.policy.PolicyConfig) with the tokenizer copied in as `tokenizer.model`,
  so that `python -m apt_jax.serve --checkpoint <step>` needs nothing else."""
  from apt_jax.data import normalize
  from apt_jax.models import registry

  assets_dir = pathlib.Path(assets_dir)
  assets_dir.mkdir(parents=True, exist_ok=True)
  if model_config is not None:
    registry.save_config(assets_dir / MODEL_CONFIG_FILE, model_config)
  if policy_config is not None:
    import shutil

    from apt_jax import policy as _policy

    if policy_config.tokenizer_path:
      if not os.path.exists(policy_config.tokenizer_path):
        raise FileNotFoundError(f"tokenizer_path {policy_config.tokenizer_path} not found (config.tokenizer_path)")
      shutil.copyfile(policy_config.tokenizer_path, assets_dir / _policy.TOKENIZER_FILE)
      policy_config = dataclasses.replace(policy_config, tokenizer_path=_policy.TOKENIZER_FILE)
    _policy.write_policy_config(assets_dir, policy_config)
  if norm_stats is not None:
    if not asset_id:
      raise ValueError("asset_id is required to write norm stats (e.g. 'physical-intelligence/libero')")
    normalize.save(assets_dir / asset_id, norm_stats)


def load_model_config(step_dir: str | os.PathLike):
  """The model config stored in `<step>/assets/model_config.json`."""
  from apt_jax.models import registry

  path = pathlib.Path(step_dir) / "assets" / MODEL_CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: not an apt_jax checkpoint (an openpi checkpoint needs an explicit "
                            "model config, e.g. --config experiments/pi0_libero.py)")
  return registry.load_config(path)


def find_norm_stats(step_dir: str | os.PathLike, asset_id: str | None = None) -> pathlib.Path | None:
  """`<step>/assets/<asset_id>/norm_stats.json`; without asset_id, the only one there (None if there is none)."""
  assets = pathlib.Path(step_dir) / "assets"
  if asset_id is not None:
    path = assets / asset_id / "norm_stats.json"
    if not path.exists():
      raise FileNotFoundError(f"No norm stats for asset_id {asset_id!r} at {path}")
    return path
  found = sorted(assets.glob("**/norm_stats.json"))
  if len(found) > 1:
    raise ValueError(f"Several norm stats under {assets}: {[str(p.relative_to(assets)) for p in found]}; "
                     "pass asset_id")
  return found[0] if found else None


class AssetsHandler(ocp.CheckpointHandler):
  """Writes a step's `assets/` (model config, norm stats) inside Orbax's commit, so it is as atomic as the rest."""

  def save(self, directory, args: "AssetsSave"):
    if jax.process_index() == 0:
      write_assets(directory, model_config=args.model_config, norm_stats=args.norm_stats, asset_id=args.asset_id,
                   policy_config=args.policy_config)

  def restore(self, directory, args=None):
    return pathlib.Path(directory)


@ocp.args.register_with_handler(AssetsHandler, for_save=True)
@dataclasses.dataclass
class AssetsSave(ocp.args.CheckpointArgs):
  model_config: object = None
  norm_stats: dict | None = None
  asset_id: str | None = None
  policy_config: object = None


@ocp.args.register_with_handler(AssetsHandler, for_restore=True)
@dataclasses.dataclass
class AssetsRestore(ocp.args.CheckpointArgs):
  pass
