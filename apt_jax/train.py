"""Training: `python -m apt_jax.train --config experiments/<name>.py[:arg] --workdir DIR [--config.x=y ...]`.

One pure `train_step(ctx, rng, state, batch) -> (state, metrics)`, jitted once (`Setup.jit_train_step`), serves every
stage and head: the stage only changes the model config (which params exist, which are frozen) and the
initialisation. Init order: resume from `<workdir>/checkpoints` if it has a step, else `init_from` (Stage 1 -> Stage
2), else the weight loader (PaliGemma npz / openpi checkpoint), else scratch.

Letters: B global batch, AH action horizon, AD action dim.
"""

from __future__ import annotations

import dataclasses
import functools
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
from apt_jax import configs
from apt_jax import data as _data
from apt_jax import distributed
from apt_jax import metrics as _metrics
from apt_jax import optimizer as _optimizer
from apt_jax import policy_config as _policy_config
from apt_jax import sharding as _sharding
from apt_jax import tree as tree_lib
from apt_jax import weight_loaders
from apt_jax.data import batch as _batch
from apt_jax.data import normalize
from apt_jax.models import cotrain as _cotrain
from apt_jax.models import model as _model


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
  """Everything static that `train_step` and `init_state` need (closed over by jit)."""

  model_config: _model.BaseModelConfig
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  ema_decay: float | None = None
  grad_accum_steps: int = 1
  train_augment: bool = True
  frozen_dtype: str | None = None  # openpi keeps frozen weights in bf16
  mesh: Any = None
  # Params outside the optimizer ("/"-joined path -> bool): `optimizer.frozen_filter`.
  is_frozen: Any = None
  # Knowledge insulation's VL co-training: weight of the VLM's prefix-LM loss when a batch carries "vl".
  vl_cotrain_weight: float = 0.0


def _loss_fn(ctx: StepContext, trainable, frozen, rng, batch):
  """-> (loss, parts). With a "vl" sub-batch (knowledge insulation's VL co-training, any head), the VLM's own
  prefix-LM loss is added at weight `ctx.vl_cotrain_weight`."""
  params = _optimizer.combine(trainable, frozen)
  model = ctx.model_config.model_class()(config=ctx.model_config, params=params)
  obs = _model.Observation.from_dict(batch)
  with _sharding.activation_mesh(ctx.mesh):
    action_loss = jnp.mean(model.compute_loss(rng, obs, batch["actions"], train=ctx.train_augment))
    if "vl" not in batch:
      return action_loss, {}
    vl_loss = _cotrain.vl_loss(model, batch["vl"])
  return action_loss + ctx.vl_cotrain_weight * vl_loss, {"action_loss": action_loss, "vl_loss": vl_loss}


def microbatches(batch: dict, n: int) -> dict:
  """[B, ...] -> [n, B / n, ...], micro-batch i = rows i, i + n, i + 2n, ...: every device keeps its own rows (the
  batch is sharded in contiguous blocks), so no micro-batch gathers onto a few devices."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def train_step(ctx: StepContext, rng, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One optimizer step on a global batch (`apt_jax.data.batch.abstract_batch`'s layout)."""
  train_rng = jax.random.fold_in(rng, state.step)
  batch = jax.tree.map(lambda x: _sharding.activation_constraint(x, ctx.mesh), batch)
  grad_fn = jax.value_and_grad(functools.partial(_loss_fn, ctx), has_aux=True)
  if ctx.grad_accum_steps == 1:
    (loss, parts), grads = grad_fn(state.params, state.frozen, train_rng, batch)
  else:
    # Gradient accumulation: mean of micro-batch gradients (equal micro-batch sizes, so equal to the full batch).
    n = ctx.grad_accum_steps
    micro = jax.tree.map(lambda x: _sharding.activation_constraint(x, ctx.mesh, batch_dim=1),
                         microbatches(batch, n))

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


def init_state(ctx: StepContext, rng, partial_params: dict) -> TrainState:
  """A fresh TrainState: the model's init with `partial_params` (loaded weights, possibly {}) merged over it."""
  params = ctx.model_config.create(rng).params
  if partial_params:
    params = tree_lib.merge(params, partial_params)
  trainable, frozen = _optimizer.partition(params, ctx.is_frozen)
  if ctx.frozen_dtype:
    frozen = jax.tree.map(lambda x: x.astype(ctx.frozen_dtype), frozen)
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable, frozen=frozen, opt_state=ctx.tx.init(trainable),
                    ema_params=trainable if ctx.ema_decay is not None else None)


