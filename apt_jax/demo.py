"""`make demo`: the laptop-scale APT testbed, end to end on CPU (issue #7).

  python -m apt_jax.demo [--workdir out/demo] [--config demo|tiny|full]

Renders a 2-D tabletop (apt_jax/envs/tabletop.py), pretrains a tiny PaliGemma on a synonym-rich corpus from the
same renderer (prefix-LM, saved as a big_vision npz), trains the Table 2 recipes (π0 joint, APT frozen, APT + VLM
FT, KI, KI + two stages, and the Stage 2 mask ablation) on single-template demonstrations in a LIBERO-like fixed
layout, evaluates them closed-loop on the seen / paraphrase / compositional / task-perturbation splits, and writes
results.{md,json,png} to the workdir.
The config is experiments/testbed_demo.py; the longer run is experiments/testbed_full.py.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import shutil
import sys


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="out/demo")
  parser.add_argument("--config", default="demo", choices=["demo", "tiny", "full"])
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  logging.getLogger("absl").setLevel(logging.WARNING)
  from apt_jax.testbed import experiment
  from experiments import testbed_demo, testbed_full
  cfg = {"demo": testbed_demo.get_config, "tiny": testbed_demo.tiny_config, "full": testbed_full.get_config}[
      args.config]()
  workdir = pathlib.Path(args.workdir).absolute()
  if workdir.exists():
    shutil.rmtree(workdir)  # A demo starts fresh.
  command = "python -m apt_jax.demo " + " ".join(sys.argv[1:])
  summary = experiment.run(cfg, workdir, command=command.strip())
  print(f"\nResults: {workdir}/results.md  {workdir}/results.json  plot: {workdir}/results.png  "
        f"(total {summary['timings']['total_s']:.0f}s)")


if __name__ == "__main__":
  main()
