"""Input pipeline: RLDS/TFDS datasets -> action-chunk samples -> weighted mixtures -> openpi-layout batches.

Modules (TensorFlow is imported only by `rlds` / `loader`, and only when a dataset is opened):

* `config`     data_config fields and defaults (documented there).
* `adapters`   RLDS feature mappings by name (LIBERO and DROID from apt_jax/envs, generic OXE).
* `batch`      the batch a train step takes (`abstract_batch`), fake batches of it, process -> global arrays.
* `rlds`       block-wise TFRecord reading, episode validation, `DataError`.
* `transforms` action chunks, delta actions, resize-with-pad, augmentation.
* `normalize`  NormStats / RunningStats / norm_stats.json I/O / z-score and quantile normalization.
* `loader`     `create_data_loader`, mixture sampling, deterministic resumable iteration, multi-host sharding.
* `compute_norm_stats`  `python -m apt_jax.data.compute_norm_stats --config ...`.
* `builders`   access to the TFDS builder definitions in the repository's `data/rlds_builders/`.
"""

from __future__ import annotations

from apt_jax.data.config import DataConfig
from apt_jax.data.config import DatasetEntry
from apt_jax.data.config import parse_data_config


def create_data_loader(data_config, *, batch_size: int, seed: int, action_horizon: int, action_dim: int,
                       max_token_len: int, tokenizer_path, process_index: int = 0, process_count: int = 1,
                       shuffle: bool = True, train: bool = True, discrete_state_input: bool = False):
  """See `apt_jax.data.loader.create_data_loader` (imported lazily: it pulls in TensorFlow)."""
  from apt_jax.data import loader  # TensorFlow
  return loader.create_data_loader(
      data_config, batch_size=batch_size, seed=seed, action_horizon=action_horizon, action_dim=action_dim,
      max_token_len=max_token_len, tokenizer_path=tokenizer_path, process_index=process_index,
      process_count=process_count, shuffle=shuffle, train=train, discrete_state_input=discrete_state_input)


def create_data(config, model_config, *, process_index: int = 0, process_count: int = 1):
  """The per-process iterator for an experiment config's `data`: the RLDS pipeline, or random batches of the model's
  spec with `kind: "fake"`."""
  if config.data.kind == "fake":
    from apt_jax.data import batch
    return batch.FakeData(model_config, config.batch_size // process_count, config.seed, process_index)
  return create_data_loader(
      config.data, batch_size=config.batch_size, seed=config.seed, action_horizon=model_config.action_horizon,
      action_dim=model_config.action_dim, max_token_len=model_config.max_token_len,
      tokenizer_path=config.tokenizer_path, process_index=process_index, process_count=process_count,
      discrete_state_input=model_config.discrete_state_input)


def __getattr__(name):
  if name in ("DataError", "BAD_RECORD_KINDS"):
    from apt_jax.data import rlds  # TensorFlow
    return getattr(rlds, name)
  if name in ("DataLoader", "MixtureSampler"):
    from apt_jax.data import loader  # TensorFlow
    return getattr(loader, name)
  raise AttributeError(name)


__all__ = ["DataConfig", "DatasetEntry", "parse_data_config", "create_data", "create_data_loader", "DataError",
           "DataLoader", "MixtureSampler", "BAD_RECORD_KINDS"]
