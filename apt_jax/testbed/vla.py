"""VLA training on in-memory demonstrations with train.py's own building blocks, and closed-loop evaluation.

Training is `train.make_setup` / `train.init_train_state` / `Setup.jit_train_step` (the step `train.main` runs), the
real PaliGemma npz loader (`train.load_initial_params`) and the model's Stage 1 -> Stage 2 initialisation
(`stage2_partial_params`). Batches come from in-memory expert episodes (`EpisodeData`, resumable like train.py's
iterators; frames rendered on the fly or stored), not the tf.data RLDS pipeline, whose start-up and per-step cost
exceed the demo's budget.
"""

from __future__ import annotations

import functools
import json
import operator
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from apt_jax import configs
from apt_jax import optimizer as _optimizer
from apt_jax import sharding as _sharding
from apt_jax import train
from apt_jax.data import batch as _batch
from apt_jax.models import model as _model
from apt_jax.testbed import tabletop as T

IMAGE_SIZE = T.IMAGE_SIZE


# Head-specific model kwargs that `size` passes through verbatim (each head's own config fields).
HEAD_KWARGS = {"pi0": ("fusion_gate",), "gr00t": ("dit_variant", "vlm_layer"),
               "apt_expert": ("expert_variant", "vlm_taps", "stage2_init", "objective", "ddim_loss")}


def model_kwargs(size: dict, *, head="pi0", apt_stage="none", vlm_trainable=None, knowledge_insulation=False,
                 vocab_size=256, vlm_lr_multiplier=None):
  """Config kwargs of the testbed's tiny `head` (size: dict of vlm_width, depth, siglip_width... and, for π0,
  expert_width; every other head's sizes are its config's own fields, listed in HEAD_KWARGS)."""
  if head not in HEAD_KWARGS:
    raise ValueError(f"the testbed has no tiny size for head {head!r}; known: {sorted(HEAD_KWARGS)}")
  heads, kv_heads, head_dim = size.get("num_heads", 2), size.get("num_kv_heads", 1), size.get("head_dim", 16)
  # Stage 2 options pass through when `size` sets them; otherwise the head config's defaults apply.
  own = {k: size[k] for k in ("stage2_prefix_mask",) + HEAD_KWARGS[head] if k in size}
  if head == "pi0":
    own["action_expert_variant"] = dict(width=size["expert_width"], depth=size["depth"],
                                        mlp_dim=2 * size["expert_width"], num_heads=heads, num_kv_heads=kv_heads,
                                        head_dim=head_dim)
  return dict(
      apt_stage=apt_stage, vlm_trainable=vlm_trainable, knowledge_insulation=knowledge_insulation, **own,
      vlm_lr_multiplier=vlm_lr_multiplier, dtype="float32", action_dim=3, action_horizon=size["action_horizon"],
      max_token_len=size["max_token_len"], vocab_size=vocab_size, num_steps=size.get("flow_steps", 10),
      remat_policy="none",
      paligemma_variant=dict(width=size["vlm_width"], depth=size["depth"], mlp_dim=2 * size["vlm_width"],
                             num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim),
      siglip_variant=dict(width=size["siglip_width"], depth=size["siglip_depth"], mlp_dim=2 * size["siglip_width"],
                          num_heads=2, patch_size=(size["patch_size"],) * 2),
      # One camera at the renderer's resolution: no resize to 224, no blank wrist cameras through SigLIP.
      image_keys=("base_0_rgb",), image_resolution=(IMAGE_SIZE, IMAGE_SIZE))


def train_config(model_kw: dict, *, steps: int, batch_size: int, lr: float, seed: int, npz_path: str = "",
                 name: str = "testbed", warmup: float = 0.05, vl_cotrain_weight: float = 1.0,
                 vl_text_len: int = 0) -> ml_collections.ConfigDict:
  """train.py config of one testbed run: AdamW, linear warmup over `warmup` of the steps, cosine to lr / 10, clip 1."""
  c = configs.base_config()
  c.name = name
  c.seed = seed
  c.model.kwargs.update(model_kw)
  c.data = ml_collections.ConfigDict(dict(kind="memory"))
  c.batch_size = batch_size
  c.num_train_steps = steps
  c.schedule = dict(kind="warmup_cosine", peak_lr=lr, warmup_steps=max(1, round(warmup * steps)), decay_steps=steps,
                    decay_lr=lr / 10)
  c.vl_cotrain_weight = vl_cotrain_weight
  c.vl_text_len = vl_text_len   # > 0: every batch carries a VL co-training sub-batch (EpisodeData(vl=...))
  c.optimizer.update(dict(weight_decay=1e-4, decay_all=False))
  c.frozen_dtype = ""
  c.train_augment = False
  c.progress_bar = False
  if npz_path:
    c.weight_loader = ml_collections.ConfigDict(dict(kind="paligemma_npz", path=npz_path))
  return c


