"""The training data loader: RLDS datasets -> weighted mixture -> batches in openpi's Observation layout.

All randomness is a pure function of the seed and a small cursor, so the iterator state is a few hundred bytes of
JSON and a resumed loader yields exactly the batches the original would have (`_Stream`, `DataLoader`).
Batch (numpy, per process: B = batch_size // process_count rows; H action horizon, AD the model's action_dim):

    image: {base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb: uint8 [B, h, w, 3]};  image_mask: {same: bool [B]}
    state: float32 [B, AD]  normalized, zero-padded;  actions: float32 [B, H, AD]  normalized, zero-padded
    tokenized_prompt: int32 [B, L];  tokenized_prompt_mask: bool [B, L]  (L = max_token_len)
    actions_mask, action_pad_mask: bool [B, H]  (the same array) True where the step is inside the episode
    (return_metadata) dataset_index, episode_index, step_index: int32 [B]
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import copy
import logging
import os
import queue
import threading
import weakref

import numpy as np

from apt_jax.data import adapters as _adapters
from apt_jax.data import config as _config
from apt_jax.data import normalize as _normalize
from apt_jax.data import rlds as _rlds
from apt_jax.data import transforms as _transforms
from apt_jax.models import model as _model

_log = logging.getLogger(__name__)

STATE_VERSION = 1
_END = object()


class MixtureSampler:
  """Dataset index of sample n: a categorical draw with `weights`, computed per block of 4096 samples."""

  BLOCK = 4096

  def __init__(self, weights, seed: int, process_index: int = 0):
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
      raise ValueError(f"mixture weights must be non-negative with a positive sum, got {weights}")
    self.p = w / w.sum()
    self._seed = (int(seed), int(process_index))
    self._cache: tuple[int, np.ndarray] | None = None

  def choices(self, start: int, count: int) -> np.ndarray:
    return np.asarray([self.choice(n) for n in range(start, start + count)], np.int64)

  def choice(self, n: int) -> int:
    block = n // self.BLOCK
    if self._cache is None or self._cache[0] != block:
      rng = np.random.default_rng([self._seed[0], 0x4D49, self._seed[1], block])
      self._cache = (block, rng.choice(len(self.p), size=self.BLOCK, p=self.p))
    return int(self._cache[1][n % self.BLOCK])


class _ImageCache:
  """Decoded + resized images by (dataset, episode, step, feature), up to a byte budget; then it stops growing.

  Decoding and resizing are deterministic, so the cache changes speed only. It pays off when a dataset's images fit
  (the shipped sample needs ~50 MB at 224x224), since each step is visited once per epoch; for large datasets it
  keeps the first `image_cache_mb` worth of images and otherwise stays out of the way.
  """

  def __init__(self, budget_bytes: int):
    self.budget, self.used = budget_bytes, 0
    self.full = budget_bytes <= 0
    self._items: dict = {}
    self._lock = threading.Lock()

  def get(self, key):
    return self._items.get(key)

  def put(self, key, image: np.ndarray) -> None:
    if self.full:
      return
    with self._lock:
      if key in self._items:
        return
      if self.used + image.nbytes > self.budget:
        self.full = True
        return
      image.flags.writeable = False
      self._items[key] = image
      self.used += image.nbytes


class _Stream:
  """One dataset's cursor over this process's blocks.

  1. The split is cut into blocks of `episodes_per_block` contiguous episodes; block i belongs to process
     `i % process_count` (processes read disjoint episodes).
  2. Epoch e visits this process's blocks in the order `permutation(seed, process, dataset, e)`. Consecutive blocks
     are read into a *window* until it holds >= `shuffle_buffer` steps (windows never cross an epoch); the window's
     samples (episode, step) are emitted in the order `permutation(seed, ..., e, window start)`.
  So the cursor is (epoch, window start, offset in window), and `reset(state)` reads the current window again (its
  blocks are addressed by file, skip and take). With shuffle=False blocks and samples are in dataset order.
  """

  def __init__(self, index: int, entry: _config.DatasetEntry, source: _rlds.RldsSource, *, cfg: _config.DataConfig,
               seed: int, process_index: int, process_count: int, shuffle: bool, train: bool, tokenizer):
    self.index, self.entry, self.source, self.cfg = index, entry, source, cfg
    self.seed, self.process_index, self.shuffle, self.train, self.tokenizer = (
        seed, process_index, shuffle, train, tokenizer)
    self.blocks = source.blocks[process_index::process_count]
    if not self.blocks:
      raise ValueError(
          f"dataset {entry.name}: {len(source.blocks)} block(s) of up to {cfg.episodes_per_block} episodes for "
          f"{process_count} processes; process {process_index} gets none (lower data_config.episodes_per_block)")
    self.reset()

  def reset(self, state: dict | None = None) -> None:
    state = state or {}
    self.epoch = int(state.get("epoch", 0))
    self.block_pos = int(state.get("block", 0))
    self.offset = int(state.get("offset", 0))
    self.epoch_nonempty = bool(state.get("epoch_nonempty", False))
    self.exhausted = bool(state.get("exhausted", False))
    self.bad_before = collections.Counter(state.get("bad_before", {}))
    self.bad_window = collections.Counter()
    self.window: list[_rlds.Episode] | None = None

  def state(self) -> dict:
    return {"name": self.entry.name, "epoch": self.epoch, "block": self.block_pos, "offset": self.offset,
            "epoch_nonempty": self.epoch_nonempty, "exhausted": self.exhausted,
            "bad_before": dict(self.bad_before), "bad_window": dict(self.bad_window)}

  def bad_counts(self) -> dict:
    return dict(self.bad_before + self.bad_window)

  def _rng(self, *tags) -> np.random.Generator:
    return np.random.default_rng([self.seed, self.process_index, self.index, *tags])

  def _perm(self) -> np.ndarray:
    if not self.shuffle:
      return np.arange(len(self.blocks))
    return self._rng(1, self.epoch).permutation(len(self.blocks))

  def _load_window(self) -> None:
    perm = self._perm()
    episodes, num_steps, pos = [], 0, self.block_pos
    self.bad_window = collections.Counter()
    while pos < len(perm):
      for raw in self.source.read_block(self.blocks[perm[pos]]):
        ep_rng = self._rng(3, self.epoch, int(raw["__index__"])) if self.train else None
        try:
          ep = _rlds.convert_episode(raw, self.source, dataset_index=self.index, tokenizer=self.tokenizer,
                                     rng=ep_rng, default_prompt=self.cfg.default_prompt)
        except _rlds.DataError as e:
          if not self.cfg.skip_bad_records:
            raise
          _rlds.log_skip(e)
          self.bad_window[e.kind] += 1
          continue
        if ep is None:
          self.bad_window["filtered"] += 1
          continue
        episodes.append(ep)
        num_steps += ep.length
      pos += 1
      if num_steps >= self.cfg.shuffle_buffer:
        break
    self.window, self.window_end = episodes, pos
    lengths = np.asarray([ep.length for ep in episodes], np.int64)
    self.sample_ep = np.repeat(np.arange(len(episodes)), lengths)
    self.sample_t = (np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else np.zeros(0, np.int64))
    self.order = (self._rng(2, self.epoch, self.block_pos).permutation(num_steps) if self.shuffle
                  else np.arange(num_steps))
    if num_steps:
      self.epoch_nonempty = True

  def next_ref(self) -> tuple[_rlds.Episode, int] | None:
    """Next (episode, step), or None once the dataset has run through num_epochs."""
    while not self.exhausted:
      if self.window is None:
        self._load_window()
      if self.offset < len(self.order):
        i = self.order[self.offset]
        self.offset += 1
        return self.window[self.sample_ep[i]], int(self.sample_t[i])
      self.bad_before += self.bad_window
      self.bad_window = collections.Counter()
      self.block_pos, self.offset, self.window = self.window_end, 0, None
      if self.block_pos >= len(self.blocks):
        if not self.epoch_nonempty:
          raise _rlds.DataError(self.entry.name, None, "steps",
                                f"has no valid samples in a whole epoch (bad records: {self.bad_counts()})",
                                kind="empty")
        self.epoch, self.block_pos, self.epoch_nonempty = self.epoch + 1, 0, False
        if self.cfg.num_epochs is not None and self.epoch >= self.cfg.num_epochs:
          self.exhausted = True
    return None


class DataLoader:
  """Iterator over per-process batches (fields: `apt_jax.data.config`).

  Sample n of this process comes from dataset `mixture(seed, process, n)` (a categorical draw with the configured
  weights) at that dataset's `_Stream` cursor: images decoded and resized with pad to `image_size` (augmented with
  rng(seed, process, n) if set), state and action chunk (last action repeated past the episode end, `actions_mask`
  False there), delta actions, normalization, zero-padding to action_dim, tokenized prompt. `get_state()` is
  `{"samples": n, "datasets": [cursor per dataset], ...}` and belongs to the last batch handed out, not to the
  `prefetch` batches a background thread prepares ahead (`num_workers` threads decode images). Parsed blocks
  (`episode_cache_mb`) and decoded images (`image_cache_mb`) are cached up to a budget; caching never changes the
  stream. With `discrete_state_input` (π0.5) each sample's prompt also holds its normalized state, in 256 bins
  (tokenizer.py).
  """

  def __init__(self, data_config, *, batch_size: int, seed: int, action_horizon: int, action_dim: int,
               max_token_len: int, tokenizer_path, process_index: int = 0, process_count: int = 1,
               shuffle: bool = True, train: bool = True, discrete_state_input: bool = False):
    from apt_jax.models.tokenizer import PaligemmaTokenizer
    self.cfg = _config.parse_data_config(data_config)
    if self.cfg.kind != "rlds":
      raise ValueError(f"data_config.kind={self.cfg.kind!r}: this loader reads RLDS datasets (kind 'rlds')")
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if int(seed) < 0:
      raise ValueError(f"seed must be >= 0, got {seed}")
    if batch_size < process_count or batch_size % process_count:
      raise ValueError(f"batch_size={batch_size} is not divisible by process_count={process_count}")
    self.global_batch_size = batch_size
    self.batch_size = batch_size // process_count
    self.seed, self.process_index, self.process_count = int(seed), process_index, process_count
    self.action_horizon, self.action_dim, self.max_token_len = action_horizon, action_dim, max_token_len
    self.shuffle, self.train, self.discrete_state_input = shuffle, train, discrete_state_input
    self.augment = bool(self.cfg.augment and train)
    self.tokenizer = PaligemmaTokenizer(tokenizer_path, max_len=max_token_len)
    self.delta_mask = _transforms.delta_mask(self.cfg.delta_action_dims, action_dim)
    self._episode_budget = _rlds.ByteBudget(int(self.cfg.episode_cache_mb * 2**20))
    self._streams: list[_Stream] = []
    self._norm: list[dict[str, _normalize.NormStats] | None] = []
    for i, entry in enumerate(self.cfg.datasets):
      adapter = _adapters.get_adapter(entry.adapter, **dict(entry.adapter_kwargs))
      source = _rlds.RldsSource(entry.name, entry.data_dir, adapter, split=entry.split, version=entry.version,
                                episodes_per_block=self.cfg.episodes_per_block,
                                cache_budget=self._episode_budget)
      self._check_widths(source)
      self._streams.append(_Stream(i, entry, source, cfg=self.cfg, seed=self.seed, process_index=process_index,
                                   process_count=process_count, shuffle=shuffle, train=train,
                                   tokenizer=self.tokenizer))
      self._norm.append(self._load_norm_stats(entry, source))
    self._mixture = MixtureSampler([e.weight for e in self.cfg.datasets], self.seed, process_index)
    self._samples = 0
    self._cache = _ImageCache(int(self.cfg.image_cache_mb * 2**20))
    self._zeros = np.zeros((*self.cfg.image_size, 3), np.uint8)
    self._zeros.flags.writeable = False
    workers = self.cfg.num_workers or len(os.sched_getaffinity(0))
    self._pool = (concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="apt_data")
                  if workers > 1 else None)
    self._thread: threading.Thread | None = None
    self._queue: queue.Queue | None = None
    self._stop = threading.Event()
    self._failed: BaseException | None = None
    self._state = self._snapshot()

  # ----------------------------------------------------------------------------------------------- construction

  @staticmethod
  def _widths(source: _rlds.RldsSource) -> dict[str, int]:
    """{"state": width, "actions": width} of a dataset's per-step vectors (those its spec gives)."""
    ad = source.adapter
    return {what: sum(int(np.prod(source.shapes[k])) or 1 for k in keys)
            for what, keys in (("state", ad.state_keys), ("actions", ad.action_keys))
            if all(k in source.shapes for k in keys)}

  def _check_widths(self, source: _rlds.RldsSource) -> None:
    for what, width in self._widths(source).items():
      if width > self.action_dim:
        raise ValueError(f"dataset {source.name}: {what} width {width} exceeds action_dim={self.action_dim}")

  def _load_norm_stats(self, entry: _config.DatasetEntry, source: _rlds.RldsSource):
    path = entry.norm_stats_path or self.cfg.norm_stats_path
    if not path:
      _log.warning("dataset %s: no norm_stats_path, state and actions are NOT normalized", entry.name)
      return None
    stats = _normalize.load(path)
    for key in ("state", "actions"):
      if key in (widths := self._widths(source)):
        _normalize.check_width(stats, key, widths[key], self.action_dim, f"dataset {entry.name} with {path}")
      elif key not in stats:
        raise ValueError(f"{path}: norm stats lack {key!r} (has {sorted(stats)})")
      if self.cfg.use_quantile_norm and stats[key].q01 is None:
        raise ValueError(f"{path}: use_quantile_norm needs q01/q99 for {key!r}")
    return stats

  # ----------------------------------------------------------------------------------------------- state

  def _snapshot(self) -> dict:
    return {
        "version": STATE_VERSION,
        "seed": self.seed,
        "process_index": self.process_index,
        "process_count": self.process_count,
        "samples": self._samples,
        "datasets": [s.state() for s in self._streams],
    }

  def get_state(self) -> dict:
    """JSON-serializable state after the last batch returned by `__next__`."""
    return copy.deepcopy(self._state)

  def set_state(self, state: dict) -> None:
    """Continues the stream from a `get_state()` result (same data config, seed and process layout)."""
    self._shutdown()
    for key in ("version", "seed", "process_index", "process_count"):
      if state.get(key) != self._state[key]:
        raise ValueError(f"set_state: {key}={state.get(key)!r} does not match this loader's {self._state[key]!r}")
    names = [s["name"] for s in state["datasets"]]
    if names != [s.entry.name for s in self._streams]:
      raise ValueError(f"set_state: datasets {names} do not match {[s.entry.name for s in self._streams]}")
    for stream, st in zip(self._streams, state["datasets"]):
      stream.reset(st)
    self._samples = int(state["samples"])
    self._mixture = MixtureSampler([e.weight for e in self.cfg.datasets], self.seed, self.process_index)
    self._failed = None
    self._state = self._snapshot()

  @property
  def bad_record_counts(self) -> dict[str, dict[str, int]]:
    """Skipped records per dataset and kind, as of the last batch returned."""
    return {d["name"]: dict(collections.Counter(d["bad_before"]) + collections.Counter(d["bad_window"]))
            for d in self._state["datasets"]}

  # ----------------------------------------------------------------------------------------------- planning

  def _next_refs(self) -> list[tuple[_rlds.Episode, int, int]]:
    refs = []
    while len(refs) < self.batch_size:
      live = [s for s in self._streams if not s.exhausted]
      if not live:
        raise StopIteration
      d = self._mixture.choice(self._samples)
      k = len(self._streams)
      for j in range(k):  # an exhausted dataset hands its draws to the next live one
        if not self._streams[(d + j) % k].exhausted:
          d = (d + j) % k
          break
      ref = self._streams[d].next_ref()
      if ref is None:
        continue
      refs.append((ref[0], ref[1], self._samples))
      self._samples += 1
    return refs

  # ----------------------------------------------------------------------------------------------- samples

  def _sample(self, ep: _rlds.Episode, t: int, n: int) -> dict:
    h, w = self.cfg.image_size
    rng = np.random.default_rng([self.seed, self.process_index, 0xA06, n]) if self.augment else None
    images, masks = {}, {}
    for cam in _model.IMAGE_KEYS:
      frames = ep.images.get(cam)
      if frames is None:
        images[cam], masks[cam] = self._zeros, False
        continue
      key = (ep.dataset_index, ep.index, t, ep.image_keys[cam])
      img = self._cache.get(key)
      if img is None:
        img = _transforms.decode_image(frames[t])
        if img.ndim != 3 or img.shape[-1] != 3:
          raise _rlds.DataError(ep.dataset, ep.index, ep.image_keys[cam], f"decoded to shape {img.shape} at step "
                                f"{t}; expected [H, W, 3]", kind="shape", file_path=ep.file_path)
        img = _transforms.resize_with_pad(img, h, w)
        self._cache.put(key, img)
      if rng is not None:
        img = _transforms.augment_image(img, rng, wrist=cam != "base_0_rgb")
      images[cam], masks[cam] = img, True
    state = ep.state[t]
    actions, mask = _transforms.action_chunk(ep.actions, t, self.action_horizon)
    actions = _transforms.apply_delta(actions, state, self.delta_mask)
    stats = self._norm[ep.dataset_index]
    if stats is not None:
      q = self.cfg.use_quantile_norm
      state = _normalize.normalize(state, stats["state"], q)
      actions = _normalize.normalize(actions, stats["actions"], q)
    u = ep.prompt_ids[t]
    tokens, token_mask = ep.tokens[u], ep.token_masks[u]
    if self.discrete_state_input:  # π0.5: the normalized, unpadded state goes into the prompt (openpi's order).
      try:
        tokens, token_mask = self.tokenizer.tokenize(ep.prompts[u], state, truncate=False)
      except ValueError as e:  # as for π0's prompts (rlds.py): a prompt that does not fit is an error, not a cut
        raise _rlds.DataError(ep.dataset, ep.index, "prompt", f"with the state at step {t} is longer than "
                              f"max_token_len={self.max_token_len} tokens ({e})", kind="instruction_too_long",
                              file_path=ep.file_path) from None
    return {
        "image": images,
        "image_mask": masks,
        "state": _transforms.pad_to_dim(np.asarray(state, np.float32), self.action_dim),
        "tokenized_prompt": tokens,
        "tokenized_prompt_mask": token_mask,
        "actions": _transforms.pad_to_dim(np.asarray(actions, np.float32), self.action_dim),
        "actions_mask": mask,
        "meta": (ep.dataset_index, ep.index, t),
    }

  def _assemble(self, refs) -> dict:
    if self._pool is not None:
      samples = list(self._pool.map(lambda r: self._sample(*r), refs))
    else:
      samples = [self._sample(*r) for r in refs]
    cams = _model.IMAGE_KEYS
    mask = np.stack([s["actions_mask"] for s in samples])
    batch = {
        "image": {c: np.stack([s["image"][c] for s in samples]) for c in cams},
        "image_mask": {c: np.asarray([s["image_mask"][c] for s in samples], bool) for c in cams},
        "state": np.stack([s["state"] for s in samples]),
        "tokenized_prompt": np.stack([s["tokenized_prompt"] for s in samples]).astype(np.int32),
        "tokenized_prompt_mask": np.stack([s["tokenized_prompt_mask"] for s in samples]).astype(bool),
        "actions": np.stack([s["actions"] for s in samples]),
        "actions_mask": mask,
        "action_pad_mask": mask,
    }
    if self.cfg.return_metadata:
      meta = np.asarray([s["meta"] for s in samples], np.int32).reshape(-1, 3)
      batch["dataset_index"], batch["episode_index"], batch["step_index"] = meta[:, 0], meta[:, 1], meta[:, 2]
    return batch

  def _produce(self) -> tuple[dict, dict]:
    refs = self._next_refs()  # raises StopIteration at the end
    snapshot = self._snapshot()
    return self._assemble(refs), snapshot

  # ----------------------------------------------------------------------------------------------- iteration

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._failed is not None:
      raise self._failed
    if self.cfg.prefetch <= 0:
      try:
        batch, snapshot = self._produce()
      except StopIteration:
        raise
      except BaseException as e:
        self._failed = e
        raise
    else:
      if self._thread is None:
        self._start()
      item = self._queue.get()
      if item is _END:
        self._failed = StopIteration()
        raise StopIteration
      if isinstance(item, BaseException):
        self._failed = item
        raise item
      batch, snapshot = item
    self._state = snapshot
    return batch

  def _start(self) -> None:
    self._stop = threading.Event()
    self._queue = queue.Queue(maxsize=self.cfg.prefetch)
    # The thread holds only a weak reference while it waits, so an abandoned loader is collected and stops it.
    self._thread = threading.Thread(target=_produce_loop, args=(weakref.ref(self), self._stop, self._queue),
                                    daemon=True, name="apt_data_producer")
    self._thread.start()

  def _shutdown(self) -> None:
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread, self._queue = None, None

  def close(self) -> None:
    self._shutdown()
    if self._pool is not None:
      self._pool.shutdown(wait=True)
      self._pool = None

  def __del__(self):
    with contextlib.suppress(Exception):  # interpreter shutdown may have torn down threading already
      self._stop.set()


