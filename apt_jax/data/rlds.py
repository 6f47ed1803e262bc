"""Reading RLDS episodes from a TFDS data_dir, and turning them into validated `Episode`s.

Reading goes below `as_dataset`: the split's shard files are listed from `dataset_info.json`, cut into blocks of a
few contiguous episodes, and a block is read with `TFRecordDataset(file).skip(a).take(n)` +
`tf.io.parse_single_example(features.tf_example_spec)`. That gives each episode as flat arrays `[T, ...]` of only the
features the adapter needs, with images still encoded (decoded per sample later), works for empty episodes, and
lets the loader read any block again on resume. Episode indices are positions in the split (TFDS order).
Bad records raise `DataError` naming the dataset, the episode and the field; with `skip_bad_records` the loader
drops the episode instead, counts it by kind and logs a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import threading

import numpy as np

from apt_jax.envs.base import RldsAdapter
from apt_jax.models import model as _model

_log = logging.getLogger(__name__)

BAD_RECORD_KINDS = ("missing", "empty", "shape", "nonfinite", "instruction_too_long")


class DataError(ValueError):
  """A bad record: `str(e)` = "<dataset> episode <i> (file_path=<p>): field <field> <problem>".

  `kind` (BAD_RECORD_KINDS): missing (a feature the adapter needs is absent from the dataset's spec), empty (no
  steps), shape (state / actions of the wrong width, or an image that is not [H, W, 3]), nonfinite (NaN or Inf in a
  state or action feature), instruction_too_long (the tokenized prompt is longer than max_token_len).
  """

  def __init__(self, dataset: str, episode: int | None, field: str, problem: str, *, kind: str,
               file_path: str | None = None):
    self.dataset, self.episode, self.field, self.problem = dataset, episode, field, problem
    self.kind, self.file_path = kind, file_path
    where = f"{dataset} episode {episode}" if episode is not None else f"{dataset}"
    if file_path:
      where += f" (file_path={file_path})"
    super().__init__(f"{where}: field {field} {problem}")


_TF = None


def _tf():
  """Imports TensorFlow lazily, hidden from any GPU (so it never takes accelerator memory from JAX)."""
  global _TF
  if _TF is None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    with contextlib.suppress(RuntimeError, ValueError):  # already initialised
      tf.config.set_visible_devices([], "GPU")
    _TF = tf
  return _TF


def resolve_builder_dir(data_dir, name: str, version: str | None = None):
  """`<data_dir>/<name>/<version>` holding dataset_info.json; the highest version when none is given.

  Also accepts `data_dir` = the dataset or version directory itself. Paths go through etils.epath, so gs:// works
  where TensorFlow's GCS filesystem does.
  """
  from etils import epath
  base = epath.Path(data_dir)
  for candidate in (base / name, base):
    if version is not None:
      if (candidate / version / "dataset_info.json").exists():
        return candidate / version
      continue
    if (candidate / "dataset_info.json").exists():
      return candidate
    if candidate.is_dir():
      versions = [p for p in candidate.iterdir() if p.is_dir() and (p / "dataset_info.json").exists()]
      if versions:
        return max(versions, key=lambda p: tuple(int(x) if x.isdigit() else -1 for x in p.name.split(".")))
  raise FileNotFoundError(f"dataset {name}: no TFDS dataset under {base / name}"
                          + (f" with version {version}" if version else "")
                          + " (expected <data_dir>/<name>/<version>/dataset_info.json)")


class ByteBudget:
  """A byte budget shared by caches (thread-safe): `take(n)` reserves n bytes if they fit."""

  def __init__(self, total_bytes: int):
    self.total, self.used = int(total_bytes), 0
    self._lock = threading.Lock()

  def take(self, n: int) -> bool:
    with self._lock:
      if self.used + n > self.total:
        return False
      self.used += n
      return True


@dataclasses.dataclass(frozen=True)
class Block:
  """`take` contiguous episodes of one shard file, starting at split position `first_index`."""

  filename: str
  skip: int
  take: int
  first_index: int


class RldsSource:
  """One RLDS dataset split as seen through an adapter: its spec, its blocks, and a block reader."""

  def __init__(self, name: str, data_dir: str, adapter: RldsAdapter, *, split: str = "train",
               version: str | None = None, episodes_per_block: int = 4, cache_budget: ByteBudget | None = None):
    import tensorflow_datasets as tfds
    _tf()
    self.name, self.adapter, self.split = name, adapter, split
    self.builder_dir = resolve_builder_dir(data_dir, name, version)
    info = tfds.builder_from_directory(os.fspath(self.builder_dir)).info
    self.features = info.features
    full_spec = self.features.tf_example_spec
    self.available = set(full_spec)
    wanted = set(adapter.all_keys)
    self.spec = {k: full_spec[k] for k in wanted if k in full_spec}
    optional = adapter.optional_keys | {adapter.file_path_key}
    self.missing = sorted(k for k in wanted - self.available if k not in optional)
    self.shapes = {k: tuple(full_spec[k].shape) for k in self.spec}
    self.image_shapes = {k: self._feature_shape(k) for k in adapter.image_keys if k in self.spec}
    try:
      split_info = info.splits[split]
    except KeyError as e:
      raise ValueError(f"dataset {name}: no split {split!r} in {self.builder_dir} "
                       f"(has {sorted(info.splits.keys())})") from e
    self.num_episodes = int(split_info.num_examples)
    self._parse = None
    self._cache: dict[Block, list[dict]] = {}
    self._cache_budget = cache_budget
    self.blocks: list[Block] = []
    first = 0
    per = max(1, int(episodes_per_block))
    for fi in split_info.file_instructions:
      for a in range(0, fi.take, per):
        n = min(per, fi.take - a)
        self.blocks.append(Block(os.fspath(fi.filename), fi.skip + a, n, first + a))
      first += fi.take

  def _feature_shape(self, key: str) -> tuple:
    feature = self.features
    for part in key.split("/"):
      feature = feature[part]
    return tuple(feature.shape)

  def read_block(self, block: Block) -> list[dict[str, np.ndarray]]:
    """Parsed episodes of a block: flat key -> array [T, ...] (images as encoded bytes), plus "__index__".

    Blocks are kept (and the same dicts returned, so callers must not modify them) while `cache_budget` has room:
    a dataset that fits is read from disk once.
    """
    cached = self._cache.get(block)
    if cached is not None:
      return cached
    tf = _tf()
    if self._parse is None:  # traced once per source: a fresh tf.data map per block would retrace every time
      spec = self.spec
      self._parse = tf.function(lambda r: tf.io.parse_single_example(r, spec),
                                input_signature=[tf.TensorSpec([], tf.string)])
    # Records parsed in parallel (tf.data sizes the pool to the host), in file order.
    records = (tf.data.TFRecordDataset(block.filename).skip(block.skip).take(block.take)
               .map(self._parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE))
    out = []
    for i, parsed in enumerate(records):
      raw = {k: v.numpy() for k, v in parsed.items()}
      raw["__index__"] = block.first_index + i
      out.append(raw)
    if self._cache_budget is not None and self._cache_budget.take(sum(_nbytes(v) for r in out for v in r.values())):
      self._cache[block] = out
    return out

  def episodes(self, blocks=None):
    """Yields raw episodes of the given blocks (all blocks in order by default)."""
    for block in self.blocks if blocks is None else blocks:
      yield from self.read_block(block)


def _nbytes(x) -> int:
  if isinstance(x, np.ndarray) and x.dtype == object:
    return sum(len(b) for b in x.reshape(-1)) + x.nbytes
  return int(getattr(x, "nbytes", 64))


@dataclasses.dataclass
class Episode:
  """A validated episode. T steps; images stay encoded until a step is sampled."""

  dataset: str
  dataset_index: int
  index: int
  file_path: str
  state: np.ndarray  # float32 [T, S]
  actions: np.ndarray  # float32 [T, A]
  images: dict[str, np.ndarray | None]  # model camera -> [T] encoded bytes, or uint8 [T, H, W, 3]; None = zeros
  image_keys: dict[str, str | None]  # model camera -> the RLDS feature its frames come from
  prompt_ids: np.ndarray  # int [T]: row of `tokens` used at each step
  tokens: np.ndarray  # int32 [U, L]
  token_masks: np.ndarray  # bool [U, L]
  prompts: list[str]

  @property
  def length(self) -> int:
    return int(self.state.shape[0])


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def convert_episode(raw: dict, source: RldsSource, *, dataset_index: int, tokenizer=None, rng=None,
                    default_prompt: str | None = None) -> Episode | None:
  """Validates a parsed episode and builds an `Episode`; None when the adapter's file_path filter rejects it.

  Args:
    raw: output of `RldsSource.read_block` for one episode.
    tokenizer: PaligemmaTokenizer, or None to skip tokenization (statistics only).
    rng: np.random.Generator for the per-episode camera / instruction draws (training); None picks the first key.
  Raises:
    DataError: see the module docstring.
  """
  ad, name, index = source.adapter, source.name, int(raw["__index__"])
  fp_raw = raw.get(ad.file_path_key)
  file_path = _text(fp_raw) if fp_raw is not None else None

  def fail(field, problem, kind):
    raise DataError(name, index, field, problem, kind=kind, file_path=file_path)

  for key in source.missing:
    fail(key, f"is missing from the dataset spec (the {ad.name} adapter needs it)", "missing")
  if ad.file_path_regex and (file_path is None or not re.search(ad.file_path_regex, file_path)):
    return None

  lengths = {k: len(raw[k]) for k in source.spec if k.startswith("steps/")}
  length = min(lengths.values()) if lengths else 0
  if length == 0:
    fail("steps", "is empty (0 steps)", "empty")

  def numeric(keys, expected_dim, what):
    parts = []
    for k in keys:
      x = np.asarray(raw[k])
      if x.ndim == 1:
        x = x[:, None]
      if x.ndim != 2:
        fail(k, f"has shape {tuple(x.shape[1:])} per step; expected a vector", "shape")
      x = x.astype(np.float32)
      bad = ~np.isfinite(x)
      if bad.any():
        step = int(np.argwhere(bad)[0][0])
        kind = "NaN" if np.isnan(x).any() else "Inf"
        fail(k, f"has {kind} (first at step {step})", "nonfinite")
      parts.append(x)
    out = np.concatenate(parts, -1) if parts else np.zeros((length, 0), np.float32)
    if expected_dim is not None and out.shape[-1] != expected_dim:
      fail("+".join(keys), f"has width {out.shape[-1]}; the {ad.name} adapter expects {what} of width "
           f"{expected_dim}", "shape")
    return out

  state = numeric(ad.state_keys, ad.state_dim, "state")
  actions = numeric(ad.action_keys, ad.action_dim, "actions")

  images, image_keys = {}, {}
  for cam in _model.IMAGE_KEYS:
    keys = [k for k in ad.cameras.get(cam, ()) if k in source.spec]
    if not keys:
      images[cam], image_keys[cam] = None, None
      continue
    for k in keys:
      shape = source.image_shapes[k]
      if len(shape) != 3 or shape[-1] != 3:
        fail(k, f"has image shape {shape}; expected [H, W, 3]", "shape")
    key = keys[0] if rng is None or len(keys) == 1 else keys[int(rng.integers(len(keys)))]
    images[cam], image_keys[cam] = raw[key], key

  # Prompt: one instruction key per episode; per-step texts (usually all equal) are tokenized once each.
  instr_keys = [k for k in ad.instruction_keys if k in source.spec]
  texts = [_text(s) for s in raw[instr_keys[0]]] if instr_keys else [""] * length
  if rng is not None and len(instr_keys) > 1:
    candidates = [k for k in instr_keys if any(_text(s) for s in raw[k])]
    if candidates:
      texts = [_text(s) for s in raw[candidates[int(rng.integers(len(candidates)))]]]
  if default_prompt is not None:
    texts = [t if t.strip() else default_prompt for t in texts]
  prompts = sorted(set(texts))
  prompt_ids = np.asarray([prompts.index(t) for t in texts], np.int32)
  if tokenizer is not None:
    tok, msk = [], []
    for p in prompts:
      try:
        t, m = tokenizer.tokenize(p, truncate=False)
      except ValueError as e:
        fail(instr_keys[0] if instr_keys else "prompt",
             f"is longer than max_token_len={tokenizer.max_len} tokens ({e})", "instruction_too_long")
      tok.append(t)
      msk.append(m)
    tokens, token_masks = np.stack(tok), np.stack(msk)
  else:
    tokens, token_masks = np.zeros((len(prompts), 0), np.int32), np.zeros((len(prompts), 0), bool)

  trim = lambda x: x[:length]
  return Episode(
      dataset=name, dataset_index=dataset_index, index=index, file_path=file_path or "",
      state=trim(state), actions=trim(actions),
      images={cam: None if v is None else trim(v) for cam, v in images.items()}, image_keys=image_keys,
      prompt_ids=trim(prompt_ids), tokens=tokens, token_masks=token_masks, prompts=prompts)


def log_skip(err: DataError) -> None:
  _log.warning("Skipping bad record (skip_bad_records=True): %s", err)