class EpisodeData:
  """Random (seeded) frames of expert episodes -> openpi-layout batches; resumable (get_state/set_state).

  scenes: State [E * T] (frame f = episode f // T, step f % T), state [E * T, S], actions [E * T, AH, A],
  tokens/mask [E, L] (episode prompts); images [E * T, H, W, 3] or None to render the frames on the fly."""

  def __init__(self, frames: dict, batch_size: int, seed: int, vl=None):
    self.frames, self.batch_size, self.seed, self.count, self.vl = frames, batch_size, seed, 0, vl
    self.n, self.t = len(frames["state"]), frames["steps_per_episode"]

  def __next__(self):
    rng = np.random.default_rng([self.seed, self.count])
    self.count += 1
    idx = rng.integers(self.n, size=self.batch_size)
    f = self.frames
    image = f["images"][idx] if f.get("images") is not None else T.render(f["scenes"].index(idx), IMAGE_SIZE)
    batch = make_batch(image, f["state"][idx], f["tokens"][idx // self.t], f["mask"][idx // self.t],
                       f["actions"][idx])
    if self.vl is not None:
      batch["vl"] = self.vl.batch(rng)
    return batch

  def get_state(self):
    return {"count": self.count}

  def set_state(self, state):
    self.count = int(state["count"])


class Concat:
  """Iterators one after another: `parts` = ((iterator, num_batches), ...) (the last runs on past its count)."""

  def __init__(self, parts):
    self.parts, self.count = parts, 0

  def __next__(self):
    lo, it = 0, self.parts[-1][0]
    for part, n in self.parts[:-1]:
      if self.count < lo + n:
        it = part
        break
      lo += n
    self.count += 1
    return next(it)

  def get_state(self):
    return {"count": self.count}


def make_batch(image, state, tokens, mask, actions=None) -> dict:
  """openpi's dict layout with the one camera the testbed model reads (`image_keys`): the rendered scene."""
  b = len(state)
  batch = {"image": {"base_0_rgb": image}, "image_mask": {"base_0_rgb": np.ones(b, bool)},
           "state": state.astype(np.float32), "tokenized_prompt": tokens.astype(np.int32),
           "tokenized_prompt_mask": mask.astype(bool)}
  if actions is not None:
    batch["actions"] = actions.astype(np.float32)
  return batch


def train_vla(config, data, *, init_params: dict | None = None, log=print, log_every: int = 500) -> tuple[dict, dict]:
  """Trains `config.num_train_steps` steps on `data`. init_params: Stage 1 params (-> Stage 2 init via the model's
  stage2_partial_params); otherwise `train.load_initial_params` (the PaliGemma npz loader). -> (params, info)."""
  return train_vla_seeds([config], [data], init_params=[init_params], log=log, log_every=log_every)[0]


def train_vla_seeds(configs, datas, *, init_params=None, log=print, log_every: int = 500) -> list[tuple[dict, dict]]:
  """`train_vla` of several seeds at once: configs equal but for seed, name and weight loader (each seed's VLM npz),
  each seed with its own data iterator and init params (list, or None). Each seed's state is initialised as alone
  (its own rng, its own Stage 1 or npz init); with more than one seed they are stacked and trained by one step
  vmapped over the seeds (for an accelerator that one tiny seed leaves idle; on CPU it is slower than seeds in turn:
  benchmarks/testbed_vmap_seeds.py). -> [(params, info)] per seed."""
  n = len(configs)
  init_params = init_params or [None] * n
  if not len(datas) == len(init_params) == n:
    raise ValueError(f"train_vla_seeds: {n} configs, {len(datas)} data iterators, {len(init_params)} init params")
  model_config, setup, step_fn, batch_spec = _compiled(configs[0], num_seeds=n)
  steps = configs[0].num_train_steps
  abstract, rngs, states = setup.abstract_params(), [], []
  for c, p in zip(configs, init_params):
    if _compile_key(c) != _compile_key(configs[0]):
      raise ValueError(f"train_vla_seeds: config {c.name!r} differs from {configs[0].name!r} in more than seed, name "
                       "and weight_loader: its seed cannot share the vmapped step")
    partial = (model_config.stage2_partial_params(p, abstract)[0] if p is not None
               else train.load_initial_params(c, model_config, abstract))
    train_rng, init_rng = jax.random.split(jax.random.key(c.seed))
    rngs.append(train_rng)
    states.append(train.init_train_state(setup, init_rng, partial))
  if n == 1:
    (rng,), (state,) = rngs, states
    next_batch = lambda: _batch.to_global_batch(next(datas[0]), batch_spec)
  else:
    rng, state = jnp.stack(rngs), jax.tree.map(lambda *x: jnp.stack(x), *states)
    state = jax.device_put(state, jax.tree.map(_sharding.with_leading_axis, setup.state_shardings))
    next_batch = lambda: _batch.to_global_batch(jax.tree.map(lambda *x: np.stack(x), *(next(d) for d in datas)),
                                                batch_spec)
  del states   # the single state is donated to the first step; stacked, the per-seed copies are dropped
  label = configs[0].name if n == 1 else f"{configs[0].name} .. {configs[-1].name} ({n} seeds vmapped)"
  t0, losses = time.time(), [[] for _ in configs]
  for i in range(steps):
    state, metrics = step_fn(rng, state, next_batch())
    if i % log_every == 0 or i + 1 == steps:
      m = jax.device_get(metrics)
      seed_m = [m] if n == 1 else _unstack(m, n)
      for c, ms, ls in zip(configs, seed_m, losses):
        if not np.isfinite(ms["loss"]):
          raise FloatingPointError(f"[{c.name}] non-finite loss {float(ms['loss'])} at step {i} (seed {c.seed})")
        ls.append((i, float(ms["loss"])))
      gates = {k: float(np.mean(v)) for k, v in m.items() if k.startswith("gate/")}
      each = "" if n == 1 else " (" + " ".join(f"s{c.seed} {ls[-1][1]:.4f}" for c, ls in zip(configs, losses)) + ")"
      log(f"    [{label}] step {i + 1}/{steps} loss {float(np.mean(m['loss'])):.4f}{each}"
          + (f" (action {float(np.mean(m['action_loss'])):.4f}, vl {float(np.mean(m['vl_loss'])):.3f})"
             if "vl_loss" in m else "")
          + (f" gate {np.mean(list(gates.values())):.3f}" if gates else "") + f" ({time.time() - t0:.0f}s)")
  params = jax.device_get(_optimizer.combine(state.params, state.frozen))
  seconds = time.time() - t0
  per_seed = [params] if n == 1 else _unstack(params, n)
  return [(p, {"losses": ls, "seconds": seconds, "model_config": model_config}) for p, ls in zip(per_seed, losses)]


def _unstack(tree, n: int) -> list:
  """A tree of [S, ...] leaves -> S trees."""
  return [jax.tree.map(operator.itemgetter(j), tree) for j in range(n)]


_COMPILED, _POLICIES = {}, {}


def _compile_key(config) -> str:
  """The config without what differs between seeds of a recipe (they share its compiled step)."""
  return json.dumps({k: v for k, v in config.to_dict().items() if k not in ("seed", "name", "weight_loader")},
                    sort_keys=True, default=str)


def _compiled(config, num_seeds: int = 1):
  """(model_config, setup, jitted train_step, batch spec) shared by runs that differ only in seed/name, so each
  recipe compiles once however many seeds run; num_seeds > 1: the step vmapped over that many stacked seeds and the
  batch spec with their axis. config.vl_text_len > 0: batches carry a VL co-training sub-batch."""
  key = (_compile_key(config), num_seeds)
  if key not in _COMPILED:
    model_config = configs.model_config(config)
    mesh = _sharding.make_mesh(1, devices=jax.devices()[:1])
    setup = train.make_setup(config, model_config, mesh)
    spec = _batch.abstract_batch(model_config, config.batch_size, _sharding.data_sharding(mesh),
                                 vl_text_len=config.get("vl_text_len", 0))
    if num_seeds > 1:
      spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct((num_seeds, *x.shape), x.dtype,
                                                         sharding=_sharding.with_leading_axis(x.sharding)), spec)
    _COMPILED[key] = (model_config, setup, setup.jit_train_step(seeds=num_seeds > 1), spec)
  return _COMPILED[key]