@dataclasses.dataclass
class Setup:
  """The step context, the state's shapes and shardings, and the jitted functions built on them."""

  ctx: StepContext
  state_shardings: Any
  abstract_state: TrainState

  @functools.cached_property
  def jit_init(self):
    """The jitted `init_state(rng, partial_params)`: created sharded, the partial params donated."""
    return jax.jit(functools.partial(init_state, self.ctx), out_shardings=self.state_shardings, donate_argnums=(1,))

  def jit_train_step(self, *, donate: bool = True, seeds: bool = False):
    """The jitted `train_step(rng, state, batch)`: fixed state shardings in and out (it compiles once), the input
    state donated unless `donate=False` (callers that keep a reference to it). seeds=True: vmapped over a leading
    seed axis of rng [S], state and batch (stacked per-seed states [S, ...], each seed's params placed as one
    seed's); the metrics then carry the seed axis too."""
    step, shardings = functools.partial(train_step, self.ctx), self.state_shardings
    if seeds:
      step, shardings = jax.vmap(step), jax.tree.map(_sharding.with_leading_axis, shardings)
    return jax.jit(step, out_shardings=(shardings, None), donate_argnums=(1,) if donate else ())

  def abstract_params(self) -> dict:
    return _optimizer.combine(self.abstract_state.params, self.abstract_state.frozen)


def make_setup(config, model_config, mesh) -> Setup:
  is_frozen = _optimizer.frozen_filter(model_config, vl_cotrain=config.vl_cotrain_weight > 0)
  trainable, _ = _optimizer.partition(model_config.abstract_params(), is_frozen)
  schedule = _optimizer.create_schedule(config.schedule)
  tx = _optimizer.create_optimizer(config.optimizer, trainable, schedule,
                                   vlm_lr_multiplier=model_config.vlm_lr_multiplier)
  ctx = StepContext(model_config=model_config, tx=tx, schedule=schedule, ema_decay=config.ema_decay,
                    grad_accum_steps=config.grad_accum_steps, train_augment=config.train_augment,
                    frozen_dtype=config.frozen_dtype or None, mesh=mesh, is_frozen=is_frozen,
                    vl_cotrain_weight=config.vl_cotrain_weight)
  abstract_state = jax.eval_shape(lambda: init_state(ctx, jax.random.key(0), {}))
  shardings = _sharding.fsdp_sharding(abstract_state, mesh, min_fsdp_mbytes=config.mesh.min_fsdp_mbytes)
  return Setup(ctx, shardings, abstract_state)


def init_train_state(setup: Setup, rng, partial_params: dict | None = None) -> TrainState:
  """Params are created already sharded (jit with out_shardings); loaded weights are merged inside the jit."""
  abstract_params = tree_lib.flatten(setup.abstract_params())
  param_shardings = tree_lib.flatten(_optimizer.combine(setup.state_shardings.params, setup.state_shardings.frozen))
  partial = tree_lib.unflatten({k: jax.device_put(np.asarray(v, abstract_params[k].dtype), param_shardings[k])
                                for k, v in tree_lib.flatten(partial_params or {}).items()})
  return setup.jit_init(rng, partial)


def load_initial_params(config, model_config, abstract_params) -> dict:
  """Partial params from `init_from` (Stage 1 -> Stage 2) or the weight loader; {} for scratch."""
  if config.init_from:
    params_dir = checkpoints.resolve_params_dir(config.init_from)
    stage1 = checkpoints.restore_params(params_dir, restore_type=np.ndarray)
    partial, restored, new = model_config.stage2_partial_params(stage1, abstract_params)
    logging.info("init_from %s: restored %d params, initialised %d new: %s", params_dir, len(restored), len(new), new)
    return partial
  return weight_loaders.create_weight_loader(config.weight_loader).load_partial(abstract_params)


# --- Main loop --------------------------------------------------------------------------------------------------


def validate_config(config, model_config, num_devices: int | None = None):
  n = num_devices or jax.device_count()
  if config.batch_size % n:
    raise ValueError(f"batch_size={config.batch_size} must be divisible by the number of devices ({n})")
  if config.batch_size % config.grad_accum_steps:
    raise ValueError(f"batch_size={config.batch_size} must be divisible by grad_accum_steps")
  if config.init_from and model_config.apt_stage != "stage2":
    raise ValueError("config.init_from initialises Stage 2 from a Stage 1 checkpoint: set model.kwargs.apt_stage="
                     "'stage2'")


