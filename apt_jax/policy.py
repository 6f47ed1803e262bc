"""Inference policy: one robot request in, one action chunk out (openpi's `Policy` and `create_trained_policy`).

    policy = create_trained_policy("checkpoints/exp/29999")   # settings from <step>/assets (written by training)
    out = policy.infer({"observation/image": img, "observation/wrist_image": wrist, "observation/state": s,
                        "prompt": "pick up the bowl"})
    out["actions"]        # float32 [AH, 7];  out["policy_timing"]: {"infer_ms", "preprocess_ms", "postprocess_ms"}

Inputs (openpi's order): env adapter (apt_jax.envs) -> default prompt -> resize_with_pad -> normalize state -> pad
state to the model's action_dim -> tokenize. Outputs: unnormalize -> absolute actions on `delta_action_dims` (openpi's
AbsoluteActions) -> env adapter. Params are restored in bfloat16 by default (openpi); the rng is split on every call,
and `warmup()` does not consume it, so a warmed-up policy returns what a fresh one with the same seed returns.
Settings (PolicyConfig): arguments > the training experiment config (`--config`) > `<step>/assets/policy_config.json`
(apt_jax.train writes it with the tokenizer) > defaults. Letters: AH action horizon, AD model action dim.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import pathlib
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from apt_jax import checkpoints
from apt_jax import configs
from apt_jax import envs as _envs
from apt_jax import policy_config as _policy_config
from apt_jax.data import normalize as _normalize
from apt_jax.data import transforms as _transforms
from apt_jax.models import model as _model
from apt_jax.models import registry
from apt_jax.models import tokenizer as _tokenizer

_log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class Transforms:
  """Everything between a robot request and the model, except the norm stats (which `Policy` holds)."""

  env: _envs.EnvAdapter
  tokenizer: _tokenizer.PaligemmaTokenizer | None = None
  delta_action_dims: int | tuple[bool, ...] | None = None
  use_quantile_norm: bool = False
  default_prompt: str | None = None
  image_resolution: tuple[int, int] = _model.IMAGE_RESOLUTION
  # Over-long prompts: cut to max_token_len, or (default, as in training) rejected naming the field.
  truncate_prompt: bool = False


# --- The jitted model call (module level, so every Policy of the same model shares its compilation cache) ----------


@functools.partial(jax.jit, static_argnames=("num_steps",))
def sample_actions_jit(model, rng, data, noise, num_steps):
  return model.sample_actions(rng, _model.Observation.from_dict(data), num_steps=num_steps, noise=noise)


class Policy:
  """`infer(obs)` -> {"actions": float32 [AH, robot action dims], "policy_timing": {...}} (openpi's Policy)."""

  def __init__(self, model: _model.BaseModel, transforms: Transforms,
               norm_stats: Mapping[str, _normalize.NormStats] | None = None, *, num_steps: int = 10, seed: int = 0,
               metadata: Mapping | None = None):
    cfg = model.config
    env = transforms.env
    if env.state_dim > cfg.action_dim:
      raise ValueError(f"env {env.name!r} has a {env.state_dim}-dim state; the model's action_dim is {cfg.action_dim}")
    if env.action_dim > cfg.action_dim:
      raise ValueError(f"env {env.name!r} needs {env.action_dim} action dims; the model has {cfg.action_dim}")
    self._uses_language = cfg.uses_language
    if self._uses_language and transforms.tokenizer is None:
      raise ValueError("This model reads the prompt: the policy needs a tokenizer (tokenizer_path)")
    if transforms.tokenizer is not None and transforms.tokenizer.max_len != cfg.max_token_len:
      raise ValueError(f"tokenizer max_len {transforms.tokenizer.max_len} != model max_token_len {cfg.max_token_len}")
    if norm_stats:
      _normalize.check_width(norm_stats, "state", env.state_dim, cfg.action_dim, f"env {env.name!r}")
      _normalize.check_width(norm_stats, "actions", env.action_dim, cfg.action_dim, f"env {env.name!r}")
    self.model = model
    self.transforms = transforms
    self.norm_stats = dict(norm_stats) if norm_stats else None
    self.num_steps = int(num_steps)
    self._delta_mask = _transforms.delta_mask(transforms.delta_action_dims, cfg.action_dim)
    if self._delta_mask is not None and self._delta_mask[env.state_dim:].any():
      raise ValueError(f"delta_action_dims covers dims beyond the {env.state_dim}-dim state of env {env.name!r}")
    self._rng = jax.random.key(seed)
    self._lock = threading.Lock()
    self._metadata = dict(metadata or {})

  @property
  def metadata(self) -> dict:
    return dict(self._metadata)

  # --- transforms -------------------------------------------------------------------------------------------------

  def _stats(self, key: str):
    return None if self.norm_stats is None else self.norm_stats.get(key)

  def prepare(self, obs: Mapping) -> tuple[dict, np.ndarray]:
    """Request -> (batched model input dict, unnormalized env state [S]). Raises envs.InputError."""
    t = self.transforms
    cfg = self.model.config
    x = t.env.inputs(obs)
    prompt = x["prompt"] if x["prompt"] is not None else t.default_prompt
    images = {k: _transforms.resize_with_pad(v, *t.image_resolution) for k, v in x["image"].items()}
    state_env = x["state"]
    state = state_env
    if (stats := self._stats("state")) is not None:
      state = _normalize.normalize(state, stats, t.use_quantile_norm)
    data = {
        "image": {k: v[None] for k, v in images.items()},
        "image_mask": {k: np.asarray([bool(m)]) for k, m in x["image_mask"].items()},
        "state": _transforms.pad_to_dim(np.asarray(state, np.float32), cfg.action_dim)[None],
    }
    if self._uses_language:
      if prompt is None:
        raise _envs.InputError("prompt", "missing from the request, and the policy has no default prompt")
      try:  # π0.5: the normalized state, before padding, goes into the prompt (openpi's TokenizePrompt).
        tokens, mask = t.tokenizer.tokenize(prompt, state if cfg.discrete_state_input else None,
                                            truncate=t.truncate_prompt)
      except ValueError as e:  # too long: training raises for it too
        raise _envs.InputError("prompt", f"{e} (the checkpoint's policy config does not set truncate_prompt)") from None
      data["tokenized_prompt"] = tokens[None]
      data["tokenized_prompt_mask"] = mask[None]
    return data, state_env

  def finish(self, actions: np.ndarray, state_env: np.ndarray) -> np.ndarray:
    """Model actions [AH, AD] -> robot actions [AH, env action dims]."""
    actions = np.asarray(actions, np.float32)
    if (stats := self._stats("actions")) is not None:
      actions = _normalize.unnormalize(actions, stats, self.transforms.use_quantile_norm)
    if self._delta_mask is not None:
      # openpi AbsoluteActions: actions[..., i] += state[i] where the mask is set (apply_delta subtracts).
      actions = _transforms.apply_delta(actions, -state_env.astype(np.float32), self._delta_mask)
    return self.transforms.env.outputs(actions)

  # --- inference --------------------------------------------------------------------------------------------------

  def infer(self, obs: Mapping, *, noise: np.ndarray | None = None) -> dict:
    """One request (no batch dim) -> {"actions": [AH, D_robot] float32, "policy_timing": {...}}.

    `noise`: optional [AH, model action_dim] starting noise (openpi's `infer(obs, noise=...)`).
    """
    t0 = time.monotonic()
    data, state_env = self.prepare(obs)
    if noise is not None:
      noise = jnp.asarray(noise, jnp.float32)
      if noise.ndim == 2:
        noise = noise[None]
    with self._lock:
      self._rng, rng = jax.random.split(self._rng)
    t1 = time.monotonic()
    actions = np.asarray(sample_actions_jit(self.model, rng, data, noise, num_steps=self.num_steps), np.float32)[0]
    t2 = time.monotonic()
    out = {"actions": self.finish(actions, state_env)}
    t3 = time.monotonic()
    out["policy_timing"] = {"infer_ms": (t2 - t1) * 1e3, "preprocess_ms": (t1 - t0) * 1e3,
                            "postprocess_ms": (t3 - t2) * 1e3}
    return out

  def warmup(self, obs: Mapping | None = None) -> float:
    """Compiles the model call on an example request without advancing the rng; returns the seconds it took."""
    t0 = time.monotonic()
    if obs is None:
      obs = self.transforms.env.example(np.random.default_rng(0), prompt=self.transforms.default_prompt or "warm up")
    data, _ = self.prepare(obs)
    jax.block_until_ready(sample_actions_jit(self.model, jax.random.key(0), data, None, num_steps=self.num_steps))
    return time.monotonic() - t0


# --- Loading a checkpoint ------------------------------------------------------------------------------------------


def load_model_config_file(path: str | os.PathLike, head: str = "pi0") -> _model.BaseModelConfig:
  """A model config JSON: registry format `{"head": ..., "config": {...}}`, or a bare dict of `head`'s fields."""
  d = json.loads(pathlib.Path(path).read_text())
  if "head" in d and "config" in d:
    return registry.config_from_dict(d)
  return registry.config_from_dict({"head": head, "config": d})


def resolve_model_config(step_dir, model_config=None, *, head: str | None = None,
                         experiment_config=None) -> _model.BaseModelConfig:
  """Explicit config (object or JSON path) > `<step>/assets/model_config.json` > the experiment config's model >
  default config of `head`."""
  if isinstance(model_config, _model.BaseModelConfig):
    return model_config
  if model_config is not None:
    return load_model_config_file(model_config, head or "pi0")
  path = pathlib.Path(step_dir) / "assets" / checkpoints.MODEL_CONFIG_FILE
  if path.exists():
    return checkpoints.load_model_config(step_dir)
  if experiment_config is not None:
    return configs.model_config(experiment_config)
  if head is not None:
    _log.warning("%s has no model config: using the default %s config", step_dir, head)
    return registry.create_config(head)
  raise FileNotFoundError(f"{path} not found (an openpi checkpoint?): pass a model config JSON (--model_config) "
                          "or --head pi0 for the default π0 config")


def _resolve_tokenizer(step_dir: pathlib.Path, path: str | None) -> str | None:
  if path is not None:
    p = pathlib.Path(path)
    return str(p if p.is_absolute() or p.exists() else step_dir / "assets" / p)
  default = step_dir / "assets" / _policy_config.TOKENIZER_FILE
  return str(default) if default.exists() else None


def create_trained_policy(step_dir: str | os.PathLike, *, model_config=None, head: str | None = None,
                          dtype: Any = jnp.bfloat16, policy_config: _policy_config.PolicyConfig | None = None,
                          experiment_config=None, allow_unnormalized: bool = False, **overrides) -> Policy:
  """A Policy for a checkpoint step dir (ours or openpi's; see apt_jax.checkpoints for the layout).

  Args:
    step_dir: `<step>` holding `params/` and `assets/`.
    model_config: a BaseModelConfig or a JSON file; default `<step>/assets/model_config.json`.
    head: for openpi checkpoints without model config: default config of this head ("pi0").
    dtype: params dtype on restore (bfloat16 as openpi; None keeps the stored dtype).
    policy_config: inference settings; default: from `experiment_config`, else `<step>/assets/policy_config.json`,
      else PolicyConfig().
    experiment_config: a training config (`experiments/*.py` get_config()): supplies the policy settings (see
      `policy_config_from_experiment`) and, for checkpoints without model_config.json, the model config.
    allow_unnormalized: serve without norm stats although the policy config says the model was trained on normalized
      data (without it, missing stats for the asset fail here, at startup).
    **overrides: PolicyConfig fields that win over all of these (None values are ignored).
  """
  step_dir = pathlib.Path(step_dir)
  if experiment_config is not None:
    experiment_config = configs.finalize(experiment_config)
  config = resolve_model_config(step_dir, model_config, head=head, experiment_config=experiment_config)
  if policy_config is None and experiment_config is not None:
    policy_config = _policy_config.policy_config_from_experiment(experiment_config)
  pc = policy_config or _policy_config.read_policy_config(step_dir) or _policy_config.PolicyConfig()
  pc = dataclasses.replace(pc, **{k: v for k, v in overrides.items() if v is not None})
  env = _envs.get_env(pc.env, **dict(pc.env_kwargs))

  params = checkpoints.restore_params(step_dir / "params", dtype=dtype)
  model = config.load(params)

  stats_path = norm_stats = None
  if pc.normalized:
    try:
      stats_path = checkpoints.find_norm_stats(step_dir, pc.asset_id)
      if stats_path is None:
        raise FileNotFoundError(f"No norm stats under {step_dir / 'assets'}")
    except FileNotFoundError as e:
      if not allow_unnormalized:
        raise FileNotFoundError(f"{e}: the model was trained on normalized state and actions (policy config "
                                "normalized=true), so it would act on wrong scales. Pass the right asset_id, or "
                                "allow_unnormalized (--allow_unnormalized) to serve it anyway") from None
      _log.warning("%s: serving WITHOUT normalization (allow_unnormalized)", e)
  if stats_path is not None:
    norm_stats = _normalize.load(stats_path)
    _log.info("Norm stats: %s", stats_path)

  tok_path = _resolve_tokenizer(step_dir, pc.tokenizer_path)
  tokenizer = None
  if tok_path is not None:
    tokenizer = _tokenizer.PaligemmaTokenizer(tok_path, max_len=config.max_token_len)
  elif config.uses_language:
    raise FileNotFoundError(f"No tokenizer: pass tokenizer_path (--tokenizer) or put "
                            f"{_policy_config.TOKENIZER_FILE} in {step_dir / 'assets'}")

  transforms = Transforms(env=env, tokenizer=tokenizer, delta_action_dims=pc.delta_action_dims,
                          use_quantile_norm=pc.use_quantile_norm, default_prompt=pc.default_prompt,
                          truncate_prompt=pc.truncate_prompt)
  param_dtypes = sorted({str(np.dtype(x.dtype)) for x in jax.tree.leaves(params)})
  metadata = {
      "server": "apt_jax",
      "head": registry.head_name(config),
      "apt_stage": config.apt_stage,
      "env": env.name,
      "action_horizon": config.action_horizon,
      "action_dim": env.action_dim,
      "model_action_dim": config.action_dim,
      "state_dim": env.state_dim,
      "max_token_len": config.max_token_len,
      "compute_dtype": config.dtype,
      "param_dtype": ",".join(param_dtypes),
      "num_steps": pc.num_steps,
      "norm_stats": None if stats_path is None else str(stats_path.parent.relative_to(step_dir / "assets")),
      "use_quantile_norm": pc.use_quantile_norm,
      "delta_action_dims": (list(pc.delta_action_dims) if isinstance(pc.delta_action_dims, tuple)
                            else pc.delta_action_dims),
  }
  return Policy(model, transforms, norm_stats, num_steps=pc.num_steps, seed=pc.seed, metadata=metadata)


# --- CLI (serve, export) --------------------------------------------------------------------------------------------


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
  """Flags shared by serve and export to locate a checkpoint and its model config."""
  parser.add_argument("--checkpoint", required=True, help="checkpoint step dir holding params/ and assets/")
  parser.add_argument("--model_config", default=None,
                      help="model config JSON (needed for openpi checkpoints without assets/model_config.json): "
                      "{'head': ..., 'config': {...}} or a bare dict of the --head config's fields")
  parser.add_argument("--config", default=None, dest="experiment",
                      help="training experiment config path[:arg] (experiments/*.py): model config for checkpoints "
                      "without one, tokenizer, asset id, delta actions, normalization, env")
  parser.add_argument("--head", default=None, help="head of --model_config, or the default config of this head "
                      "when the checkpoint has none (e.g. pi0)")
