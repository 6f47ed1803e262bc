"""Tiny PaliGemma pretraining with PaliGemma's prefix-LM loss, saved as a big_vision npz.

Model: `siglip.Module` (-> `img`) + `gemma.Module(configs=(vlm_config,))` (-> `llm`): exactly the `{"img", "llm"}`
tree that π0's `PaliGemma/` holds, so the result loads through `weight_loaders.PaliGemmaWeightLoader`.
Sequence: [25 image tokens ; BOS question "\\n" (prefix, bidirectional) ; answer EOS (suffix, causal)]; the loss is
cross-entropy on the suffix tokens through the tied embedding (`gemma.Module.decode`), plus (weight `point_weight`) a
pointing loss: where the answer names a board cell, a linear scorer per layer over the image tokens' outputs must
pick that cell's token (the scorers are discarded; docs/testbed_v2_protocol.md, Deviations). Letters: B batch,
N image tokens (= board cells), D width.
"""

from __future__ import annotations

import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from apt_jax import weight_loaders
from apt_jax.models import apt_expert as _apt_expert
from apt_jax.models import cotrain as _cotrain
from apt_jax.models import gemma as _gemma
from apt_jax.models import image_tools
from apt_jax.models import pi0 as _pi0
from apt_jax.models import siglip as _siglip
from apt_jax.testbed import corpus
from apt_jax.testbed import tabletop as T


class PaliGemmaLM(nn.Module):
  """SigLIP + Gemma (one expert): the PaliGemma param tree `{"img": ..., "llm": ...}`, plus the pointing scorers
  `point` (one linear scorer per layer, dropped after pretraining)."""

  config: _pi0.Pi0Config

  def setup(self):
    c = self.config
    self.img = _siglip.Module(c.siglip_variant, num_classes=c.vlm_config.width, dtype_mm="float32")
    self.llm = _gemma.Module(configs=(c.vlm_config,), embed_dtype="float32", vocab_size=c.vocab_size,
                             remat_policy="none", return_hidden_states=True)
    self.point = nn.DenseGeneral(1, axis=-1, batch_dims=(0,))   # [Depth, ..., D] -> [Depth, ..., 1], per layer

  def __call__(self, images, tokens, input_mask, ar):
    """images float [B, H, W, 3] in [-1, 1]; tokens, input_mask, ar [B, L] -> logits [B, L, V], pointing scores
    [Depth, B, N] (each layer's image-token outputs, RMS-normalised as the probes read them)."""
    logits, hidden = _cotrain.prefix_lm_logits(self.img, self.llm, images, tokens, input_mask, ar)
    return logits, self.point(_apt_expert.rms_normalize(hidden))[..., 0]

  def lm_logits(self, images, tokens, input_mask, ar):
    return _cotrain.prefix_lm_logits(self.img, self.llm, images, tokens, input_mask, ar)[0]


def encode_qa(tokenizer, qa, prefix_len: int, suffix_len: int):
  """-> tokens [N, L], input_mask [N, L], ar [N, L], loss_mask [N, L] (L = prefix_len + suffix_len).

  Prefix: BOS + question + "\\n" (π0's prompt format), ar=False. Suffix: answer + EOS, ar=True, loss on it.
  """
  n = len(qa)
  L = prefix_len + suffix_len
  tokens = np.zeros((n, L), np.int32)
  mask, ar, loss = (np.zeros((n, L), bool) for _ in range(3))
  for i, (_, q, a) in enumerate(qa):
    p = ([tokenizer.bos_id] + tokenizer.encode(q) + tokenizer.encode("\n"))[:prefix_len]
    s = (tokenizer.encode(a) + [tokenizer.eos_id])[:suffix_len]
    tokens[i, :len(p)] = p
    tokens[i, len(p):len(p) + len(s)] = s
    mask[i, :len(p) + len(s)] = True
    ar[i, len(p):len(p) + len(s)] = True
    loss[i, len(p):len(p) + len(s)] = True
  return tokens, mask, ar, loss


def _prep(images, resolution=(224, 224)):
  """uint8 [B, H, W, 3] -> float [-1, 1] at the model's resolution (as π0's preprocessing)."""
  x = jnp.asarray(images).astype(jnp.float32) / 255.0 * 2.0 - 1.0
  return x if x.shape[1:3] == tuple(resolution) else image_tools.resize_with_pad(x, *resolution)


