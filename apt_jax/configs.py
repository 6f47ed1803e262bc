"""Blocks shared by the experiment configs (big_vision's `configs/common.py`): each experiment is one
`experiments/<name>.py` with `get_config(arg)`, loaded by path (`--config experiments/x.py:arg`, `load`, defined in
`apt_jax.experiment_files`).

`base_config()` lists every field the trainer reads, with its default (the data block's defaults are
`apt_jax.data.config.DataConfig`'s, the model's its head config's); experiments override what they need. `finalize`
checks an experiment config against them: an unknown key anywhere is an error naming it and the closest valid key.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from apt_jax.data import config as _data_config
from apt_jax.experiment_files import REPO_ROOT
from apt_jax.experiment_files import load  # noqa: F401  (configs.load: the experiment loader)
from apt_jax.models import model as _model
from apt_jax.models import registry

SAMPLE_DIR = REPO_ROOT / "data" / "sample"   # the shipped LIBERO-spec sample (data/README.md)
SAMPLE_DATASET = "libero_sample"
SAMPLE_TOKENIZER = SAMPLE_DIR / "tokenizer.model"
SAMPLE_NORM_STATS = SAMPLE_DIR / "norm_stats.json"

STAGES = ("stage1", "stage2", "joint")

# The full-size VLM: PaliGemma 3B (gemma_2b + So400m/14) in bf16, with openpi's π0 LIBERO widths (32 action dims,
# 48 prompt tokens).
PALIGEMMA_3B = dict(dtype="bfloat16", paligemma_variant="gemma_2b", siglip_variant="So400m/14", action_dim=32,
                    max_token_len=48)


def model_config(config: ml_collections.ConfigDict) -> _model.BaseModelConfig:
  """The head config of an experiment config's `model` block."""
  kwargs = config.model.kwargs
  return registry.create_config(config.model.head,
                                **(kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs or {})))


def parse_stage(arg) -> str:
  """`experiments/x.py:stage1` -> apt_stage ("stage1", "stage2", or "none" for plain π0 joint training)."""
  arg = arg or "stage1"
  if arg not in STAGES:
    raise ValueError(f"Config arg {arg!r}: expected one of {STAGES}")
  return "none" if arg == "joint" else arg


# The APT paper's VLM fine-tuning through LoRA (its README): r=16, α=16 on q/k/v/o/gate/up/down, VLM lr 5e-6.
VLM_LORA_LR = 5e-6


def vlm_lora(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """In place, on a Stage 2 config: LoRA adapters on the VLM's Gemma (`gemma_2b_lora`: r=16, α=16 on every attention
  einsum and MLP weight) train at VLM_LORA_LR; the VLM's own weights (and SigLIP) stay frozen."""
  c.model.kwargs.paligemma_variant = "gemma_2b_lora"
  c.model.kwargs.vlm_lr_multiplier = VLM_LORA_LR / c.schedule.peak_lr
  return c


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
  c.data = data_block(kind="rlds")  # apt_jax.data.config: kind rlds (datasets needed) | fake (random batches)
  c.tokenizer_path = ""
  c.asset_id = ""                  # norm stats go to <step>/assets/<asset_id>/norm_stats.json (openpi layout)
  c.batch_size = 32                # global
  c.num_train_steps = 30_000
  c.log_every_steps = 100
  c.ckpt_every_steps = 1000
  c.checkpoint_dir = ""            # "": <workdir>/checkpoints; or a bucket every host writes to (gs://...)
  c.max_to_keep = 2                # >= 2: a step broken by a crash leaves an earlier one to resume from
  c.keep_period = ml_collections.FieldReference(5000, field_type=int)  # also keep every keep_period-th step
  c.async_checkpoint = True
  c.progress_bar = True
  c.schedule = ml_collections.ConfigDict(dict(kind="warmup_cosine", peak_lr=2.5e-5, warmup_steps=1000,
                                              decay_steps=30_000, decay_lr=2.5e-6))
  # openpi's AdamW defaults; decay_all=True decays every param (openpi), False spares biases/norms/embeddings.
  c.optimizer = ml_collections.ConfigDict(dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-10,
                                               clip_gradient_norm=1.0, decay_all=True))
  c.ema_decay = ml_collections.FieldReference(None, field_type=float)
  # Knowledge insulation's VL co-training loss weight (batches with a "vl" entry); 0: none, and then an insulated VLM
  # gets no gradient at all, so it is kept out of the optimizer like a frozen one (optimizer.frozen_filter).
  c.vl_cotrain_weight = 0.0
  c.grad_accum_steps = 1
  c.frozen_dtype = "bfloat16"      # frozen params kept in bf16 (openpi); "" keeps float32
  c.train_augment = True           # π0's crop/rotate/colour augmentation inside compute_loss
  c.mesh = ml_collections.ConfigDict(dict(fsdp_devices=1, min_fsdp_mbytes=4.0))
  # num_processes -1: from the cluster (Cloud TPU pod, SLURM: jax.distributed finds the coordinator and ranks).
  c.distributed = ml_collections.ConfigDict(dict(
      num_processes=1, coordinator_address="", process_id=0,
      local_device_ids=ml_collections.FieldReference(None, field_type=tuple)))  # None: all of the host's devices
  c.init_from = ""                 # Stage 2: a Stage 1 workdir / step dir / params dir
  c.weight_loader = ml_collections.ConfigDict(dict(kind="none", path=""))  # none | paligemma_npz | openpi
  return c


