"""The data config (`config.data` in an experiment config): fields, defaults and parsing.

`data_config` is an ml_collections ConfigDict or a plain dict:

| field | type, default | meaning |
|---|---|---|
| kind | str, "rlds" | the data source: "rlds" (this pipeline); apt_jax.train also takes "fake" (random batches of the model's spec, no other field) |
| datasets | list of dicts, required | one entry per RLDS dataset, see below |
| norm_stats_path | str or None | norm_stats.json (or its directory) in openpi's format; None: no normalization (a warning is logged) |
| delta_action_dims | int, list of bools, or None | action dims made relative to the current state before normalization: an int k means the first k dims (openpi's LIBERO uses 6), a list is a per-dim mask |
| use_quantile_norm | bool, False | quantile instead of z-score normalization (openpi: π0 z-score, π0.5/FAST quantile) |
| skip_bad_records | bool, False | skip (count, log) episodes that fail validation instead of raising `DataError` |
| shuffle_buffer | int, 4096 | steps per shuffle window and dataset: blocks of episodes are read in a seeded random order until the window holds at least this many steps, whose samples are then emitted in a seeded random order |
| episodes_per_block | int, 4 | contiguous episodes read together; blocks are the unit of the epoch permutation and of per-process sharding |
| augment | bool, False | train-time image augmentation in the pipeline (random crop + rotation on the base camera, colour jitter on all); off by default because openpi augments on the model side (`preprocess_observation(train=True)`) and both would stack |
| image_size | [h, w], [224, 224] | model image resolution; images are resized with pad |
| num_epochs | int or None | None repeats forever; otherwise each dataset stops after that many epochs and iteration ends when all have |
| num_workers | int, 2 | threads decoding and resizing images |
| image_cache_mb | float, 1024 | keep decoded + resized images up to this many MB (per loader), so later epochs of a dataset that fits skip JPEG decoding and resizing; 0 turns it off. Output is identical either way |
| episode_cache_mb | float, 256 | keep parsed episodes (images still encoded) up to this many MB (per loader, all datasets together), so a dataset that fits is read from disk once; 0 turns it off |
| prefetch | int, 2 | batches prepared ahead in a background thread (0: synchronous) |
| default_prompt | str or None | used when an episode's instruction is empty (openpi `InjectDefaultPrompt`) |
| return_metadata | bool, False | adds int32 [B] `dataset_index`, `episode_index`, `step_index` to each batch |

Each `datasets` entry:

| field | default | meaning |
|---|---|---|
| name | required | TFDS dataset name: the data lives in `<data_dir>/<name>/<version>/` |
| data_dir | required | TFDS data_dir |
| adapter | "libero" | "libero", "droid" or "oxe_generic" (apt_jax.data.adapters) |
| adapter_kwargs | {} | overrides of adapter fields (feature keys, dims, file_path_regex) |
| weight | 1.0 | mixture sampling weight (normalized over datasets) |
| split | "train" | TFDS split, slicing allowed ("train[:90%]") |
| version | None | TFDS version directory; None: the highest |
| norm_stats_path | None | per-dataset override of the top-level norm_stats_path |
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
  name: str
  data_dir: str
  adapter: str = "libero"
  weight: float = 1.0
  split: str = "train"
  version: str | None = None
  adapter_kwargs: Mapping = dataclasses.field(default_factory=dict)
  norm_stats_path: str | None = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
  datasets: tuple[DatasetEntry, ...]
  kind: str = "rlds"
  norm_stats_path: str | None = None
  delta_action_dims: int | tuple[bool, ...] | None = None
  use_quantile_norm: bool = False
  skip_bad_records: bool = False
  shuffle_buffer: int = 4096
  episodes_per_block: int = 4
  augment: bool = False
  image_size: tuple[int, int] = (224, 224)
  num_epochs: int | None = None
  num_workers: int = 2
  image_cache_mb: float = 1024
  episode_cache_mb: float = 256
  prefetch: int = 2
  default_prompt: str | None = None
  return_metadata: bool = False


def _to_dict(cfg) -> dict:
  if hasattr(cfg, "to_dict"):
    return cfg.to_dict()
  if isinstance(cfg, Mapping):
    return dict(cfg)
  raise TypeError(f"data_config must be a ConfigDict or a dict, got {type(cfg).__name__}")


def parse_data_config(cfg) -> DataConfig:
  """ConfigDict / dict -> DataConfig, with defaults filled in and values checked. Unknown keys are logged."""
  if isinstance(cfg, DataConfig):
    return cfg
  d = _to_dict(cfg)
  known = {f.name for f in dataclasses.fields(DataConfig)}
  unknown = sorted(set(d) - known)
  if unknown:
    _log.warning("data_config: ignoring unknown fields %s (known: %s)", unknown, sorted(known))
  raw_datasets = d.get("datasets")
  if not raw_datasets:
    raise ValueError("data_config.datasets must list at least one dataset")
  entry_fields = {f.name for f in dataclasses.fields(DatasetEntry)}
  datasets = []
  for i, e in enumerate(raw_datasets):
    e = _to_dict(e)
    bad = sorted(set(e) - entry_fields)
    if bad:
      raise ValueError(f"data_config.datasets[{i}]: unknown fields {bad} (known: {sorted(entry_fields)})")
    for req in ("name", "data_dir"):
      if not e.get(req):
        raise ValueError(f"data_config.datasets[{i}]: missing {req!r}")
    e["adapter_kwargs"] = _to_dict(e.get("adapter_kwargs") or {})
    e["data_dir"] = str(e["data_dir"])
    e["weight"] = float(e.get("weight", 1.0))
    if e["weight"] < 0:
      raise ValueError(f"data_config.datasets[{i}] ({e['name']}): negative weight {e['weight']}")
    datasets.append(DatasetEntry(**e))
  if sum(e.weight for e in datasets) <= 0:
    raise ValueError("data_config.datasets: the weights sum to 0")
  kwargs = {k: d[k] for k in known if k in d and k != "datasets" and d[k] is not None}
  if "delta_action_dims" in kwargs and not isinstance(kwargs["delta_action_dims"], (int, bool)):
    kwargs["delta_action_dims"] = tuple(bool(x) for x in kwargs["delta_action_dims"])
  if "image_size" in kwargs:
    kwargs["image_size"] = tuple(int(x) for x in kwargs["image_size"])
  for k in ("norm_stats_path",):
    if k in kwargs:
      kwargs[k] = str(kwargs[k])
  out = DataConfig(datasets=tuple(datasets), **kwargs)
  if out.kind != "rlds":
    raise ValueError(f"data_config.kind={out.kind!r}: this pipeline reads RLDS datasets (kind 'rlds')")
  if out.shuffle_buffer < 1 or out.episodes_per_block < 1:
    raise ValueError("data_config.shuffle_buffer and episodes_per_block must be >= 1")
  return out
