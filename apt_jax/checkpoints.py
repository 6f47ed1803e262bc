"""Checkpoints in openpi's layout: the training `CheckpointManager` and the params I/O that serving and export use.

    <step>/params/                            openpi params item: Orbax PyTree, key paths end in `value` (EMA if on)
    <step>/train_state/                       step, optimizer state, and with EMA the raw params (training only)
    <step>/data_state/process_<i>.json        each process's data iterator state: a resumed run continues its stream
    <step>/assets/<asset_id>/norm_stats.json  openpi norm stats, one directory per asset (per-dataset stats included)
    <step>/assets/model_config.json           {"head": ..., "config": {...}}: the checkpoint rebuilds its model alone
    <step>/assets/policy_config.json          inference settings (apt_jax.policy_config), with tokenizer.model
`restore_params` reads openpi checkpoints (no model_config.json: pass a config) and ours; `save_params` writes the
same layout, so checkpoints move both ways. The rng is not saved: it is derived from the config's seed and the step.
A step that does not restore is set aside under `<checkpoints>/corrupt/` (never deleted) and training resumes from the
newest step that does (`CheckpointManager.restore_latest`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

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


def params_metadata(params_dir: str | os.PathLike) -> dict:
  """The stored params item's tree `{"params": {... "value": ArrayMetadata}}` (shapes and dtypes, no data)."""
  params_dir = _abs(params_dir)
  if not params_dir.exists():
    raise FileNotFoundError(f"No params checkpoint at {params_dir}")
  metadata = ocp.PyTreeCheckpointer().metadata(params_dir)
  item = metadata.item_metadata if hasattr(metadata, "item_metadata") else metadata
  item = dict(item.tree if hasattr(item, "tree") else item)
  if "params" not in item:
    raise tree_lib.TreeMismatchError(f"{params_dir}: top-level keys {sorted(item)}, expected 'params'")
  return item


def restore_params(params_dir: str | os.PathLike, *, dtype=None, sharding: jax.sharding.Sharding | None = None,
                   restore_type=jax.Array) -> dict:
  """Restores an openpi-format params item into a plain nested dict (the `value` suffixes stripped).

  Args:
    params_dir: the `params` directory of a checkpoint step (e.g. `<ckpt>/29999/params`).
    dtype: cast every leaf to this dtype on restore (openpi inference uses bfloat16).
    sharding: where to place arrays (default: replicated on the first local device). Ignored for np.ndarray.
    restore_type: jax.Array or np.ndarray.
  """
  params_dir = _abs(params_dir)
  item = params_metadata(params_dir)
  if restore_type is np.ndarray:
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype), item)
  else:
    if sharding is None:
      sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restore_args = jax.tree.map(
        lambda _: ocp.ArrayRestoreArgs(sharding=sharding, restore_type=jax.Array, dtype=dtype), item)
  restored = ocp.PyTreeCheckpointer().restore(params_dir, args=ocp.args.PyTreeRestore(item=item,
                                                                                       restore_args=restore_args))
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


def write_assets(assets_dir: str | os.PathLike, *, model_config=None,
                 norm_stats: Mapping[str, Mapping[str, normalize.NormStats]] | None = None,
                 policy_config=None) -> None:
  """Writes the assets of a checkpoint step: model config JSON, norm stats (`{asset_id: stats}`, each under
  `<asset_id>/`), and the inference settings (`policy_config.json`) with the tokenizer copied in as
  `tokenizer.model`, so that `python -m apt_jax.serve --checkpoint <step>` needs nothing else. `assets_dir` may be
  remote (gs://, epath)."""
  kw = dict(model_config=model_config, norm_stats=norm_stats, policy_config=policy_config)
  if "://" not in os.fspath(assets_dir):
    _write_assets(pathlib.Path(assets_dir), **kw)
    return
  with tempfile.TemporaryDirectory() as tmp:  # a bucket: written locally, then copied file by file
    _write_assets(pathlib.Path(tmp), **kw)
    for f in pathlib.Path(tmp).rglob("*"):
      if f.is_file():
        dst = epath.Path(assets_dir) / f.relative_to(tmp).as_posix()
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(f.read_bytes())