def make_policy(model_config, params, *, flow_steps: int = 10):
  """-> fn(rng, batch) -> actions [B, AH, 3] (jitted once per model config, params as an argument)."""
  key = (repr(model_config), flow_steps)
  if key not in _POLICIES:
    @jax.jit
    def sample(params, rng, batch):
      model = model_config.model_class()(config=model_config, params=params)
      return model.sample_actions(rng, _model.Observation.from_dict(batch), num_steps=flow_steps)
    _POLICIES[key] = sample
  params = jax.device_put(params)
  return functools.partial(_POLICIES[key], params)


def rollout(policy, state: T.State, tokens, mask, *, steps: int = 32, replan: int = 4, seed: int = 0,
            image_size: int = IMAGE_SIZE, chunk: int = 64, return_grasp: bool = False, return_any_held: bool = False):
  """Closed-loop batched rollout: sample an action chunk, execute `replan` actions, repeat. -> success [B], then,
  with return_grasp, whether the target object was ever held [B] (the grounding half of the task) and, with
  return_any_held, whether any object was ever held [B]."""
  n = state.batch_size
  out, grasp, any_held = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
  for lo in range(0, n, chunk):
    idx = np.arange(lo, min(n, lo + chunk))
    s = state.index(idx)
    pad = chunk - len(idx)  # fixed batch shape: one compilation
    for t in range(0, steps, replan):
      img = T.render(s, image_size)
      st, tk, mk = T.observe_state(s), tokens[idx], mask[idx]
      arrs = [img, st, tk, mk]
      if pad:
        arrs = [np.concatenate([a, np.repeat(a[:1], pad, 0)]) for a in arrs]
      acts = np.asarray(policy(jax.random.key(seed * 100_003 + lo * 1009 + t), make_batch(*arrs)))[: len(idx)]
      for j in range(min(replan, steps - t)):
        s = T.step(s, acts[:, j])
        out[idx] |= T.success(s)
        grasp[idx] |= s.held == s.target_obj
        any_held[idx] |= s.held >= 0
  if not (return_grasp or return_any_held):
    return out
  return (out,) + ((grasp,) if return_grasp else ()) + ((any_held,) if return_any_held else ())
