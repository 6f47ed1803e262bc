"""Blocks shared by the experiment configs (big_vision's `configs/common.py`): each experiment is one
`experiments/<name>.py` with `get_config(arg)`, loaded by path (`--config experiments/x.py:arg`, `load`).

`base_config()` lists every field the trainer reads, with its default; experiments override what they need.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import ml_collections

from apt_jax.models import model as _model
from apt_jax.models import registry

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_ROOT / "data" / "sample"   # the shipped LIBERO-spec sample (data/README.md)
SAMPLE_DATASET = "libero_sample"
SAMPLE_TOKENIZER = SAMPLE_DIR / "tokenizer.model"
SAMPLE_NORM_STATS = SAMPLE_DIR / "norm_stats.json"

STAGES = ("stage1", "stage2", "joint")

# The full-size VLM: PaliGemma 3B (gemma_2b + So400m/14) in bf16, with openpi's π0 LIBERO widths (32 action dims,
# 48 prompt tokens).
PALIGEMMA_3B = dict(dtype="bfloat16", paligemma_variant="gemma_2b", siglip_variant="So400m/14", action_dim=32,
                    max_token_len=48)


def load(spec: str | os.PathLike, arg: str | None = None) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` -> the file's `get_config(arg)`, as `--config` of `python -m apt_jax.train` reads it."""
  path, _, spec_arg = str(spec).partition(":")
  arg = arg if arg is not None else (spec_arg or None)
  module_path = pathlib.Path(path)
  if not module_path.exists():
    raise FileNotFoundError(f"--config: {module_path} does not exist")
  mod_spec = importlib.util.spec_from_file_location(f"_apt_experiment_{module_path.stem}", module_path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def model_config(config: ml_collections.ConfigDict) -> _model.BaseModelConfig:
  """The head config of an experiment config's `model` block."""
  kwargs = config.model.kwargs
  return registry.create_config(config.model.get("head", "pi0"),
                                **(kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs or {})))


def parse_stage(arg) -> str:
  """`experiments/x.py:stage1` -> apt_stage ("stage1", "stage2", or "none" for plain π0 joint training)."""
  arg = arg or "stage1"
  if arg not in STAGES:
    raise ValueError(f"Config arg {arg!r}: expected one of {STAGES}")
  return "none" if arg == "joint" else arg


def stage_weight_loader(stage: str, kind: str, path: str) -> ml_collections.ConfigDict:
  """Stage 1 and one-stage runs load `path` (`kind`: paligemma_npz | openpi); Stage 2 starts from the Stage 1
  checkpoint (`init_from`) instead, so it loads nothing."""
  return ml_collections.ConfigDict(dict(kind=kind, path=path) if stage != "stage2" else dict(kind="none", path=""))


def base_config() -> ml_collections.ConfigDict:
  """Fields every experiment has; experiments override what they need."""
  c = ml_collections.ConfigDict()
  c.name = "train"
  c.seed = 42
  c.model = ml_collections.ConfigDict({"head": "pi0", "kwargs": ml_collections.ConfigDict()})
  c.data = ml_collections.ConfigDict()  # kind: rlds (apt_jax.data.config) | fake (random batches of the spec)
  c.tokenizer_path = ""
  c.asset_id = ""                  # norm stats go to <step>/assets/<asset_id>/norm_stats.json (openpi layout)
  c.batch_size = 32                # global
  c.num_train_steps = 30_000
  c.log_every_steps = 100
  c.ckpt_every_steps = 1000
  c.max_to_keep = 1
  c.keep_period = 5000             # also keep every keep_period-th step
  c.async_checkpoint = True
  c.progress_bar = True
  c.schedule = ml_collections.ConfigDict(dict(kind="warmup_cosine", peak_lr=2.5e-5, warmup_steps=1000,
                                              decay_steps=30_000, decay_lr=2.5e-6))
  # openpi's AdamW defaults; decay_all=True decays every param (openpi), False spares biases/norms/embeddings.
  c.optimizer = ml_collections.ConfigDict(dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-10,
                                               clip_gradient_norm=1.0, decay_all=True))
  c.ema_decay = ml_collections.FieldReference(None, field_type=float)
  c.grad_accum_steps = 1
  c.frozen_dtype = "bfloat16"      # frozen params kept in bf16 (openpi); "" keeps float32
  c.train_augment = True           # π0's crop/rotate/colour augmentation inside compute_loss
  c.mesh = ml_collections.ConfigDict(dict(fsdp_devices=1, min_fsdp_mbytes=4.0))
  c.distributed = ml_collections.ConfigDict(dict(num_processes=1, coordinator_address="", process_id=0))
  c.init_from = ""                 # Stage 2: a Stage 1 workdir / step dir / params dir
  c.weight_loader = ml_collections.ConfigDict(dict(kind="none", path=""))  # none | paligemma_npz | openpi
  return c


def paper_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The APT paper's LIBERO recipe (§2), in place: LIBERO data, batch 256, 100k steps per stage, AdamW 1e-4 constant
  after a 10k warmup, wd 1e-2 sparing biases/norms/embeddings, clip 1.0, no EMA, FSDP over 8 devices."""
  c.data = libero_data("/data/modified_libero_rlds")
  c.tokenizer_path = "/data/paligemma_tokenizer.model"
  c.asset_id = "libero"
  c.batch_size = 256
  c.num_train_steps = 100_000
  c.log_every_steps = 100
  c.ckpt_every_steps = 5000
  c.keep_period = 20_000
  c.schedule = dict(kind="warmup_constant", peak_lr=1e-4, warmup_steps=10_000)
  c.optimizer.update(dict(weight_decay=1e-2, decay_all=False))
  c.ema_decay = None
  c.mesh.fsdp_devices = 8
  return c


def sample_data(**overrides) -> ml_collections.ConfigDict:
  """The shipped LIBERO-spec sample dataset (data/sample), with openpi's pi0_libero data choices."""
  d = dict(kind="rlds",
           datasets=[dict(name=SAMPLE_DATASET, data_dir=str(SAMPLE_DIR), adapter="libero", weight=1.0,
                          split="train")],
           norm_stats_path=str(SAMPLE_NORM_STATS), delta_action_dims=6, use_quantile_norm=False,
           skip_bad_records=False, shuffle_buffer=1024)
  d.update(overrides)
  return ml_collections.ConfigDict(d)


def libero_data(data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """openvla's modified_libero_rlds, the 4 suites mixed with equal weight (openpi's pi0_libero choices)."""
  suites = ["libero_spatial_no_noops", "libero_object_no_noops", "libero_goal_no_noops", "libero_10_no_noops"]
  d = dict(kind="rlds",
           datasets=[dict(name=s, data_dir=data_dir, adapter="libero", weight=1.0, split="train") for s in suites],
           norm_stats_path=f"{data_dir}/norm_stats.json", delta_action_dims=6, use_quantile_norm=False,
           skip_bad_records=True, shuffle_buffer=50_000)
  d.update(overrides)
  return ml_collections.ConfigDict(d)
