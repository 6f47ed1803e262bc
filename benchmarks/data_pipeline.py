"""Throughput of the data pipeline on the shipped LIBERO-spec sample, and its ratio to the debug train step, as JSON.

    .venv/bin/python benchmarks/data_pipeline.py [--batch_size 32] [--num_batches 60] [--num_workers N] [--augment]
        [--train_samples_per_s X | --no_train_step]
        [--feed AOT_JSON | --feed_config EXPERIMENT [--feed_topology v5e-16] [--chips_per_host 4]]

Pipeline: batches in openpi's layout at 224x224 with 2 real cameras (base + left wrist; the right wrist is the zero
image LIBERO gets), action horizon 50, action_dim 32, delta actions + z-score normalization, tokenized prompts,
shuffled training order, pulled as fast as possible. The first batch (TensorFlow start-up, first read) is timed
separately (`first_batch_s`).
* `samples_per_s`: the default config. The sample (~180 steps, ~52 MB decoded) fits the image and episode caches, so
  after the first epoch no JPEG is decoded or resized again; this is the steady state of a debug run.
* `samples_per_s_uncached`: caches off (`image_cache_mb=0, episode_cache_mb=0`): every sample decodes and resizes
  two 256x256 JPEGs and every epoch re-reads the TFRecord, as for datasets much larger than the caches.

Train step: unless `--train_samples_per_s` is given (or `--no_train_step`), the debug recipe
(`python -m apt_jax.train --config experiments/debug.py:stage1`) runs with `config.data.kind=fake` (random batches,
so no input pipeline competes for the CPU) for `--train_steps` steps; its samples/s = batch size x steps/s between
the second logged step and the last (compilation excluded). `ratio` = pipeline samples/s / train samples/s, for both
pipeline numbers; the issue's target is >= 5x.

Per core: the uncached pipeline again with one decoding thread and no prefetch thread; `decoded_images_per_s_per_core`
is its images (2 a sample) per CPU second of the process (all its threads: TensorFlow's too), so a loaded machine
does not lower it. `--feed` takes an `aot_check` report of a TPU train step (e.g. docs/fits/<row>__v5e-16__*.json;
one the compiler refused as too big serves too) and gives the images/s a chip consumes at 50% MFU (its analytic
model FLOPs per step, or the compiled ones for heads without an analytic count) and the host cores that takes at
the measured per-core rate. `--feed_config` takes the analytic count of an experiment instead (no compile).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from apt_jax import configs  # noqa: E402
from apt_jax.tools import tpu  # noqa: E402

TARGET_RATIO = 5.0
IMAGES_PER_SAMPLE = 2  # LIBERO: base + wrist camera decoded; the right wrist is the zero image
FEED_MFU = 0.5


def run_pipeline(*, batch_size: int, num_batches: int, num_workers: int, prefetch: int, augment: bool,
                 cache: bool = True, seed: int = 0) -> dict:
  from apt_jax.data import create_data_loader
  t0 = time.perf_counter()
  extra = {} if cache else {"image_cache_mb": 0, "episode_cache_mb": 0}
  cfg = configs.sample_data(num_workers=num_workers, prefetch=prefetch, augment=augment, **extra)
  loader = create_data_loader(cfg, batch_size=batch_size, seed=seed, action_horizon=50, action_dim=32,
                              max_token_len=48, tokenizer_path=str(configs.SAMPLE_TOKENIZER), shuffle=True,
                              train=True)
  t1 = time.perf_counter()
  batch = next(loader)
  t2, c2 = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    batch = next(loader)
  t3, c3 = time.perf_counter(), time.process_time()
  loader.close()
  fmt = lambda a: f"{a.dtype}[{','.join(map(str, a.shape))}]"
  shapes = {k: fmt(v) if hasattr(v, "shape") else {c: fmt(a) for c, a in v.items()} for k, v in batch.items()}
  return {
      "samples_per_s": round(num_batches * batch_size / (t3 - t2), 1),
      # CPU seconds of every thread of this process: a per-core rate that holds on a loaded machine too.
      "samples_per_cpu_s": round(num_batches * batch_size / (c3 - c2), 1),
      "create_s": round(t1 - t0, 3),
      "first_batch_s": round(t2 - t1, 3),
      "shapes": shapes,
  }


def measure_debug_train_step(num_steps: int) -> dict:
  """Runs the debug recipe on fake data in a subprocess; returns its samples/s (or the error)."""
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [sys.executable, "-m", "apt_jax.train", "--config", "experiments/debug.py:stage1", "--workdir", workdir,
           "--config.data.kind=fake", f"--config.num_train_steps={num_steps}", "--config.ckpt_every_steps=100000",
           "--config.progress_bar=False", "--config.log_every_steps=10"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    metrics_path = pathlib.Path(workdir) / "metrics.jsonl"
    if proc.returncode != 0 or not metrics_path.exists():
      return {"error": f"debug train run failed (rc={proc.returncode}): {proc.stderr[-500:]}"}
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    config = json.loads((pathlib.Path(workdir) / "config.json").read_text())
  if len(rows) < 3:
    return {"error": f"too few logged steps ({len(rows)})"}
  a, b = rows[1], rows[-1]
  steps_per_s = (b["step"] - a["step"]) / (b["time_s"] - a["time_s"])
  batch_size = int(config["batch_size"])
  return {"train_samples_per_s": round(steps_per_s * batch_size, 1), "train_batch_size": batch_size,
          "train_step_ms": round(1e3 / steps_per_s, 2), "train_steps_timed": b["step"] - a["step"],
          "train_samples_per_s_source": "measured: experiments/debug.py:stage1 with config.data.kind=fake"}


def feeding(report: dict, images_per_s_per_core: float, chips_per_host: int) -> dict:
  """Images/s per chip of the compiled step at FEED_MFU, and the host cores to decode them."""
  chip = tpu.parse_topology(report["topology"]).chip
  step = report["train_step"]
  model_flops = (report.get("analytic_train_flops") or {}).get("model") or step["flops"]
  step_s = model_flops / (report["devices"] * FEED_MFU * chip.peak_bf16_tflops * 1e12)
  per_chip = IMAGES_PER_SAMPLE * report["batch_size"] / step_s / report["devices"]
  return {"config": report["config"], "topology": report["topology"], "mfu": FEED_MFU,
          "step_s_at_mfu": round(step_s, 3), "images_per_s_per_chip": round(per_chip, 1),
          "chips_per_host": chips_per_host, "images_per_s_per_host": round(per_chip * chips_per_host, 1),
          "host_cores_needed": math.ceil(per_chip * chips_per_host / images_per_s_per_core)}


def analytic_report(config_path: str, topology: str, batch_size: int) -> dict:
  """The fields `feeding` reads, from the analytic π0 count instead of a compile (seconds, not minutes)."""
  from apt_jax.tools import pi0_flops
  config = configs.load(REPO / config_path)  # path[:arg]
  topo = tpu.parse_topology(topology)
  flops = pi0_flops.train_step_flops(configs.model_config(config), batch_size)
  return {"config": config.get("name"), "topology": topo.name, "devices": topo.num_chips, "batch_size": batch_size,
          "analytic_train_flops": flops, "train_step": {}}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--num_batches", type=int, default=60)
  parser.add_argument("--num_workers", type=int, default=0, help="decoding threads; 0: one per host core")
  parser.add_argument("--prefetch", type=int, default=2)
  parser.add_argument("--augment", action="store_true", help="also time in-pipeline augmentation")
  parser.add_argument("--train_samples_per_s", type=float, default=None,
                      help="samples/s the debug train step consumes (skips measuring it)")
  parser.add_argument("--no_train_step", action="store_true", help="do not measure the debug train step")
  parser.add_argument("--train_steps", type=int, default=150)
  parser.add_argument("--feed", default=None, help="aot_check JSON of a TPU train step: host cores to feed it")
  parser.add_argument("--feed_config", default=None,
                      help="instead of --feed: an experiment (π0 heads), its analytic FLOPs on --feed_topology")
  parser.add_argument("--feed_topology", default="v5e-16")
  parser.add_argument("--feed_batch_size", type=int, default=256, help="with --feed_config (the paper's 256)")
  parser.add_argument("--chips_per_host", type=int, default=4, help="chips per host of that slice (v5e-16: 4)")
  args = parser.parse_args(argv)

  common = dict(batch_size=args.batch_size, num_batches=args.num_batches, num_workers=args.num_workers,
                prefetch=args.prefetch)
  cached = run_pipeline(augment=False, **common)
  uncached = run_pipeline(augment=False, cache=False, **common)
  one_core = run_pipeline(augment=False, cache=False, **{**common, "num_workers": 1, "prefetch": 0})
  per_core = IMAGES_PER_SAMPLE * one_core["samples_per_cpu_s"]
  result = {
      "benchmark": "data_pipeline",
      "dataset": f"data/sample/{configs.SAMPLE_DATASET} (LIBERO no_noops spec, 256x256 jpeg, 6 episodes)",
      "image_size": [224, 224],
      "cameras": ["base_0_rgb", "left_wrist_0_rgb"],
      "batch_size": args.batch_size,
      "num_batches_timed": args.num_batches,
      "num_workers": args.num_workers,
      "prefetch": args.prefetch,
      "cpu_count": os.cpu_count(),
      "machine": platform.machine(),
      "samples_per_s": cached["samples_per_s"],
      "samples_per_s_uncached": uncached["samples_per_s"],
      "samples_per_s_uncached_1_thread": one_core["samples_per_s"],
      "samples_per_cpu_s_uncached_1_thread": one_core["samples_per_cpu_s"],
      "decoded_images_per_s_per_core": round(per_core, 1),
      "create_s": cached["create_s"],
      "first_batch_s": cached["first_batch_s"],
      "shapes": cached["shapes"],
  }
  if args.augment:
    result["samples_per_s_augment"] = run_pipeline(augment=True, **common)["samples_per_s"]
    result["samples_per_s_augment_uncached"] = run_pipeline(augment=True, cache=False, **common)["samples_per_s"]
  if args.train_samples_per_s:
    train = {"train_samples_per_s": args.train_samples_per_s, "train_samples_per_s_source": "--train_samples_per_s"}
  elif args.no_train_step:
    train = {"train_samples_per_s": None, "train_samples_per_s_source": "not measured (--no_train_step)"}
  else:
    train = measure_debug_train_step(args.train_steps)
  result.update(train)
  tps = train.get("train_samples_per_s")
  result["ratio"] = round(result["samples_per_s"] / tps, 2) if tps else None
  result["ratio_uncached"] = round(result["samples_per_s_uncached"] / tps, 2) if tps else None
  result["target_ratio"] = TARGET_RATIO
  result["meets_target"] = None if tps is None else result["ratio"] >= TARGET_RATIO
  if args.feed:
    result["feeding"] = feeding(json.loads(pathlib.Path(args.feed).read_text()), per_core, args.chips_per_host)
  elif args.feed_config:
    result["feeding"] = feeding(analytic_report(args.feed_config, args.feed_topology, args.feed_batch_size), per_core,
                                args.chips_per_host)
  print(json.dumps(result, indent=2))
  return result


if __name__ == "__main__":
  main()
