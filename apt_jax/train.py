"""Training: `python -m apt_jax.train --config experiments/<name>.py[:arg] --workdir DIR [--config.x=y ...]`.

One pure, jitted `train_step(ctx, rng, state, batch) -> (state, metrics)` serves every stage and head: the stage
only changes the model config (which params exist, which are frozen) and the initialisation (Stage 2 starts from a
Stage 1 checkpoint via `--config.init_from`). Init order: resume from `<workdir>/checkpoints` if it has a step, else
`init_from` (Stage 1 -> Stage 2), else the weight loader (PaliGemma npz / openpi checkpoint), else scratch.

Letters: B global batch, AH action horizon, AD action dim.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from apt_jax import checkpoints
from apt_jax import optimizer as _optimizer
from apt_jax import sharding as _sharding
from apt_jax import tree as tree_lib
from apt_jax import weight_loaders
from apt_jax.models import cotrain as _cotrain
from apt_jax.models import model as _model
from apt_jax.models import registry


@flax.struct.dataclass
class TrainState:
  """step; trainable params (float32) and their optimizer state; frozen params (no optimizer state); EMA."""

  step: jax.Array
  params: dict
  frozen: dict
  opt_state: Any
  ema_params: dict | None = None


@dataclasses.dataclass(frozen=True)
class StepContext:
  """Everything static that `train_step` needs (closed over by jit)."""

  model_config: _model.BaseModelConfig
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  ema_decay: float | None = None
  grad_accum_steps: int = 1
  train_augment: bool = True
  mesh: Any = None
  # Knowledge insulation's VL co-training: weight of the VLM's prefix-LM loss when a batch carries "vl".
  vl_cotrain_weight: float = 1.0


def model_config_from(config) -> _model.BaseModelConfig:
  return registry.create_config(config.model.head, **config.model.kwargs.to_dict())


def _loss_fn(ctx: StepContext, trainable, frozen, rng, batch):
  """-> (loss, parts). With a "vl" sub-batch (knowledge insulation's VL co-training, any head), the VLM's own
  prefix-LM loss is added at weight `ctx.vl_cotrain_weight`."""
  params = _optimizer.combine(trainable, frozen)
  model = ctx.model_config.model_class()(config=ctx.model_config, params=params)
  obs = _model.Observation.from_dict(batch)
  action_loss = jnp.mean(model.compute_loss(rng, obs, batch["actions"], train=ctx.train_augment))
  if "vl" not in batch:
    return action_loss, {}
  vl_loss = _cotrain.vl_loss(model, batch["vl"])
  return action_loss + ctx.vl_cotrain_weight * vl_loss, {"action_loss": action_loss, "vl_loss": vl_loss}


def train_step(ctx: StepContext, rng, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One optimizer step on a global batch (dict in openpi's layout, images uint8 or float)."""
  train_rng = jax.random.fold_in(rng, state.step)
  batch = jax.tree.map(lambda x: _sharding.activation_constraint(x, ctx.mesh), batch)
  grad_fn = jax.value_and_grad(functools.partial(_loss_fn, ctx), has_aux=True)
  if ctx.grad_accum_steps == 1:
    (loss, parts), grads = grad_fn(state.params, state.frozen, train_rng, batch)
  else:
    # Gradient accumulation: mean of micro-batch gradients (equal micro-batch sizes, so equal to the full batch).
    n = ctx.grad_accum_steps
    micro = jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)

    def body(carry, xs):
      i, mb = xs
      out = grad_fn(state.params, state.frozen, jax.random.fold_in(train_rng, i), mb)
      return jax.tree.map(jnp.add, carry, out), None

    zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state.params, state.frozen, train_rng,
                                                       jax.tree.map(lambda x: x[0], micro)))
    ((loss, parts), grads), _ = jax.lax.scan(body, zero, (jnp.arange(n), micro))
    loss, parts, grads = jax.tree.map(lambda x: x / n, (loss, parts, grads))

  updates, opt_state = ctx.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  if ctx.ema_decay is not None:
    new_state = new_state.replace(ema_params=_optimizer.ema_update(state.ema_params, params, ctx.ema_decay))

  metrics = {"loss": loss, **parts, "grad_norm": optax.global_norm(grads),
             "param_norm": _optimizer.kernel_norm(_optimizer.combine(params, state.frozen)),
             "lr": ctx.schedule(state.step)}
  for k, v in tree_lib.flatten(params).items():
    if k.endswith("/gate"):  # APT Stage 2 fusion gates: mean |α| over layers/channels.
      metrics["gate/" + k[: -len("/gate")]] = jnp.mean(jnp.abs(v))
  return new_state, metrics