def _write_assets(assets_dir: pathlib.Path, *, model_config, norm_stats, policy_config) -> None:
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
  for asset_id, stats in (norm_stats or {}).items():
    if not asset_id:
      raise ValueError("norm stats need an asset id (e.g. 'physical-intelligence/libero'): config.asset_id")
    normalize.save(assets_dir / asset_id, stats)


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
  found = sorted(assets.glob(f"**/{normalize.FILE_NAME}"))
  names = [str(p.parent.relative_to(assets)) for p in found]
  if asset_id is not None:
    path = assets / asset_id / normalize.FILE_NAME
    if not path.exists():
      raise FileNotFoundError(f"No norm stats for asset_id {asset_id!r} at {path} (the checkpoint has: {names})")
    return path
  if len(found) > 1:
    raise ValueError(f"Several norm stats under {assets}: {names}; pass asset_id")
  return found[0] if found else None


class AssetsHandler(ocp.CheckpointHandler):
  """Writes a step's `assets/` (model config, norm stats) inside Orbax's commit, so it is as atomic as the rest."""

  def save(self, directory, args: AssetsSave):
    if jax.process_index() == 0:
      write_assets(epath.Path(directory), model_config=args.model_config, norm_stats=args.norm_stats,
                   policy_config=args.policy_config)

  def restore(self, directory, args=None):
    return epath.Path(directory)


@ocp.args.register_with_handler(AssetsHandler, for_save=True)
@dataclasses.dataclass
class AssetsSave(ocp.args.CheckpointArgs):
  model_config: object = None
  norm_stats: Mapping | None = None
  policy_config: object = None


@ocp.args.register_with_handler(AssetsHandler, for_restore=True)
@dataclasses.dataclass
class AssetsRestore(ocp.args.CheckpointArgs):
  pass


def _abs(path) -> epath.Path:
  """epath for local paths and buckets alike (gs://...); local ones made absolute, as Orbax wants them."""
  path = epath.Path(path)
  return path if "://" in os.fspath(path) else epath.Path(os.path.abspath(path))


def resolve_params_dir(path: str | os.PathLike) -> epath.Path:
  """A workdir, its checkpoints dir, a step dir, or a params dir (local or gs://) -> the params dir (latest step)."""
  path = _abs(path)
  if (path / "_METADATA").exists() or ((path / "_CHECKPOINT_METADATA").exists() and (path / "d").exists()):
    return path
  if (path / "params").is_dir():
    return path / "params"
  ckpt = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []
  if not steps:
    raise FileNotFoundError(f"No checkpoint found at {path} (expected a workdir, a step dir or a params dir)")
  return ckpt / str(steps[-1]) / "params"


DATA_STATE = "data_state"


def data_state_file(step_dir: str | os.PathLike, process_index: int) -> epath.Path:
  return epath.Path(step_dir) / DATA_STATE / f"process_{process_index}.json"


class DataStateHandler(ocp.CheckpointHandler):
  """Every process writes its own iterator state, `data_state/process_<i>.json`, into the step's temporary
  directory: Orbax's commit makes the step and all processes' data states visible together."""

  def save(self, directory, args: DataStateSave):
    path = epath.Path(directory) / f"process_{jax.process_index()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"process_index": jax.process_index(), "process_count": jax.process_count(),
                                "state": args.state}))

  def restore(self, directory, args=None):
    raise NotImplementedError("CheckpointManager.restore reads each process's data state itself")


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: dict = dataclasses.field(default_factory=dict)


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


