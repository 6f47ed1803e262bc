"""`make demo`: testbed v2 end to end on CPU (docs/testbed_v2_protocol.md).

  python -m apt_jax.demo --config experiments/testbed_demo.py[:tiny] [--workdir out/demo] [--resume | --overwrite]
  python -m apt_jax.demo --config experiments/testbed_full.py:shortcut --workdir out/testbed_v2 --resume

Pretrains a tiny PaliGemma per seed, gates it with linear probes (a VLM that cannot locate what the instruction names
stops the run with a banner and exit status 1), trains the Table 2 recipes and controls on both data arms, evaluates
them closed-loop on every split and writes results.jsonl (per episode), results.{md,json} (tables, the pre-registered
endpoint), plots and a checkpoint per recipe (apt_jax/testbed/experiment.py). An existing workdir is never deleted
silently (openpi's rule): `--resume` skips what is finished there, `--overwrite` deletes it first; without either
the demo refuses.
"""

from __future__ import annotations

import logging
import pathlib
import shutil
import sys

from apt_jax.testbed import experiment
from apt_jax.testbed import probes


def prepare_workdir(workdir: pathlib.Path, *, resume: bool, overwrite: bool) -> None:
  """openpi's explicit choice for an existing, non-empty workdir: resume it or delete it; refuse otherwise."""
  if resume and overwrite:
    raise ValueError("--resume and --overwrite exclude each other")
  if not workdir.exists() or not any(workdir.iterdir()):
    return
  if overwrite:
    shutil.rmtree(workdir)
  elif not resume:
    raise FileExistsError(f"{workdir} already holds a run: pass --resume to continue it (finished stages are reused) "
                          "or --overwrite to delete it and start over")


def main(config, workdir, *, resume: bool = False, overwrite: bool = False) -> dict:
  workdir = pathlib.Path(workdir).absolute()
  prepare_workdir(workdir, resume=resume, overwrite=overwrite)
  command = "python -m apt_jax.demo " + " ".join(sys.argv[1:])
  summary = experiment.run(config, workdir, command=command.strip())
  print(f"\nResults: {workdir}/results.md (tables, the pre-registered endpoint)  {workdir}/results.jsonl (per episode)"
        "\nPlots: " + "  ".join(str(p) for p in sorted(workdir.glob("*.png")))
        + f"\nTotal {summary['timings']['total_s']:.0f}s")
  return summary


def _run(argv):
  del argv
  from absl import flags
  logging.getLogger("absl").setLevel(logging.WARNING)
  f = flags.FLAGS
  try:
    main(f.config, f.workdir, resume=f.resume, overwrite=f.overwrite)
  except probes.VlmGateError as e:
    bar = "!" * 100
    sys.exit(f"\n{bar}\nNO RECIPE COMPARISON: {e}\n{bar}")
  except (FileExistsError, ValueError) as e:
    if "--resume" not in str(e) and "--overwrite" not in str(e):
      raise
    sys.exit(f"apt_jax.demo: {e}")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Testbed config, e.g. experiments/testbed_demo.py[:tiny].",
                                  lock_config=True)
  flags.DEFINE_string("workdir", "out/demo", "Where the tokenizer, VLM, per-run results and report go.")
  flags.DEFINE_bool("resume", False, "Continue the run in --workdir, reusing its finished stages.")
  flags.DEFINE_bool("overwrite", False, "Delete --workdir first.")
  flags.mark_flags_as_required(["config"])
  app.run(_run)