# --- Initialisation ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
  ctx: StepContext
  state_shardings: Any
  abstract_state: TrainState
  is_frozen: Any


def make_setup(config, model_config, mesh) -> Setup:
  abstract_params = model_config.abstract_params()
  is_frozen = model_config.freeze_filter
  trainable, _ = _optimizer.partition(abstract_params, is_frozen)
  schedule = _optimizer.create_schedule(config.schedule)
  tx = _optimizer.create_optimizer(config.optimizer, trainable, schedule,
                                   vlm_lr_multiplier=getattr(model_config, "vlm_lr_multiplier", 1.0))
  ctx = StepContext(model_config=model_config, tx=tx, schedule=schedule, ema_decay=config.get("ema_decay"),
                    grad_accum_steps=config.get("grad_accum_steps", 1), train_augment=config.get("train_augment", True),
                    mesh=mesh, vl_cotrain_weight=config.get("vl_cotrain_weight", 1.0))
  abstract_state = jax.eval_shape(lambda: _init_state(config, ctx, is_frozen, jax.random.key(0), {}))
  shardings = _sharding.fsdp_sharding(abstract_state, mesh, min_fsdp_mbytes=config.mesh.get("min_fsdp_mbytes", 4.0))
  return Setup(ctx, shardings, abstract_state, is_frozen)


def _init_state(config, ctx: StepContext, is_frozen, rng, partial_params) -> TrainState:
  params = ctx.model_config.create(rng).params
  if partial_params:
    params = tree_lib.merge(params, partial_params)
  trainable, frozen = _optimizer.partition(params, is_frozen)
  if config.get("frozen_dtype"):  # openpi keeps frozen weights in bf16.
    frozen = jax.tree.map(lambda x: x.astype(config.frozen_dtype), frozen)
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable, frozen=frozen, opt_state=ctx.tx.init(trainable),
                    ema_params=trainable if ctx.ema_decay is not None else None)


def init_train_state(config, setup: Setup, rng, partial_params: dict | None = None) -> TrainState:
  """Params are created already sharded (jit with out_shardings); loaded weights are merged inside the jit."""
  partial_params = partial_params or {}
  abstract_params = tree_lib.flatten(_optimizer.combine(setup.abstract_state.params, setup.abstract_state.frozen))
  param_shardings = tree_lib.flatten(_optimizer.combine(setup.state_shardings.params, setup.state_shardings.frozen))
  partial = tree_lib.unflatten({k: jax.device_put(np.asarray(v, abstract_params[k].dtype), param_shardings[k])
                                for k, v in tree_lib.flatten(partial_params).items()})
  init = jax.jit(functools.partial(_init_state, config, setup.ctx, setup.is_frozen),
                 out_shardings=setup.state_shardings, donate_argnums=(1,))
  return init(rng, partial)


def resolve_params_dir(path: str | os.PathLike) -> pathlib.Path:
  """A workdir, its checkpoints dir, a step dir, or a params dir -> the params dir (latest step)."""
  path = pathlib.Path(path)
  if (path / "_METADATA").exists() or (path / "_CHECKPOINT_METADATA").exists() and (path / "d").exists():
    return path
  if (path / "params").is_dir():
    return path / "params"
  ckpt = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []
  if not steps:
    raise FileNotFoundError(f"No checkpoint found at {path} (expected a workdir, a step dir or a params dir)")
  return ckpt / str(steps[-1]) / "params"


