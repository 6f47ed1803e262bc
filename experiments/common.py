"""Blocks shared by the experiment configs (big_vision style: each experiment is one `get_config(arg)` file)."""

import ml_collections

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "data" / "sample"

STAGES = ("stage1", "stage2", "joint")


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
  c.data = ml_collections.ConfigDict()
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
           datasets=[dict(name="libero_sample", data_dir=str(SAMPLE_DIR), adapter="libero", weight=1.0,
                          split="train")],
           norm_stats_path=str(SAMPLE_DIR / "norm_stats.json"), delta_action_dims=6, use_quantile_norm=False,
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
