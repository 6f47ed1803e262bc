"""Linear probes on the VLM features a head reads, and the gate that stops the comparison when the VLM cannot do
the job (docs/testbed_v2_protocol.md §5).

Features: the VLM's hidden-state stack [L+1, B, P, D] (0 = embeddings, l = output of layer l) over the prefix
[image tokens ; bare VLA instruction], with the head's mask; the layers a head reads (`read_layers`), each
RMS-normalised, concatenated. Probes (ridge, fit on seen-split scenes, scored on every split):
  image_tokens  a scorer over the N image tokens; "located" = the argmax token is the target's board cell (a
                cell is one token). What a π-style expert reads through its attention to the image K/V.
  prompt        the prompt tokens' mean feature -> which of the N cells (one-hot regression). What a head that
                reads the prompt's states (fusion with images blind to the prompt) can use.
Letters: B scenes, N image tokens (= cells), F features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from apt_jax.models import apt_expert as _apt_expert
from apt_jax.models import model as _model
from apt_jax.models import registry
from apt_jax.models import vlm as _vlm
from apt_jax.testbed import language as L
from apt_jax.testbed import tabletop as T

PROBES = ("image_tokens", "prompt")
TARGETS = ("object", "container")


class VlmGateError(RuntimeError):
  """The pretrained VLM misses the probe gate: a recipe comparison on it would not mean anything."""


def read_layers(model_config) -> tuple[int, ...]:
  """Indices into the hidden-state stack [L+1] that the head's action expert reads."""
  depth = model_config.vlm_config.depth
  head = registry.head_name(model_config)
  if head == "pi0":   # the expert attends to every layer's K/V: projections of that layer's (normed) input
    return tuple(range(depth))
  if head == "gr00t":
    return (model_config.vlm_layer,)
  if head == "apt_expert":
    return tuple(sorted(set(model_config.vlm_taps)))
  raise ValueError(f"no probe layers defined for head {head!r}")


def features(vlm_params, model_config, images, tokens, masks, batch_size: int = 128):
  """-> (image-token features [B, N, F], mean prompt features [B, F]) as numpy float32."""
  c = model_config
  module = _vlm.from_config(c, return_hidden_states=True)
  layers, language_block = np.array(read_layers(c)), c.language_block

  @jax.jit
  def fn(params, images, tokens, masks):
    obs = _model.Observation(images={"base_0_rgb": images}, image_masks={"base_0_rgb": jnp.ones(len(images), bool)},
                             state=jnp.zeros((len(images), 1)), tokenized_prompt=tokens, tokenized_prompt_mask=masks)
    def run(m):
      prefix = m.embed_prefix(obs, with_language=True, language_block=language_block)
      return m.hidden_states(prefix), prefix.is_lang
    hidden, is_lang = module.apply({"params": params}, method=run)
    h = _apt_expert.rms_normalize(hidden[layers])                               # [K, B, P, D]
    h = jnp.concatenate(list(h), axis=-1)                                        # [B, P, K * D]
    n = int((~is_lang).sum())
    w = masks.astype(jnp.float32)[..., None]
    return h[:, :n], jnp.sum(h[:, n:] * w, 1) / jnp.maximum(jnp.sum(w, 1), 1)

  out = []
  for lo in range(0, len(images), batch_size):
    x = jnp.asarray(images[lo:lo + batch_size]).astype(jnp.float32) / 127.5 - 1.0
    out.append(jax.device_get(fn(vlm_params, x, jnp.asarray(tokens[lo:lo + batch_size]),
                                 jnp.asarray(masks[lo:lo + batch_size]))))
  return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


def target_cells(state: T.State) -> dict:
  """target -> [B] board cell (= image token) of each scene's target object / container."""
  b = np.arange(state.batch_size)
  return {"object": T.cells_of(state.obj_pos[b, state.target_obj]),
          "container": T.cells_of(state.cont_pos[b, state.target_cont])}


def _ridge(x, y, lam):
  x = np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1).astype(np.float64)
  return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)


def _apply(w, x):
  return np.concatenate([x, np.ones((*x.shape[:-1], 1), x.dtype)], axis=-1) @ w


class LinearProbes:
  """Ridge probes per (probe kind, target), fit once on seen-split features."""

  def __init__(self, img_feats, prompt_feats, cells: dict, lam: float = 1.0):
    b, n, _ = img_feats.shape
    self.w = {}
    for t in TARGETS:
      onehot = np.eye(n)[cells[t]]                                                 # [B, N]
      self.w["image_tokens", t] = _ridge(img_feats.reshape(b * n, -1), onehot.reshape(-1), lam)
      self.w["prompt", t] = _ridge(prompt_feats, onehot, lam)

  def accuracy(self, img_feats, prompt_feats, cells: dict) -> dict:
    """-> {probe: {target: fraction of scenes whose target cell is the argmax}}."""
    out = {}
    for p in PROBES:
      out[p] = {}
      for t in TARGETS:
        scores = _apply(self.w[p, t], img_feats) if p == "image_tokens" else _apply(self.w[p, t], prompt_feats)
        out[p][t] = float(np.mean(np.argmax(scores.reshape(len(cells[t]), -1), -1) == cells[t]))
    return out


def _encode(tokenizer, episodes: L.Episodes):
  tok = [tokenizer.tokenize(s) for s in episodes.instructions]
  return np.stack([t for t, _ in tok]), np.stack([m for _, m in tok])


def report(vlm_params, model_config, tokenizer, *, train_scenes: int, eval_scenes: int, seed: int) -> dict:
  """Probe accuracy per split (balanced-arm constructions) -> {split: {probe: {target: accuracy}}}. The probes are
  fit on `train_scenes` seen-split scenes drawn apart from the evaluated ones."""
  def feats(episodes):
    tokens, masks = _encode(tokenizer, episodes)
    return features(vlm_params, model_config, T.render(episodes.state), tokens, masks)
  fit_train = L.training_episodes("balanced", train_scenes, seed=seed + 7_000)
  probes = LinearProbes(*feats(fit_train), target_cells(fit_train.state))
  train = L.training_episodes("balanced", eval_scenes, seed=seed)
  return {split: probes.accuracy(*feats(e), target_cells(e.state))
          for split in L.SPLITS for e in [L.eval_episodes("balanced", split, eval_scenes, seed + 7_000, train)]}


def check_gate(probe_report: dict, gate: dict, *, vlm_seed) -> None:
  """Raises VlmGateError, naming the seed, the probe and the numbers, when a gated accuracy on the seen split is
  below its threshold. gate: {"probe": kind, "object": threshold, "container": threshold}."""
  seen = probe_report["seen"][gate["probe"]]
  failed = [f"{t} {seen[t]:.2f} < {gate[t]:.2f}" for t in TARGETS if seen[t] < gate[t]]
  if failed:
    raise VlmGateError(
        f"VLM seed {vlm_seed} FAILS the probe gate ({gate['probe']} probe, seen split): {'; '.join(failed)}. "
        "The VLM cannot locate what the instruction names, so a recipe comparison on it would be meaningless: "
        "stopping before any VLA run. Check the VLM loss curve in the log (a spike?), then rerun or retune the "
        "VLM recipe on the tuning seeds (docs/testbed_v2_protocol.md).")