def load_initial_params(config, model_config, abstract_params) -> dict:
  """Partial params from `init_from` (Stage 1 -> Stage 2) or the weight loader; {} for scratch."""
  if config.get("init_from"):
    params_dir = resolve_params_dir(config.init_from)
    stage1 = checkpoints.restore_params(params_dir, restore_type=np.ndarray)
    partial, restored, new = model_config.stage2_partial_params(stage1, abstract_params)
    logging.info("init_from %s: restored %d params, initialised %d new: %s", params_dir, len(restored), len(new), new)
    return partial
  return weight_loaders.create_weight_loader(config.get("weight_loader")).load_partial(abstract_params)


# --- Checkpoints ------------------------------------------------------------------------------------------------


class CheckpointManager:
  """Orbax manager with openpi's items: `params` (EMA if enabled, openpi layout), `train_state`, `assets`; plus
  `data_state` (the data iterator's JSON state, so a resumed run continues the same stream)."""

  def __init__(self, directory, *, max_to_keep: int | None = 1, keep_period: int | None = None,
               async_save: bool = True):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.directory = pathlib.Path(directory).absolute()
    self.mngr = ocp.CheckpointManager(
        self.directory,
        item_handlers={"params": ocp.PyTreeCheckpointHandler(), "train_state": ocp.PyTreeCheckpointHandler(),
                       "data_state": ocp.JsonCheckpointHandler(), "assets": checkpoints.AssetsHandler()},
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period, create=True,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.mngr.latest_step()

  def save(self, step: int, state: TrainState, *, data_state=None, model_config=None, norm_stats=None,
           asset_id=None, policy_config=None, force: bool = False):
    ocp = self._ocp
    params = _optimizer.combine(state.ema_params if state.ema_params is not None else state.params, state.frozen)
    # openpi: with EMA, train_state keeps the raw params; without, params live only in the params item.
    train_state = {"step": state.step, "opt_state": state.opt_state,
                   "params": state.params if state.ema_params is not None else {}}
    self.mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.PyTreeSave({"params": checkpoints.add_value(params)}),
        train_state=ocp.args.PyTreeSave(train_state),
        data_state=ocp.args.JsonSave(data_state or {}),
        assets=checkpoints.AssetsSave(model_config=model_config, norm_stats=norm_stats, asset_id=asset_id,
                                      policy_config=policy_config)),
        force=force)

  def restore(self, step: int, setup: Setup) -> tuple[TrainState, dict]:
    ocp = self._ocp
    abstract, shardings = setup.abstract_state, setup.state_shardings
    with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
    params_target = jax.tree.map(with_sharding, _optimizer.combine(abstract.params, abstract.frozen),
                                 _optimizer.combine(shardings.params, shardings.frozen))
    ema = abstract.ema_params is not None
    ts_target = {"step": with_sharding(abstract.step, shardings.step),
                 "opt_state": jax.tree.map(with_sharding, abstract.opt_state, shardings.opt_state),
                 "params": jax.tree.map(with_sharding, abstract.params, shardings.params) if ema else {}}
    args = lambda t: ocp.args.PyTreeRestore(item=t, restore_args=ocp.checkpoint_utils.construct_restore_args(t))
    r = self.mngr.restore(step, args=ocp.args.Composite(
        params=args({"params": checkpoints.add_value(params_target)}), train_state=args(ts_target),
        data_state=ocp.args.JsonRestore()))
    saved = checkpoints.strip_value(r.params["params"])
    trainable, frozen = _optimizer.partition(saved, setup.is_frozen)
    ts = r.train_state
    state = TrainState(step=ts["step"], params=ts["params"] if ema else trainable, frozen=frozen,
                       opt_state=ts["opt_state"], ema_params=trainable if ema else None)
    return state, r.data_state

  def wait(self):
    self.mngr.wait_until_finished()

  def close(self):
    self.mngr.wait_until_finished()
    self.mngr.close()


# --- Metrics ----------------------------------------------------------------------------------------------------


