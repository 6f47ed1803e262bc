"""`make demo`: testbed v2 end to end on CPU (docs/testbed_v2_protocol.md).

  python -m apt_jax.demo --config experiments/testbed_demo.py --workdir out/demo --overwrite
  python -m apt_jax.demo --config experiments/testbed_full.py:shortcut --workdir out/testbed_v2 --resume

Pretrains a tiny PaliGemma per seed on a renderer-generated corpus, gates it with linear probes (a VLM that cannot
locate what the instruction names stops the run, loudly), trains the Table 2 recipes and controls on both data arms,
evaluates them closed-loop on every split, and writes results.jsonl (per episode), results.{md,json} (tables, the
pre-registered endpoint), plots and a checkpoint per recipe to the workdir. An existing workdir needs --overwrite
(start over) or --resume (skip what is done).
"""

from __future__ import annotations

import logging
import pathlib
import shutil
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/testbed_demo.py", "Testbed config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "out/demo", "Output directory.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete an existing workdir first.")
_RESUME = flags.DEFINE_bool("resume", False, "Continue in an existing workdir, skipping completed work.")


def main(argv):
  del argv
  logging.getLogger("absl").setLevel(logging.WARNING)
  from apt_jax.testbed import experiment
  from apt_jax.testbed import probes
  workdir = pathlib.Path(_WORKDIR.value).absolute()
  if workdir.exists() and any(workdir.iterdir()):
    if _OVERWRITE.value:
      shutil.rmtree(workdir)
    elif not _RESUME.value:
      sys.exit(f"{workdir} exists: pass --overwrite to start over or --resume to continue it")
  command = "python -m apt_jax.demo " + " ".join(sys.argv[1:])
  try:
    summary = experiment.run(_CONFIG.value, workdir, command=command)
  except probes.VlmGateError as e:
    bar = "!" * 100
    sys.exit(f"\n{bar}\nNO RECIPE COMPARISON: {e}\n{bar}")
  print(f"\nResults: {workdir}/results.md (tables, endpoint)  {workdir}/results.jsonl (per episode)\n"
        f"Plots: " + "  ".join(str(p) for p in sorted(workdir.glob("*.png")))
        + f"\nTotal {summary['timings']['total_s']:.0f}s")


if __name__ == "__main__":
  app.run(main)