def read_data_state(step_dir: str | os.PathLike, process_index: int, process_count: int) -> dict:
  """This process's data iterator state in a step; raises ValueError saying what is wrong (file, JSON, layout)."""
  path = data_state_file(step_dir, process_index)
  legacy = epath.Path(step_dir) / DATA_STATE / "metadata"  # before per-process files: process 0's state only
  if not path.exists() and process_count == 1 and legacy.exists():
    path = legacy
  if not path.exists():
    present = sorted(p.name for p in path.parent.glob("*")) if path.parent.is_dir() else []
    raise ValueError(f"{path} is missing (data_state holds {present}; this run is process {process_index} of "
                     f"{process_count})")
  try:
    payload = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e})") from None
  if path == legacy:
    return payload
  if not isinstance(payload, dict) or not {"process_index", "process_count", "state"} <= payload.keys():
    raise ValueError(f"{path}: expected keys process_index, process_count, state; got {payload!r:.200}")
  if (payload["process_index"], payload["process_count"]) != (process_index, process_count):
    raise ValueError(f"{path} was written by process {payload['process_index']} of {payload['process_count']}; "
                     f"this run is process {process_index} of {process_count}")
  return payload["state"]


def _check_item_files(step_dir: epath.Path) -> None:
  """The files every Orbax PyTree item needs: its OCDBT manifest and its tree metadata (JSON). Checked before Orbax
  reads them, whose errors for missing files say neither which file nor which item."""
  for item in ("params", "train_state"):
    for name in ("manifest.ocdbt", "_METADATA"):
      if not (step_dir / item / name).is_file():
        raise ValueError(f"{step_dir / item / name} is missing")
    try:
      json.loads((step_dir / item / "_METADATA").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{step_dir / item / '_METADATA'} is not valid JSON ({e})") from None


class CheckpointError(RuntimeError):
  """A checkpoint that does not restore; the message names the step directory and what is wrong."""


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0] if lines else ''}"[:800]