def point_targets(qa) -> np.ndarray:
  """-> [N] the board cell (= image token) that each answer names first ("<row> <column> ..."), -1 where none."""
  out = -np.ones(len(qa), np.int32)
  for i, (_, _, a) in enumerate(qa):
    w = a.split()
    if len(w) >= 2 and w[0] in corpus.ROWS and w[1] in corpus.COLS:
      out[i] = corpus.ROWS.index(w[0]) * T.GRID + corpus.COLS.index(w[1])
  return out


def _losses(module, params, images, tokens, mask, ar, loss_mask, point):
  """-> (prefix-LM loss, pointing loss (mean over layers and the samples with a target), exact match [B])."""
  logits, scores = module.apply({"params": params}, _prep(images, module.config.image_resolution), tokens, mask, ar)
  lm, exact = _cotrain.prefix_lm_loss(logits, tokens, loss_mask)
  has = (point >= 0).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(scores, jnp.maximum(point, 0)[None])   # [Depth, B]
  return lm, jnp.sum(ce.mean(0) * has) / jnp.maximum(has.sum(), 1), exact


@dataclasses.dataclass
class VlmResult:
  params: dict
  train_seconds: float
  eval_accuracy: dict      # task name -> exact-match answer accuracy on held-out scenes
  losses: list


def schedule(cfg):
  """Linear warmup over `warmup` of the steps to `lr`, then cosine to lr * `end_lr_fraction`."""
  return optax.warmup_cosine_decay_schedule(0.0, cfg["lr"], max(1, round(cfg["warmup"] * cfg["steps"])),
                                            cfg["steps"], cfg["lr"] * cfg["end_lr_fraction"])


