"""`make demo`: the laptop-scale APT testbed, end to end on CPU (issue #7).

  python -m apt_jax.demo --config experiments/testbed_demo.py[:tiny] [--workdir out/demo] [--resume | --overwrite]

Renders a 2-D tabletop (apt_jax/testbed/tabletop.py), pretrains a tiny PaliGemma on a synonym-rich corpus from the
same renderer, trains the Table 2 recipes on single-template demonstrations, evaluates them closed-loop on the seen /
paraphrase / compositional / task-perturbation splits, and writes results.{md,json,png} to the workdir
(apt_jax/testbed/experiment.py). An existing workdir is never deleted silently (openpi's rule): `--resume` reuses
what a run of the same config finished there, `--overwrite` deletes it first; without either the demo refuses.
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