def _produce_loop(loader_ref, stop: threading.Event, q: queue.Queue) -> None:
  """Background producer: puts (batch, state) items, then _END or the exception that stopped it."""

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  while not stop.is_set():
    loader = loader_ref()
    if loader is None:
      return
    try:
      item = loader._produce()  # noqa: SLF001  (this module's producer thread holds only a weakref to the loader)
    except StopIteration:
      item = _END
    except BaseException as e:  # handed to the consumer, re-raised by __next__
      item = e
    del loader
    if not put(item) or item is _END or isinstance(item, BaseException):
      return


def create_data_loader(data_config, *, batch_size: int, seed: int, action_horizon: int, action_dim: int,
                       max_token_len: int, tokenizer_path, process_index: int = 0, process_count: int = 1,
                       shuffle: bool = True, train: bool = True, discrete_state_input: bool = False) -> DataLoader:
  """Builds the loader for `data_config` (see `apt_jax.data.config`). `batch_size` is the global batch size."""
  return DataLoader(data_config, batch_size=batch_size, seed=seed, action_horizon=action_horizon,
                    action_dim=action_dim, max_token_len=max_token_len, tokenizer_path=tokenizer_path,
                    process_index=process_index, process_count=process_count, shuffle=shuffle, train=train,
                    discrete_state_input=discrete_state_input)