# Blocks whose keys are not base_config()'s: the model's kwargs are its head config's fields, the data block's are
# DataConfig's (apt_jax.data.config).
_OPEN_BLOCKS = ("model.kwargs", "data")


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config the trainer runs: every key checked and every default filled in.

  Keys are checked against `base_config()`, `model.kwargs` against the head config's fields and `data` against
  `DataConfig` / `DatasetEntry`: an unknown key is a ValueError naming it and the closest valid key. Missing keys
  (e.g. in a block an experiment replaced whole) take base_config()'s default; the data block gets DataConfig's.
  """
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  out = _merge_checked(base_config().to_dict(), d, "config")
  head = out["model"]["head"]
  fields = [f.name for f in dataclasses.fields(registry.config_class(head))]
  _data_config.check_keys(out["model"]["kwargs"], fields, f"config.model.kwargs ({head} head)")
  out["data"] = _data_config.to_dict(_data_config.parse_data_config(out["data"]))
  return ml_collections.ConfigDict(out)


def _merge_checked(base: dict, cfg: dict, where: str) -> dict:
  _data_config.check_keys(cfg, base, where)
  out = dict(base)
  for k, v in cfg.items():
    path = f"{where}.{k}"
    if isinstance(base[k], dict) and path.removeprefix("config.") not in _OPEN_BLOCKS:
      if not isinstance(v, dict):
        raise ValueError(f"{path} must be a block of keys {sorted(base[k])}, got {v!r}")
      v = _merge_checked(base[k], v, path)
    out[k] = v
  return out


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
  # None: the stage's own (frozen in both APT stages), typed so that `--config.model.kwargs.vlm_trainable=True`
  # (Table 2's "+ VLM fine-tuning") parses on the command line.
  c.model.kwargs.vlm_trainable = ml_collections.FieldReference(None, field_type=bool)
  return c


def data_block(**fields) -> ml_collections.ConfigDict:
  """A data block with every DataConfig field (the defaults unless given), so `--config.data.<field>=...` overrides
  work on any experiment."""
  return ml_collections.ConfigDict(_data_config.to_dict(_data_config.DataConfig(**fields)))


def sample_data(**overrides) -> ml_collections.ConfigDict:
  """The shipped LIBERO-spec sample dataset (data/sample), with openpi's pi0_libero data choices."""
  d = dict(datasets=[dict(name=SAMPLE_DATASET, data_dir=str(SAMPLE_DIR), adapter="libero")],
           norm_stats_path=str(SAMPLE_NORM_STATS), delta_action_dims=6, shuffle_buffer=1024)
  d.update(overrides)
  return _checked_data_block(d)


def libero_data(data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """openvla's modified_libero_rlds, the 4 suites mixed with equal weight (openpi's pi0_libero choices)."""
  suites = ["libero_spatial_no_noops", "libero_object_no_noops", "libero_goal_no_noops", "libero_10_no_noops"]
  d = dict(datasets=[dict(name=s, data_dir=data_dir, adapter="libero") for s in suites],
           norm_stats_path=f"{data_dir}/norm_stats.json", delta_action_dims=6, skip_bad_records=True,
           shuffle_buffer=50_000)
  d.update(overrides)
  return _checked_data_block(d)


def _checked_data_block(d: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(_data_config.to_dict(_data_config.parse_data_config(d)))