def load_norm_stats(config) -> dict[str, dict[str, normalize.NormStats]]:
  """The norm stats the run normalizes with, as the checkpoint stores them: `{asset_id: stats}`, the top-level file
  under `config.asset_id` and each dataset's own under its name. Read before anything else, so that a configured
  file that is missing fails at once, naming it."""
  data = _data.parse_data_config(config.data)
  paths = {}
  if data.norm_stats_path:
    if not config.asset_id:
      raise ValueError("config.asset_id names the checkpoint's norm stats (assets/<asset_id>/norm_stats.json): "
                       f"set it, since config.data.norm_stats_path={data.norm_stats_path!r}")
    paths[config.asset_id] = ("config.data.norm_stats_path", data.norm_stats_path)
  for i, e in enumerate(data.datasets):
    if e.norm_stats_path:
      if e.name in paths and paths[e.name][1] != e.norm_stats_path:
        raise ValueError(f"config.data.datasets[{i}].norm_stats_path: dataset {e.name!r} would store its stats under "
                         f"assets/{e.name}/, which {paths[e.name][0]} already uses")
      paths[e.name] = (f"config.data.datasets[{i}].norm_stats_path", e.norm_stats_path)
  out = {}
  for asset_id, (key, path) in paths.items():
    try:
      out[asset_id] = normalize.load(path)
    except (FileNotFoundError, ValueError) as e:
      raise type(e)(f"{key}: {e}") from None
  return out


def main(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Trains; returns the last logged metrics. Resumes from the newest step under `<workdir>/checkpoints` that
  restores (a broken newer step is reported and set aside)."""
  config = configs.finalize(config)
  distributed.initialize(config)
  model_config = configs.model_config(config)
  validate_config(config, model_config)
  norm_stats = load_norm_stats(config)
  workdir = pathlib.Path(workdir).absolute()
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
  mesh = _sharding.make_mesh(config.mesh.fsdp_devices)
  setup = make_setup(config, model_config, mesh)
  # Checkpoints may go elsewhere, e.g. a bucket every host of a pod writes its shards to (gs://...).
  ckpt = checkpoints.CheckpointManager(config.checkpoint_dir or workdir / "checkpoints",
                                       max_to_keep=config.max_to_keep,
                                       keep_period=config.keep_period, async_save=config.async_checkpoint)
  data_iter = _data.create_data(config, model_config, process_index=jax.process_index(),
                                process_count=jax.process_count())
  batch_spec = _batch.abstract_batch(model_config, config.batch_size, _sharding.data_sharding(mesh))
  rng = jax.random.key(config.seed)
  train_rng, init_rng = jax.random.split(rng)

  restored = ckpt.restore_latest(setup.abstract_state, setup.state_shardings, setup.ctx.is_frozen)
  if restored is not None:
    start, state, data_state = restored
    logging.info("Resuming from %s step %d: %d steps to go", ckpt.directory, start, config.num_train_steps - start)
    data_iter.set_state(data_state)
  else:
    state = init_train_state(setup, init_rng, load_initial_params(config, model_config, setup.abstract_params()))
    start = 0
  _model.log_param_counts(_optimizer.combine(state.params, state.frozen))

  step_fn = setup.jit_train_step()
  all_finite = jax.jit(_all_finite)
  # Metrics of steps after the restored one (logged before a crash) are dropped: the run logs them again.
  writer = _metrics.MetricWriter(workdir, enabled=is_main, start_step=start)
  num_steps = config.num_train_steps
  save_kw = dict(model_config=model_config, norm_stats=norm_stats,
                 policy_config=_policy_config.policy_config_from_experiment(config))
  pbar = None
  if is_main and config.progress_bar:
    from tqdm import tqdm
    pbar = tqdm(total=num_steps, initial=start, dynamic_ncols=True, desc=config.name)

  log = functools.partial(_check_and_log, writer=writer, pbar=pbar, log_every=config.log_every_steps,
                          num_steps=num_steps, t0=time.time())
  pending, last = None, {}
  for step in range(start, num_steps):
    batch = _batch.to_global_batch(next(data_iter), batch_spec)
    state, metrics = step_fn(train_rng, state, batch)
    # Check the previous step while this one runs: catches NaN/Inf one step late without stalling the device.
    if pending is not None:
      last = log(*pending)
    pending = (step, metrics)
    if (step + 1) % config.ckpt_every_steps == 0 or step + 1 == num_steps:
      # Before a checkpoint: this step's loss and gradients, and the params it produced, must be finite.
      last = log(*pending)
      pending = None
      if not bool(all_finite(state)):
        raise FloatingPointError(f"Non-finite params after step {step}: stopping before its checkpoint (step "
                                 f"{step + 1}); the last checkpoint is kept")
      ckpt.save(step + 1, state, data_state=data_iter.get_state(), **save_kw)
  if pending is not None:
    last = log(*pending)
  ckpt.close()
  writer.close()
  if pbar is not None:
    pbar.close()
  if is_main and _metrics.read_metrics(workdir):
    _metrics.plot_losses({config.name: workdir}, workdir / "loss.png")
  return last


def _all_finite(state: TrainState) -> jax.Array:
  leaves = jax.tree.leaves((state.params, state.ema_params))
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _check_and_log(step, metrics, *, writer, pbar, log_every, num_steps, t0) -> dict:
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  for k in ("loss", "grad_norm"):
    if not math.isfinite(metrics[k]):
      raise FloatingPointError(f"Non-finite {k} {metrics[k]} at step {step}: stopping (last checkpoint kept)")
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