class MetricWriter:
  """metrics.jsonl + TensorBoard scalars in the workdir (process 0 only)."""

  def __init__(self, workdir: pathlib.Path, enabled: bool = True):
    self.enabled = enabled
    self.path = workdir / "metrics.jsonl"
    self._tb = None
    if enabled:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(workdir / "tensorboard"))
      except ImportError:  # pragma: no cover
        logging.warning("tensorboardX not installed: no TensorBoard scalars")

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **metrics}) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(k, v, step)

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def plot_losses(workdirs: dict[str, str | os.PathLike], out_png) -> None:
  """Loss curves of one or several runs (e.g. Stage 1 and Stage 2) into one PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for name, wd in workdirs.items():
    rows = [r for r in read_metrics(wd) if "loss" in r]
    if rows:
      ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_yscale("log")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)


# --- Data -------------------------------------------------------------------------------------------------------


class FakeData:
  """Random batches shaped by the model's inputs_spec (config.data.kind == "fake"); resumable (state = count)."""

  def __init__(self, model_config, batch_size: int, seed: int, process_index: int = 0):
    self.model_config, self.batch_size, self.seed, self.process_index = model_config, batch_size, seed, process_index
    self.count = 0

  def __next__(self):
    rng = np.random.default_rng([self.seed, self.process_index, self.count])
    self.count += 1
    obs, act = self.model_config.inputs_spec(batch_size=self.batch_size)
    batch = {"image": {k: rng.integers(0, 256, v.shape, np.uint8) for k, v in obs.images.items()},
             "image_mask": {k: np.ones(v.shape, bool) for k, v in obs.image_masks.items()},
             "state": rng.normal(size=obs.state.shape).astype(np.float32),
             "tokenized_prompt": rng.integers(1, 100, obs.tokenized_prompt.shape).astype(np.int32),
             "tokenized_prompt_mask": np.ones(obs.tokenized_prompt_mask.shape, bool),
             "actions": rng.normal(size=act.shape).astype(np.float32)}
    return batch

  def get_state(self):
    return {"count": self.count}

  def set_state(self, state):
    self.count = int(state["count"])


def create_data(config, model_config):
  """The per-process data iterator for `config.data`."""
  local_batch = config.batch_size // jax.process_count()
  if config.data.get("kind", "rlds") == "fake":
    return FakeData(model_config, local_batch, config.seed, jax.process_index())
  from apt_jax import data as _data

  data_cfg = {k: v for k, v in config.data.to_dict().items() if k != "kind"}
  return _data.create_data_loader(
      data_cfg, batch_size=config.batch_size, seed=config.seed, action_horizon=model_config.action_horizon,
      action_dim=model_config.action_dim, max_token_len=model_config.max_token_len,
      tokenizer_path=config.tokenizer_path, process_index=jax.process_index(), process_count=jax.process_count())


MODEL_KEYS = ("image", "image_mask", "state", "tokenized_prompt", "tokenized_prompt_mask", "actions", "vl")


def to_global_batch(local_batch: dict, mesh) -> dict:
  """Per-process numpy batch -> global jax arrays sharded over (data, fsdp)."""
  sharding = _sharding.data_sharding(mesh)
  local_batch = {k: local_batch[k] for k in MODEL_KEYS if k in local_batch}
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def load_norm_stats(config):
  path = config.data.get("norm_stats_path") if config.get("data") else None
  if not path:
    return None
  from apt_jax.data import normalize
  return normalize.load(path)


# --- Main loop --------------------------------------------------------------------------------------------------


def maybe_initialize_distributed(config):
  d = config.get("distributed")
  if d and d.get("num_processes", 1) > 1:
    jax.distributed.initialize(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                               process_id=d.process_id, local_device_ids=d.get("local_device_ids"))


def validate_config(config):
  n = jax.device_count()
  if config.batch_size % n:
    raise ValueError(f"batch_size={config.batch_size} must be divisible by the number of devices ({n})")
  if config.batch_size % config.get("grad_accum_steps", 1):
    raise ValueError(f"batch_size={config.batch_size} must be divisible by grad_accum_steps")
  if config.get("init_from") and config.model.kwargs.get("apt_stage") != "stage2":
    raise ValueError("config.init_from initialises Stage 2 from a Stage 1 checkpoint: set model.kwargs.apt_stage="
                     "'stage2'")


