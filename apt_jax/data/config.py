"""The data config (`config.data` in an experiment config): fields, defaults and parsing.

`data_config` is an ml_collections ConfigDict or a plain dict with the fields of `DataConfig`; each `datasets` entry
has the fields of `DatasetEntry`. One comment per field says what it does. An unknown key is an error naming it and
the closest valid key (`check_keys`, also used for the rest of an experiment config).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
  # TFDS dataset name: the data lives in `<data_dir>/<name>/<version>/`.
  name: str
  data_dir: str
  # "libero", "droid" or "oxe_generic" (apt_jax.data.adapters).
  adapter: str = "libero"
  # Mixture sampling weight (normalized over datasets).
  weight: float = 1.0
  # TFDS split, slicing allowed ("train[:90%]").
  split: str = "train"
  # TFDS version directory; None: the highest.
  version: str | None = None
  # Overrides of adapter fields (feature keys, dims, file_path_regex).
  adapter_kwargs: Mapping = dataclasses.field(default_factory=dict)
  # Per-dataset override of the top-level norm_stats_path; the checkpoint stores these stats under the dataset's
  # name (`assets/<name>/norm_stats.json`).
  norm_stats_path: str | None = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
  # One entry per RLDS dataset (DatasetEntry fields), at least one for kind "rlds".
  datasets: tuple[DatasetEntry, ...] = ()
  # The data source: "rlds" (this pipeline) or "fake" (apt_jax.train: random batches of the model's spec; the other
  # fields only feed the checkpoint's norm stats and policy settings).
  kind: str = "rlds"
  # norm_stats.json (or its directory) in openpi's format; None: no normalization. A path that does not exist fails
  # before training starts. The checkpoint stores these stats under the run's asset_id.
  norm_stats_path: str | None = None
  # Action dims made relative to the current state before normalization: k means the first k dims (openpi's LIBERO
  # uses 6), a list of bools is a per-dim mask.
  delta_action_dims: int | tuple[bool, ...] | None = None
  # Quantile instead of z-score normalization (openpi: π0 z-score, π0.5/FAST quantile).
  use_quantile_norm: bool = False
  # Skip (count, log) episodes that fail validation instead of raising `DataError`.
  skip_bad_records: bool = False
  # Steps per shuffle window and dataset: blocks of episodes are read in a seeded random order until the window holds
  # at least this many steps, whose samples are then emitted in a seeded random order.
  shuffle_buffer: int = 4096
  # Contiguous episodes read together: the unit of the epoch permutation and of per-process sharding.
  episodes_per_block: int = 4
  # Train-time augmentation in the pipeline (random crop + rotation on the base camera, colour jitter on all). Off by
  # default: openpi augments on the model side (`preprocess_observation(train=True)`) and both would stack.
  augment: bool = False
  # Model image resolution [h, w]; images are resized with pad.
  image_size: tuple[int, int] = (224, 224)
  # None repeats forever; otherwise each dataset stops after that many epochs and iteration ends when all have.
  num_epochs: int | None = None
  # Threads decoding and resizing images (PIL releases the GIL); 0: one per core this process may run on.
  num_workers: int = 0
  # Decoded + resized images kept up to this many MB (per loader), so later epochs of a dataset that fits skip JPEG
  # decoding; 0 turns it off. The output is identical either way.
  image_cache_mb: float = 1024
  # Parsed episodes (images still encoded) kept up to this many MB (per loader, all datasets), so a dataset that fits
  # is read from disk once; 0 turns it off.
  episode_cache_mb: float = 256
  # Batches prepared ahead in a background thread (0: synchronous).
  prefetch: int = 2
  # Used when an episode's instruction is empty (openpi `InjectDefaultPrompt`).
  default_prompt: str | None = None
  # Adds int32 [B] `dataset_index`, `episode_index`, `step_index` to each batch.
  return_metadata: bool = False


def _to_dict(cfg) -> dict:
  if hasattr(cfg, "to_dict"):
    return cfg.to_dict()
  if isinstance(cfg, Mapping):
    return dict(cfg)
  raise TypeError(f"data_config must be a ConfigDict or a dict, got {type(cfg).__name__}")


def check_keys(d: Mapping, valid: Iterable[str], where: str) -> None:
  """Raises ValueError naming the first key of `d` not in `valid`, with the closest valid key."""
  valid = sorted(valid)
  for k in d:
    if k not in valid:
      close = difflib.get_close_matches(str(k), valid, n=1, cutoff=0.5)
      hint = f"did you mean {close[0]!r}? " if close else ""
      raise ValueError(f"{where}: unknown key {k!r}; {hint}(valid keys: {', '.join(valid)})")


def to_dict(cfg: DataConfig) -> dict:
  """DataConfig -> the plain dict `parse_data_config` reads back (tuples as lists)."""
  d = dataclasses.asdict(cfg)
  d["datasets"] = [dict(e, adapter_kwargs=dict(e["adapter_kwargs"])) for e in d["datasets"]]
  return d


def parse_data_config(cfg) -> DataConfig:
  """ConfigDict / dict -> DataConfig, with defaults filled in and values checked; an unknown key is an error."""
  if isinstance(cfg, DataConfig):
    return cfg
  d = _to_dict(cfg)
  known = [f.name for f in dataclasses.fields(DataConfig)]
  check_keys(d, known, "data_config")
  if d.get("kind", "rlds") not in ("rlds", "fake"):
    raise ValueError(f"data_config.kind={d['kind']!r}: expected 'rlds' (RLDS datasets) or 'fake' (random batches)")
  raw_datasets = d.get("datasets") or ()
  if not raw_datasets and d.get("kind", "rlds") == "rlds":
    raise ValueError("data_config.datasets must list at least one dataset")
  entry_fields = [f.name for f in dataclasses.fields(DatasetEntry)]
  datasets = []
  for i, e in enumerate(raw_datasets):
    e = _to_dict(e)
    check_keys(e, entry_fields, f"data_config.datasets[{i}]")
    for req in ("name", "data_dir"):
      if not e.get(req):
        raise ValueError(f"data_config.datasets[{i}]: missing {req!r}")
    if "adapter_kwargs" in e:
      e["adapter_kwargs"] = _to_dict(e["adapter_kwargs"] or {})
    e["data_dir"] = str(e["data_dir"])
    entry = DatasetEntry(**e)
    if entry.weight < 0:
      raise ValueError(f"data_config.datasets[{i}] ({entry.name}): negative weight {entry.weight}")
    datasets.append(dataclasses.replace(entry, weight=float(entry.weight)))
  if datasets and sum(e.weight for e in datasets) <= 0:
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
  if out.shuffle_buffer < 1 or out.episodes_per_block < 1:
    raise ValueError("data_config.shuffle_buffer and episodes_per_block must be >= 1")
  return out