def _on_every_process(ok: bool) -> bool:
  """Whether `ok` holds on every process (each reads its own data state, so they can disagree)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


class CheckpointManager:
  """Orbax manager over the step layout above. `state` is apt_jax.train's TrainState (step, params, frozen,
  opt_state, ema_params); `restore` rebuilds one from the abstract state it is given. Keeps the newest
  `max_to_keep` steps (>= 2, so a broken newest step leaves one to fall back to) plus every `keep_period`-th."""

  def __init__(self, directory, *, max_to_keep: int = 2, keep_period: int | None = None, async_save: bool = True):
    if max_to_keep is not None and max_to_keep < 2:
      raise ValueError(f"max_to_keep={max_to_keep}: keep at least 2 steps, so that a step broken by a crash or a "
                       "full disk leaves an earlier one to resume from")
    self.directory = _abs(directory)  # a local path or a bucket (gs://...: Orbax writes it directly)
    self.mngr = ocp.CheckpointManager(
        self.directory,
        item_handlers={"params": ocp.PyTreeCheckpointHandler(), "train_state": ocp.PyTreeCheckpointHandler(),
                       DATA_STATE: DataStateHandler(), "assets": AssetsHandler()},
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period, create=True,
                                             enable_async_checkpointing=async_save,
                                             cleanup_tmp_directories=True))  # saves a crash interrupted

  def all_steps(self) -> list[int]:
    return sorted(self.mngr.all_steps())

  def latest_step(self) -> int | None:
    return self.mngr.latest_step()

  def step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def save(self, step: int, state, *, data_state: dict, model_config=None, norm_stats=None, policy_config=None):
    """Starts an async save of `step` (Orbax commits it atomically: a crash leaves no partial step)."""
    if step in self.mngr.all_steps():
      raise FileExistsError(f"checkpoint step {step} already exists at {self.step_dir(step)}")
    params = _optimizer.combine(state.ema_params if state.ema_params is not None else state.params, state.frozen)
    # openpi: with EMA, train_state keeps the raw params; without, params live only in the params item.
    train_state = {"step": state.step, "opt_state": state.opt_state,
                   "params": state.params if state.ema_params is not None else {}}
    self.mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.PyTreeSave({"params": add_value(params)}),
        train_state=ocp.args.PyTreeSave(train_state),
        data_state=DataStateSave(data_state),
        assets=AssetsSave(model_config=model_config, norm_stats=norm_stats, policy_config=policy_config)))

  def restore(self, step: int, abstract_state, shardings, freeze_filter) -> tuple[object, dict]:
    """-> (state placed by `shardings`, this process's data iterator state). `abstract_state`: a TrainState of
    ShapeDtypeStructs. Raises CheckpointError naming the step dir and what is wrong."""
    step_dir = self.step_dir(step)
    try:  # local files first, so that processes agree on the outcome before Orbax's collective restore
      _check_item_files(step_dir)
      data_state = read_data_state(step_dir, jax.process_index(), jax.process_count())
      problem = None
    except ValueError as e:
      data_state, problem = None, str(e)
    if not _on_every_process(problem is None):
      raise CheckpointError(f"{step_dir} does not restore: {problem or 'the files of another process do not'}")
    abstract = abstract_state
    params_abstract = _optimizer.combine(abstract.params, abstract.frozen)
    try:
      stored = strip_value(params_metadata(step_dir / "params")["params"])
      stored, metadata_error = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored), None
    except Exception as e:  # (a missing data file: the restore below says which one)
      stored, metadata_error = None, e
    if stored is not None:
      try:
        tree_lib.check_tree(stored, params_abstract, what=f"params of step {step}")
      except tree_lib.TreeMismatchError as e:
        raise CheckpointError(f"{step_dir} does not restore: {e}") from None
    with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
    params_target = jax.tree.map(with_sharding, params_abstract,
                                 _optimizer.combine(shardings.params, shardings.frozen))
    ema = abstract.ema_params is not None
    ts_target = {"step": with_sharding(abstract.step, shardings.step),
                 "opt_state": jax.tree.map(with_sharding, abstract.opt_state, shardings.opt_state),
                 "params": jax.tree.map(with_sharding, abstract.params, shardings.params) if ema else {}}
    args = lambda t: ocp.args.PyTreeRestore(item=t, restore_args=ocp.checkpoint_utils.construct_restore_args(t))
    try:
      r = self.mngr.restore(step, args=ocp.args.Composite(params=args({"params": add_value(params_target)}),
                                                          train_state=args(ts_target)))
    except Exception as e:  # (Orbax and tensorstore raise ValueError, FileNotFoundError, ...)
      raise CheckpointError(f"{step_dir} does not restore: {_first_line(e)}") from e
    if metadata_error is not None:
      raise CheckpointError(f"{step_dir} does not restore: params metadata: {_first_line(metadata_error)}")
    trainable, frozen = _optimizer.partition(strip_value(r.params["params"]), freeze_filter)
    ts = r.train_state
    if (stored_step := int(ts["step"].addressable_data(0))) != step:
      raise CheckpointError(f"{step_dir} does not restore: its train_state holds step {stored_step}")
    state = abstract.replace(step=ts["step"], params=ts["params"] if ema else trainable, frozen=frozen,
                             opt_state=ts["opt_state"], ema_params=trainable if ema else None)
    return state, data_state

  def restore_latest(self, abstract_state, shardings, freeze_filter) -> tuple[int, object, dict] | None:
    """The newest step that restores -> (step, state, data state); None when there is no step.

    A newer step that does not restore is reported (its path and what is wrong) and moved to `corrupt/` (never
    deleted: the resumed run saves that step number again). When no step restores, raises CheckpointError listing
    every step's problem and moves nothing.
    """
    broken = {}
    for step in reversed(self.all_steps()):
      try:
        state, data_state = self.restore(step, abstract_state, shardings, freeze_filter)
      except CheckpointError as e:
        logging.error("%s", e)
        broken[step] = e
        continue
      for bad in broken:
        self._set_aside(bad)
      if broken:
        logging.error("Resuming from step %d, the newest that restores; steps %s were moved to %s", step,
                      sorted(broken), self.directory / "corrupt")
      return step, state, data_state
    if broken:
      raise CheckpointError(f"No checkpoint step under {self.directory} restores:\n  " +
                            "\n  ".join(map(str, broken.values())))
    return None

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      dst = self.directory / "corrupt" / str(step)
      k = 1
      while dst.exists():
        dst, k = self.directory / "corrupt" / f"{step}_{k}", k + 1
      dst.parent.mkdir(exist_ok=True)
      shutil.move(self.step_dir(step), dst)
    _sync(f"apt_jax_set_aside_{step}")
    self.mngr.reload()

  def close(self):
    self.mngr.wait_until_finished()
    self.mngr.close()