def main(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Trains; returns the last logged metrics. Resumes from `<workdir>/checkpoints` when it holds a step."""
  maybe_initialize_distributed(config)
  validate_config(config)
  workdir = pathlib.Path(workdir).absolute()
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
  model_config = model_config_from(config)
  mesh = _sharding.make_mesh(config.mesh.get("fsdp_devices", 1))
  setup = make_setup(config, model_config, mesh)
  ckpt = CheckpointManager(workdir / "checkpoints", max_to_keep=config.get("max_to_keep", 1),
                           keep_period=config.get("keep_period"), async_save=config.get("async_checkpoint", True))
  data_iter = create_data(config, model_config)
  norm_stats = load_norm_stats(config)
  rng = jax.random.key(config.seed)
  train_rng, init_rng = jax.random.split(rng)

  start = ckpt.latest_step()
  if start is not None:
    logging.info("Resuming from %s step %d", ckpt.directory, start)
    state, data_state = ckpt.restore(start, setup)
    if data_state:
      data_iter.set_state(data_state)
  else:
    abstract_params = _optimizer.combine(setup.abstract_state.params, setup.abstract_state.frozen)
    state = init_train_state(config, setup, init_rng, load_initial_params(config, model_config, abstract_params))
    start = 0
  _model.log_param_counts(_optimizer.combine(state.params, state.frozen))

  step_fn = jax.jit(functools.partial(train_step, setup.ctx), out_shardings=(setup.state_shardings, None),
                    donate_argnums=(1,))
  writer = MetricWriter(workdir, enabled=is_main)
  num_steps = config.num_train_steps
  log_every = config.get("log_every_steps", 10)
  ckpt_every = config.get("ckpt_every_steps", 1000)
  from apt_jax import policy as _policy
  save_kw = dict(model_config=model_config, norm_stats=norm_stats, asset_id=config.get("asset_id") or None,
                 policy_config=_policy.policy_config_from_experiment(config))
  pbar = None
  if is_main and config.get("progress_bar", True):
    from tqdm import tqdm
    pbar = tqdm(total=num_steps, initial=start, dynamic_ncols=True, desc=config.get("name", "train"))

  pending, last, t0 = None, {}, time.time()
  for step in range(start, num_steps):
    batch = to_global_batch(next(data_iter), mesh)
    state, metrics = step_fn(train_rng, state, batch)
    # Check the previous step while this one runs: catches NaN/Inf one step late without stalling the device.
    if pending is not None:
      last = _check_and_log(pending, writer, pbar, log_every, num_steps, t0)
    pending = (step, metrics)
    if (step + 1) % ckpt_every == 0 or step + 1 == num_steps:
      last = _check_and_log(pending, writer, pbar, log_every, num_steps, t0)
      pending = None
      ckpt.save(step + 1, state, data_state=data_iter.get_state(), **save_kw)
  if pending is not None:
    last = _check_and_log(pending, writer, pbar, log_every, num_steps, t0)
  ckpt.close()
  writer.close()
  if pbar is not None:
    pbar.close()
  if is_main and read_metrics(workdir):
    plot_losses({config.get("name", "train"): workdir}, workdir / "loss.png")
  return last


def _check_and_log(pending, writer, pbar, log_every, num_steps, t0) -> dict:
  step, metrics = pending
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not math.isfinite(metrics["loss"]):
    raise FloatingPointError(f"Non-finite loss {metrics['loss']} at step {step}: stopping (last checkpoint kept)")
  if pbar is not None:
    pbar.update(1)
    pbar.set_postfix(loss=f"{metrics['loss']:.4f}")
  if step % log_every == 0 or step + 1 == num_steps:
    metrics["time_s"] = time.time() - t0
    writer.write(step, metrics)
    logging.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
  return metrics


class _QuietOrbax(logging.Filter):
  """Orbax logs every save/restore step at INFO; keep its warnings only."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def _run(argv):
  del argv
  from absl import flags
  from absl import logging as absl_logging
  absl_logging.get_absl_handler().addFilter(_QuietOrbax())
  main(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. experiments/debug.py:stage1.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and plots go.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(_run)
