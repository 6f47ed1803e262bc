"""Optimizer: schedules, AdamW with masked weight decay and per-group learning rates, EMA.

Params that get no gradient (frozen, or insulated without a VL loss: `frozen_filter`) are partitioned out before the
optimizer sees the tree (`partition`), so they get no optimizer state, no weight decay and no EMA. One rule
(`is_kernel`) says which of the others are weights that decay and count in param_norm: matmul kernels; never
gates, norm scales, biases, embeddings or learned tokens, in any head. Learning-rate groups: the VLM (SigLIP + Gemma
expert 0) gets `lr × vlm_lr_multiplier`; everything else (action expert, projections, fusion layers) the base lr.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from apt_jax import tree as tree_lib
from apt_jax.models import model as _model

# The leaf names of matmul weights: linen Dense/Conv `kernel`, Gemma's einsum `w`, and its MLP's `gating_einsum` and
# `linear`. Everything else is a gate (π0's `fusion_1/gate`, GR00T's `attn_gate` / `ff_gate`, the APT expert's `gate`
# and `fusion_open`), a norm scale, a bias, an embedding table (`input_embedding`, `pos_embedding`,
# `position_embedding`) or learned tokens (`future_tokens`): none of them decays (the paper's recipe).
KERNEL_NAMES = ("kernel", "w", "gating_einsum", "linear")


def is_kernel(path: str) -> bool:
  """Whether a param ("/"-joined path) is a matmul weight: it decays, and it counts in param_norm."""
  return path.rsplit("/", 1)[-1] in KERNEL_NAMES


def frozen_filter(model_config, *, vl_cotrain: bool = False) -> Callable[[str], bool]:
  """The params kept out of the optimizer: the head's frozen ones (`freeze_filter`), and under knowledge insulation
  the VLM too unless a VL co-training loss trains it (without one its gradient is zero: Adam state would only cost
  memory, and decoupled weight decay would shrink it)."""
  insulated = model_config.knowledge_insulation and not vl_cotrain
  return lambda path: model_config.freeze_filter(path) or (insulated and _model.is_vlm_param(path))


def create_schedule(cfg) -> optax.Schedule:
  """cfg: ml_collections block with `kind` in {"constant", "warmup_constant", "warmup_cosine"}.

  warmup_cosine is openpi's CosineDecaySchedule: warmup from peak/(warmup+1) to peak, cosine to `decay_lr` at
  `decay_steps`. warmup_constant: the same linear warmup, then constant (the paper's constant_with_warmup).
  """
  kind = cfg.kind
  peak = cfg.peak_lr
  warmup = cfg.warmup_steps
  if kind == "constant":
    return optax.constant_schedule(peak)
  if kind == "warmup_constant":
    return optax.join_schedules(
        [optax.linear_schedule(peak / (warmup + 1), peak, warmup), optax.constant_schedule(peak)], [warmup])
  if kind == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(init_value=peak / (warmup + 1), peak_value=peak, warmup_steps=warmup,
                                              decay_steps=cfg.decay_steps, end_value=cfg.decay_lr)
  raise ValueError(f"schedule.kind={kind!r}; expected constant, warmup_constant or warmup_cosine")


def decay_mask(params, decay_all: bool = False):
  """True where weight decay applies: kernels (`is_kernel`), or every param with decay_all (openpi's AdamW)."""
  return tree_lib.unflatten({k: decay_all or is_kernel(k) for k in tree_lib.flatten(params)})


def lr_multipliers(params, vlm_lr_multiplier: float):
  return tree_lib.unflatten({k: vlm_lr_multiplier if _model.is_vlm_param(k) else 1.0
                             for k in tree_lib.flatten(params)})


def scale_by_tree(multipliers) -> optax.GradientTransformation:
  """Multiplies each update leaf by a static float (per-group learning rates, weight decay included)."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u if m == 1.0 else u * jnp.asarray(m, u.dtype), updates, multipliers), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def create_optimizer(cfg, trainable_params, schedule: optax.Schedule, *, vlm_lr_multiplier: float = 1.0):
  """cfg: `optimizer` block: b1, b2, eps, weight_decay, clip_gradient_norm, decay_all (bool)."""
  mask = decay_mask(trainable_params, cfg.decay_all)
  chain = []
  if cfg.clip_gradient_norm:
    chain.append(optax.clip_by_global_norm(cfg.clip_gradient_norm))
  chain.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask))
  multipliers = lr_multipliers(trainable_params, vlm_lr_multiplier)
  if any(m != 1.0 for m in jax.tree.leaves(multipliers)):
    chain.append(scale_by_tree(multipliers))
  return optax.chain(*chain)


def partition(params, is_frozen: Callable[[str], bool]):
  """-> (trainable, frozen): two nested dicts with disjoint keys whose union is `params`."""
  flat = tree_lib.flatten(params)
  trainable = {k: v for k, v in flat.items() if not is_frozen(k)}
  frozen = {k: v for k, v in flat.items() if is_frozen(k)}
  return tree_lib.unflatten(trainable), tree_lib.unflatten(frozen)


def combine(trainable, frozen):
  return tree_lib.merge(frozen, trainable) if frozen else trainable


def ema_update(ema, new, decay: float):
  return jax.tree.map(lambda old, x: decay * old + (1 - decay) * x, ema, new)


def kernel_norm(params):
  """openpi's param_norm: the global norm of the kernels (`is_kernel`)."""
  return optax.global_norm([v for k, v in tree_lib.flatten(params).items() if is_kernel(k)])
