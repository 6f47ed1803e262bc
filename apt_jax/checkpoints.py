"""Checkpoints in openpi's layout: the training `CheckpointManager` and the params I/O that serving and export use.

    <step>/params/                            openpi params item: Orbax PyTree, key paths end in `value` (EMA if on)
    <step>/train_state/                       step, optimizer state, and with EMA the raw params (training only)
    <step>/data_state/                        the data iterator's JSON state, so a resumed run continues the stream
    <step>/assets/<asset_id>/norm_stats.json  openpi norm stats
    <step>/assets/model_config.json           {"head": ..., "config": {...}}: the checkpoint rebuilds its model alone
    <step>/assets/policy_config.json          inference settings (apt_jax.policy_config), with tokenizer.model
`restore_params` reads openpi checkpoints (no model_config.json: pass a config) and ours; `save_params` writes the
same layout, so checkpoints move both ways. The rng is not saved: it is derived from the config's seed and the step.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from apt_jax import optimizer as _optimizer
from apt_jax import policy_config as _policy_config
from apt_jax import tree as tree_lib
from apt_jax.data import normalize
from apt_jax.models import registry


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


MODEL_CONFIG_FILE = "model_config.json"


def write_assets(assets_dir: str | os.PathLike, *, model_config=None, norm_stats: dict | None = None,
                 asset_id: str | None = None, policy_config=None) -> None:
  """Writes the assets of a checkpoint step: model config JSON, norm stats under `<asset_id>/`, and the inference
  settings (`policy_config.json`) with the tokenizer copied in as `tokenizer.model`, so that
  `python -m apt_jax.serve --checkpoint <step>` needs nothing else."""
  assets_dir = pathlib.Path(assets_dir)
  assets_dir.mkdir(parents=True, exist_ok=True)
  if model_config is not None:
    registry.save_config(assets_dir / MODEL_CONFIG_FILE, model_config)
  if policy_config is not None:
    if policy_config.tokenizer_path:
      if not os.path.exists(policy_config.tokenizer_path):
        raise FileNotFoundError(f"tokenizer_path {policy_config.tokenizer_path} not found (config.tokenizer_path)")
      shutil.copyfile(policy_config.tokenizer_path, assets_dir / _policy_config.TOKENIZER_FILE)
      policy_config = dataclasses.replace(policy_config, tokenizer_path=_policy_config.TOKENIZER_FILE)
    _policy_config.write_policy_config(assets_dir, policy_config)
  if norm_stats is not None:
    if not asset_id:
      raise ValueError("asset_id is required to write norm stats (e.g. 'physical-intelligence/libero')")
    normalize.save(assets_dir / asset_id, norm_stats)


def load_model_config(step_dir: str | os.PathLike):
  """The model config stored in `<step>/assets/model_config.json`."""
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

  def save(self, directory, args: AssetsSave):
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


def resolve_params_dir(path: str | os.PathLike) -> pathlib.Path:
  """A workdir, its checkpoints dir, a step dir, or a params dir -> the params dir (latest step)."""
  path = pathlib.Path(path)
  if (path / "_METADATA").exists() or ((path / "_CHECKPOINT_METADATA").exists() and (path / "d").exists()):
    return path
  if (path / "params").is_dir():
    return path / "params"
  ckpt = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []
  if not steps:
    raise FileNotFoundError(f"No checkpoint found at {path} (expected a workdir, a step dir or a params dir)")
  return ckpt / str(steps[-1]) / "params"


class CheckpointManager:
  """Orbax manager over the step layout above. `state` is apt_jax.train's TrainState (step, params, frozen,
  opt_state, ema_params); `restore` rebuilds one from the abstract state it is given."""

  def __init__(self, directory, *, max_to_keep: int | None = 1, keep_period: int | None = None,
               async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    self.mngr = ocp.CheckpointManager(
        self.directory,
        item_handlers={"params": ocp.PyTreeCheckpointHandler(), "train_state": ocp.PyTreeCheckpointHandler(),
                       "data_state": ocp.JsonCheckpointHandler(), "assets": AssetsHandler()},
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period, create=True,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.mngr.latest_step()

  def save(self, step: int, state, *, data_state=None, model_config=None, norm_stats=None, asset_id=None,
           policy_config=None, force: bool = False):
    params = _optimizer.combine(state.ema_params if state.ema_params is not None else state.params, state.frozen)
    # openpi: with EMA, train_state keeps the raw params; without, params live only in the params item.
    train_state = {"step": state.step, "opt_state": state.opt_state,
                   "params": state.params if state.ema_params is not None else {}}
    self.mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.PyTreeSave({"params": add_value(params)}),
        train_state=ocp.args.PyTreeSave(train_state),
        data_state=ocp.args.JsonSave(data_state or {}),
        assets=AssetsSave(model_config=model_config, norm_stats=norm_stats, asset_id=asset_id,
                          policy_config=policy_config)),
        force=force)

  def restore(self, step: int, abstract_state, shardings, freeze_filter) -> tuple[object, dict]:
    """-> (state placed by `shardings`, data iterator state). `abstract_state`: a TrainState of ShapeDtypeStructs."""
    abstract = abstract_state
    with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
    params_target = jax.tree.map(with_sharding, _optimizer.combine(abstract.params, abstract.frozen),
                                 _optimizer.combine(shardings.params, shardings.frozen))
    ema = abstract.ema_params is not None
    ts_target = {"step": with_sharding(abstract.step, shardings.step),
                 "opt_state": jax.tree.map(with_sharding, abstract.opt_state, shardings.opt_state),
                 "params": jax.tree.map(with_sharding, abstract.params, shardings.params) if ema else {}}
    args = lambda t: ocp.args.PyTreeRestore(item=t, restore_args=ocp.checkpoint_utils.construct_restore_args(t))
    r = self.mngr.restore(step, args=ocp.args.Composite(
        params=args({"params": add_value(params_target)}), train_state=args(ts_target),
        data_state=ocp.args.JsonRestore()))
    trainable, frozen = _optimizer.partition(strip_value(r.params["params"]), freeze_filter)
    ts = r.train_state
    state = abstract.replace(step=ts["step"], params=ts["params"] if ema else trainable, frozen=frozen,
                             opt_state=ts["opt_state"], ema_params=trainable if ema else None)
    return state, r.data_state

  def close(self):
    self.mngr.wait_until_finished()
    self.mngr.close()