def pretrain(model_config: _pi0.Pi0Config, tokenizer, train_data, eval_data, cfg: dict, *, seed: int,
             log=print) -> VlmResult:
  """train_data/eval_data: (images, qa, task ids) from corpus.generate. Returns params {"img", "llm"}.

  cfg: steps, batch_size, lr, warmup (fraction of steps), end_lr_fraction, b2, clip, prefix_len, suffix_len,
  point_weight, curriculum ((until_fraction, task weights), ...) and blend (fraction of the steps over which one
  phase's task mix turns linearly into the next's: an abrupt switch spiked the loss on another machine, issue 16).
  """
  module = PaliGemmaLM(model_config)
  images, qa, _ = train_data
  arrays = (*encode_qa(tokenizer, qa, cfg["prefix_len"], cfg["suffix_len"]), point_targets(qa))
  scene = np.array([i for i, _, _ in qa])
  params = jax.jit(module.init)(jax.random.key(seed), _prep(images[:1], model_config.image_resolution),
                                *[jnp.asarray(a[:1]) for a in arrays[:3]])["params"]
  # SigLIP's head is zero-initialised (big_vision): the image tokens start at 0 and a tiny model takes thousands of
  # steps to start looking at the image. A LeCun-normal head starts vision and text on an equal footing.
  head = params["img"]["head"]["kernel"]
  params["img"]["head"]["kernel"] = jax.random.normal(jax.random.key(seed + 1), head.shape) / np.sqrt(head.shape[0])
  # Learned posemb (the tree stays openpi's), started at big_vision's sincos2d: every image token then carries its
  # board cell linearly from step 0, and grounding ("where is the bowl") learns ~2x faster (measured, README).
  (h, w), (ph, pw) = model_config.image_resolution, model_config.siglip_variant.patch_size
  pe = params["img"]["pos_embedding"]
  params["img"]["pos_embedding"] = jnp.asarray(_siglip.posemb_sincos2d(h // ph, w // pw, pe.shape[2]), pe.dtype)
  steps, batch_size = cfg["steps"], cfg["batch_size"]
  tx = optax.chain(optax.clip_by_global_norm(cfg["clip"]),
                   optax.adamw(schedule(cfg), b2=cfg["b2"], weight_decay=1e-4))
  opt_state = tx.init(params)

  def total(p, batch):
    lm, point, exact = _losses(module, p, *batch)
    return lm + cfg["point_weight"] * point, (lm, point, exact)

  @jax.jit
  def step(params, opt_state, batch):
    (_, (lm, point, exact)), grads = jax.value_and_grad(total, has_aux=True)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, lm, point, jnp.mean(exact), optax.global_norm(grads)

  rng = np.random.default_rng([seed, 5])
  task = np.asarray(train_data[2])
  pools = [np.flatnonzero(task == t) for t in range(corpus.NUM_TASKS)]
  has_task = np.array([len(p) > 0 for p in pools])
  t0, losses = time.time(), []
  for i in range(steps):
    weights = curriculum_weights(cfg["curriculum"], i, steps, cfg["blend"]) * has_task
    if weights.sum() == 0:
      raise ValueError(f"VLM pretraining step {i}: the corpus has no question of the curriculum's current tasks")
    tasks = rng.choice(corpus.NUM_TASKS, size=batch_size, p=weights / weights.sum())
    idx = np.array([pools[t][rng.integers(len(pools[t]))] for t in tasks])
    batch = (images[scene[idx]],) + tuple(a[idx] for a in arrays)
    params, opt_state, loss, point, acc, gnorm = step(params, opt_state, batch)
    if i % 100 == 0 or i + 1 == steps:
      losses.append((i, float(loss), float(gnorm), float(point)))
      log(f"    [vlm s{seed}] step {i + 1}/{steps} loss {float(loss):.3f} pointing {float(point):.3f} grad-norm "
          f"{float(gnorm):.2f} train exact-match {float(acc):.2f} ({time.time() - t0:.0f}s)")
  seconds = time.time() - t0
  params = {k: params[k] for k in ("img", "llm")}   # the PaliGemma tree; the pointing scorers are dropped
  return VlmResult(params=jax.device_get(params), train_seconds=seconds,
                   eval_accuracy=evaluate(module, params, tokenizer, eval_data, cfg["prefix_len"], cfg["suffix_len"]),
                   losses=losses)


def curriculum_weights(curriculum, step: int, steps: int, blend: float = 0.0) -> np.ndarray:
  """Task weights [NUM_TASKS] at `step` (0-based, of `steps`): phase i covers steps up to `until_i * steps`; within
  `blend * steps / 2` of a boundary the weights are the linear mix of the two phases (0: abrupt switches)."""
  phases = [np.asarray(w, float) for _, w in curriculum]
  for w in phases:
    if w.shape != (corpus.NUM_TASKS,) or (w < 0).any() or w.sum() <= 0:
      raise ValueError(f"curriculum weights {w.tolist()} must be {corpus.NUM_TASKS} non-negative numbers, not all 0")
  phases = [w / w.sum() for w in phases]
  for i, (until, _) in enumerate(curriculum[:-1]):
    boundary = round(until * steps)   # round: 0.55 * 100 is 55.00000000000001
    half = blend * steps / 2
    if step < boundary + half:
      if half == 0 or step < boundary - half:
        return phases[i]
      t = (step - (boundary - half)) / (2 * half)
      return (1 - t) * phases[i] + t * phases[i + 1]
  return phases[-1]


def evaluate(module, params, tokenizer, data, prefix_len, suffix_len, batch_size: int = 256) -> dict:
  images, qa, task = data
  arrays = encode_qa(tokenizer, qa, prefix_len, suffix_len)
  scene = np.array([i for i, _, _ in qa])
  def exact_match(p, b):   # p: the PaliGemma tree (no pointing scorers), so only the LM is run
    logits = module.apply({"params": p}, _prep(b[0], module.config.image_resolution), *b[1:4],
                          method=lambda m, *a: m.lm_logits(*a))
    return _cotrain.prefix_lm_loss(logits, b[1], b[4])[1]

  fn = jax.jit(exact_match)
  exact = []
  for lo in range(0, len(qa), batch_size):
    idx = np.arange(lo, min(len(qa), lo + batch_size))
    idx = np.concatenate([idx, np.repeat(idx[:1], batch_size - len(idx))])
    out = np.asarray(fn(params, (images[scene[idx]],) + tuple(a[idx] for a in arrays)))
    exact.append(out[: min(batch_size, len(qa) - lo)])
  exact = np.concatenate(exact)
  task = np.asarray(task)
  acc = {name: float(exact[task == t].mean()) for t, name in enumerate(corpus.TASK_NAMES) if (task == t).any()}
  acc["all"] = float(exact.mean())
  return acc


def save(path, params) -> None:
  weight_loaders.save_paligemma_npz(path, params)
