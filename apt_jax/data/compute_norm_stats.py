"""Computes state / action normalization statistics and writes `norm_stats.json` (openpi format).

    python -m apt_jax.data.compute_norm_stats --config experiments/<exp>.py[:arg] [--max_frames N]
    python -m apt_jax.data.compute_norm_stats --data_dir DIR --dataset NAME [--adapter libero] --out OUT_DIR \
        [--delta_action_dims 6] [--action_horizon 50] [--max_frames N]

With `--config`, the experiment config's `get_config(arg)` must provide `config.data` (see apt_jax.data.config);
the output goes to `--out`, else `<config.assets_dir>/<config.asset_id>` (or `<config.assets_dir>` without an
asset id). The action horizon comes from `--action_horizon`, else `config.model.action_horizon`, else
`config.action_horizon`, else 50. What is measured: `compute_norm_stats`.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

import numpy as np

from apt_jax import experiment_files
from apt_jax.data import adapters as _adapters
from apt_jax.data import config as _config
from apt_jax.data import normalize as _normalize
from apt_jax.data import transforms as _transforms

_log = logging.getLogger(__name__)


def compute_norm_stats(data_config, *, action_horizon: int, max_frames: int | None = None,
                       tokenizer_path=None, max_token_len: int = 48) -> dict[str, _normalize.NormStats]:
  """Returns {"state": NormStats, "actions": NormStats} over all datasets of `data_config`.

  As openpi's `scripts/compute_norm_stats.py`: `state` over every step, `actions` over every entry of every step's
  action chunk of length H (last action repeated past the episode end), after the data config's delta-action
  transform and before padding. Episodes are read in dataset order, all datasets into one set of statistics (their
  widths must agree); `max_frames` caps the steps taken from each dataset. Images are never decoded. Bad records
  raise, or are skipped with `skip_bad_records`; prompts are checked against max_token_len only with a tokenizer.
  """
  from apt_jax.data import rlds as _rlds
  cfg = _config.parse_data_config(data_config)
  tokenizer = None
  if tokenizer_path:
    from apt_jax.models.tokenizer import PaligemmaTokenizer
    tokenizer = PaligemmaTokenizer(tokenizer_path, max_len=max_token_len)
  stats = {"state": _normalize.RunningStats(), "actions": _normalize.RunningStats()}
  for i, entry in enumerate(cfg.datasets):
    adapter = _adapters.get_adapter(entry.adapter, **dict(entry.adapter_kwargs))
    source = _rlds.RldsSource(entry.name, entry.data_dir, adapter, split=entry.split, version=entry.version,
                              episodes_per_block=max(cfg.episodes_per_block, 64))
    frames, skipped = 0, 0
    for raw in source.episodes():
      if max_frames is not None and frames >= max_frames:
        break
      try:
        ep = _rlds.convert_episode(raw, source, dataset_index=i, tokenizer=tokenizer,
                                   default_prompt=cfg.default_prompt)
      except _rlds.DataError as e:
        if not cfg.skip_bad_records:
          raise
        _rlds.log_skip(e)
        skipped += 1
        continue
      if ep is None:
        continue
      n = ep.length if max_frames is None else min(ep.length, max_frames - frames)
      mask = _transforms.delta_mask(cfg.delta_action_dims, ep.actions.shape[-1])
      chunks, _ = _transforms.all_action_chunks(ep.actions, action_horizon)
      chunks = _transforms.apply_delta(chunks, ep.state, mask)
      stats["state"].update(ep.state[:n])
      stats["actions"].update(chunks[:n])
      frames += n
    _log.info("dataset %s: %d frames, %d bad episodes skipped", entry.name, frames, skipped)
  return {k: v.get_statistics() for k, v in stats.items()}


def _get(obj, path: str, default=None):
  for part in path.split("."):
    if obj is None:
      return default
    obj = obj.get(part) if hasattr(obj, "get") else getattr(obj, part, None)
  return default if obj is None else obj


def main(argv=None) -> pathlib.Path:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", help="experiment config path[:arg] with config.data")
  parser.add_argument("--data_dir", help="TFDS data_dir (without --config)")
  parser.add_argument("--dataset", help="TFDS dataset name (without --config)")
  parser.add_argument("--adapter", default="libero", choices=sorted(_adapters.ADAPTERS))
  parser.add_argument("--split", default="train")
  parser.add_argument("--delta_action_dims", type=int, default=None)
  parser.add_argument("--skip_bad_records", action="store_true")
  parser.add_argument("--out", help="output directory (norm_stats.json is written inside)")
  parser.add_argument("--action_horizon", type=int, default=None)
  parser.add_argument("--max_frames", type=int, default=None)
  parser.add_argument("--tokenizer_path", default=None)
  parser.add_argument("--max_token_len", type=int, default=48)
  args = parser.parse_args(argv)

  config, out = None, args.out
  if args.config:
    config = experiment_files.load(args.config)
    data_config = _get(config, "data")
    if data_config is None:
      parser.error(f"{args.config}: the config has no `data` field")
    if out is None:
      assets_dir = _get(config, "assets_dir")
      if assets_dir is None:
        parser.error("give --out, or set config.assets_dir")
      asset_id = _get(config, "asset_id") or _get(config, "data.asset_id")
      out = pathlib.Path(assets_dir) / asset_id if asset_id else pathlib.Path(assets_dir)
  else:
    if not (args.data_dir and args.dataset and out):
      parser.error("without --config, --data_dir, --dataset and --out are required")
    data_config = {
        "datasets": [{"name": args.dataset, "data_dir": args.data_dir, "adapter": args.adapter, "split": args.split}],
        "delta_action_dims": args.delta_action_dims,
        "skip_bad_records": args.skip_bad_records,
    }
  horizon = (args.action_horizon or _get(config, "model.action_horizon") or _get(config, "action_horizon") or 50)
  stats = compute_norm_stats(data_config, action_horizon=int(horizon), max_frames=args.max_frames,
                             tokenizer_path=args.tokenizer_path or _get(config, "tokenizer_path"),
                             max_token_len=args.max_token_len)
  path = _normalize.save(out, stats)
  summary = {k: {"dim": v.dim, "mean": np.round(v.mean, 4).tolist()} for k, v in stats.items()}
  print(f"wrote {path}: {summary}")
  return path


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  main(sys.argv[1:])
