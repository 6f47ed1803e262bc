"""The training batch: its spec (`abstract_batch`), random batches of that spec (`FakeData`), and the step from a
process's numpy batch to global device arrays (`to_global_batch`).

A batch is openpi's dict layout: image {camera: uint8 [B, H, W, 3]}, image_mask {camera: bool [B]}, state float32
[B, AD], tokenized_prompt int32 [B, L], tokenized_prompt_mask bool [B, L], actions float32 [B, AH, AD]. Loaders may
yield more keys (e.g. `dataset_index`); only the spec's reach the model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def abstract_batch(model_config, batch_size: int, sharding: jax.sharding.Sharding | None = None, *,
                   vl_text_len: int = 0) -> dict:
  """The batch a train step takes, as ShapeDtypeStructs (placed by `sharding` when given). vl_text_len > 0 adds the
  "vl" sub-batch of VL co-training (models/cotrain.py): batch_size images and texts of that many tokens."""
  obs, act = model_config.inputs_spec(batch_size=batch_size)
  spec = lambda x, dtype=None: jax.ShapeDtypeStruct(x.shape, dtype or x.dtype, sharding=sharding)
  out = {"image": {k: spec(v, jnp.uint8) for k, v in obs.images.items()},  # images travel as uint8
         "image_mask": {k: spec(v) for k, v in obs.image_masks.items()},
         "state": spec(obs.state),
         "tokenized_prompt": spec(obs.tokenized_prompt),
         "tokenized_prompt_mask": spec(obs.tokenized_prompt_mask),
         "actions": spec(act)}
  if vl_text_len:
    text = jax.ShapeDtypeStruct((batch_size, vl_text_len), jnp.bool_, sharding=sharding)
    out["vl"] = {"image": jax.ShapeDtypeStruct((batch_size, *model_config.image_resolution, 3), jnp.uint8,
                                               sharding=sharding),
                 "tokens": jax.ShapeDtypeStruct(text.shape, jnp.int32, sharding=sharding),
                 "input_mask": text, "ar": text, "loss_mask": text}
  return out


def to_global_batch(local_batch: dict, spec: dict) -> dict:
  """A process's numpy batch -> global jax arrays placed by the spec's shardings (the spec's keys only)."""
  picked = {k: {c: local_batch[k][c] for c in v} if isinstance(v, dict) else local_batch[k] for k, v in spec.items()}
  return jax.tree.map(lambda s, x: jax.make_array_from_process_local_data(s.sharding, np.asarray(x)), spec, picked)


class FakeData:
  """Random batches of `abstract_batch`'s spec (config.data.kind == "fake"); resumable (state = count)."""

  def __init__(self, model_config, batch_size: int, seed: int, process_index: int = 0):
    self.spec = abstract_batch(model_config, batch_size)
    self.seed, self.process_index = seed, process_index
    self.count = 0

  def __next__(self) -> dict:
    rng = np.random.default_rng([self.seed, self.process_index, self.count])
    self.count += 1
    s = self.spec
    return {"image": {k: rng.integers(0, 256, v.shape, np.uint8) for k, v in s["image"].items()},
            "image_mask": {k: np.ones(v.shape, bool) for k, v in s["image_mask"].items()},
            "state": rng.normal(size=s["state"].shape).astype(np.float32),
            "tokenized_prompt": rng.integers(1, 100, s["tokenized_prompt"].shape).astype(np.int32),
            "tokenized_prompt_mask": np.ones(s["tokenized_prompt_mask"].shape, bool),
            "actions": rng.normal(size=s["actions"].shape).astype(np.float32)}

  def get_state(self) -> dict:
    return {"count": self.count}

  def set_state(self, state: dict) -> None:
    self.count = int(state["count"])
