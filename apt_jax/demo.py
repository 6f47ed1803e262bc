"""`make demo`: APT Stage 1 then Stage 2 on the debug config and the shipped LIBERO-spec sample, on CPU.

  python -m apt_jax.demo [--workdir out/demo] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import time

from apt_jax import train
from experiments import debug


def run(workdir: pathlib.Path, steps: int) -> dict:
  out = {}
  for stage in ("stage1", "stage2"):
    config = debug.get_config(stage)
    config.num_train_steps = steps
    if stage == "stage2":
      config.init_from = str(workdir / "stage1")
    t = time.time()
    print(f"== APT {stage}: python -m apt_jax.train --config experiments/debug.py:{stage} "
          f"--workdir {workdir / stage}" + (f" --config.init_from={config.init_from}" if config.init_from else ""))
    metrics = train.main(config, workdir / stage)
    rows = train.read_metrics(workdir / stage)
    out[stage] = {"first_loss": rows[0]["loss"], "last_loss": metrics["loss"], "seconds": round(time.time() - t, 1),
                  "checkpoints": str(workdir / stage / "checkpoints"), "metrics": str(workdir / stage / "metrics.jsonl")}
  train.plot_losses({s: workdir / s for s in ("stage1", "stage2")}, workdir / "loss.png")
  out["plot"] = str(workdir / "loss.png")
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", default="out/demo")
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  workdir = pathlib.Path(args.workdir).absolute()
  if workdir.exists():
    import shutil
    shutil.rmtree(workdir)  # A demo starts fresh (training itself would resume).
  summary = run(workdir, args.steps)
  print(json.dumps(summary, indent=1))
  print(f"Checkpoints: {workdir}/stage{{1,2}}/checkpoints  metrics: {workdir}/stage{{1,2}}/metrics.jsonl  "
        f"plot: {summary['plot']}")


if __name__ == "__main__":
  main()
