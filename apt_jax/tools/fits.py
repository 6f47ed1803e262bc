"""What fits where: every full-size experiment compiled for small TPU slices at batch 256, as a README table.

  nice -n 10 python -m apt_jax.tools.fits [--cache docs/fits] [--readme README.md] [--rows pi0_libero,...]
  python -m apt_jax.tools.fits --cached_only    # the table from the cache alone, in seconds

Per experiment (ROWS) and slice (TOPOLOGIES) it tries settings from fastest to leanest (SETTINGS: FSDP over the
config's devices, then over the whole slice, then gradient accumulation 2, 4, 8; remat as the config has it,
`nothing_saveable` for every full-size model) and keeps the first that fits. Each compile (`aot_check`, one
subprocess each: minutes of CPU for a full-size model) is cached as JSON in `--cache`, so a rerun resumes and a
finished table regenerates in seconds; with `--cached_only` a cell whose compiles are not all cached is shown as
not compiled. The table goes between the FITS markers of `--readme`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import subprocess
import sys

from apt_jax.tools import tpu

REPO = pathlib.Path(__file__).resolve().parents[2]
BATCH_SIZE = 256  # the APT paper's
TOPOLOGIES = ("v4-8", "v5e-8", "v5e-16", "v5p-8", "v6e-8")
GRAD_ACCUM = (1, 2, 4, 8)
BEGIN, END = "<!-- fits:begin (python -m apt_jax.tools.fits) -->", "<!-- fits:end -->"


@dataclasses.dataclass(frozen=True)
class Row:
  key: str            # cache file prefix
  label: str          # README row
  config: str         # experiments/<file>.py[:arg]
  overrides: tuple[str, ...] = ()  # extra --config.x=y flags


# Add a row per new full-size experiment: the table picks it up on the next run.
ROWS = (
    Row("pi0_libero", "π0 baseline (openpi `pi0_libero`, EMA)", "experiments/pi0_libero.py"),
    Row("apt_stage1", "APT Stage 1 (π0, VLM frozen)", "experiments/pi0_apt_libero.py:stage1"),
    Row("apt_stage2", "APT Stage 2 (π0, VLM frozen)", "experiments/pi0_apt_libero.py:stage2"),
    Row("apt_stage2_vlm", "APT Stage 2, VLM tuned", "experiments/pi0_apt_libero.py:stage2",
        ("--config.model.kwargs.vlm_trainable=True",)),
    Row("gr00t_stage2", "GR00T-style head, Stage 2", "experiments/gr00t_apt_libero.py:stage2"),
    Row("apt_expert_stage2", "APT expert (gated fusion), Stage 2", "experiments/apt_expert_libero.py:stage2"),
    Row("pi05_libero", "π0.5 baseline (openpi `pi05_libero`, EMA)", "experiments/pi05_libero.py"),
    Row("pi0_lora", "π0 LoRA (openpi `pi0_libero_low_mem_finetune`)", "experiments/pi0_libero_low_mem_finetune.py"),
)


def settings(config_fsdp: int, chips: int):
  """(fsdp_devices, grad_accum_steps), fastest first: the config's FSDP (capped to the slice), all chips, then
  gradient accumulation over all chips while every chip still gets a whole micro-batch row."""
  first = math.gcd(config_fsdp, chips)
  yield first, 1
  if first != chips:
    yield chips, 1
  for accum in GRAD_ACCUM[1:]:
    if BATCH_SIZE % (accum * chips) == 0:
      yield chips, accum


def _config_fsdp(row: Row) -> int:
  from apt_jax import configs
  return configs.load(REPO / row.config).mesh.fsdp_devices


def compile_cell(row: Row, topology: str, fsdp: int, accum: int, cache: pathlib.Path,
                 cached_only: bool = False) -> dict | None:
  """One aot_check (cached; None if not cached and `cached_only`). The JSON's train_step carries fits, per_chip_GiB
  or the compiler's required_GiB."""
  path = cache / f"{row.key}__{topology}__fsdp{fsdp}_accum{accum}.json"
  if path.exists():
    return json.loads(path.read_text())
  if cached_only:
    return None
  cmd = [sys.executable, "-m", "apt_jax.tools.aot_check", "--config", str(REPO / row.config), "--topology", topology,
         "--noserving", f"--config.batch_size={BATCH_SIZE}", f"--config.mesh.fsdp_devices={fsdp}",
         f"--config.grad_accum_steps={accum}", *row.overrides]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
  if proc.returncode:
    raise RuntimeError(f"aot_check failed for {row.key} on {topology} (fsdp {fsdp}, accum {accum}):\n"
                       f"{' '.join(cmd)}\n{proc.stderr[-3000:]}")
  report = json.loads(proc.stdout)
  cache.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(report, indent=1) + "\n")
  return report


def fit_cell(row: Row, topology: str, cache: pathlib.Path, log=print, cached_only: bool = False) -> dict | None:
  """The first setting that fits, or the last one tried: {fsdp, accum, remat, GiB, fits}. With `cached_only`, a
  setting not cached ends the search: the last one tried gets `pending` (None if it was the first)."""
  chips = tpu.parse_topology(topology).num_chips
  cell = None
  for fsdp, accum in settings(_config_fsdp(row), chips):
    report = compile_cell(row, topology, fsdp, accum, cache, cached_only)
    if report is None:
      return cell and {**cell, "pending": True}
    step = report["train_step"]
    gib = step["per_chip_GiB"]["total"] if "per_chip_GiB" in step else step["required_GiB"]
    cell = dict(fsdp=fsdp, accum=accum, remat=report["remat_policy"], GiB=gib, fits=step["fits"],
                hbm_GiB=step["hbm_GiB"], step_time_lower_bound_s=step.get("step_time_lower_bound_s"))
    log(f"{row.key} {topology} fsdp {fsdp} accum {accum}: {gib:.1f} GiB, fits={step['fits']}")
    if step["fits"]:
      break
  return cell


def _order(topology: str):
  t = tpu.parse_topology(topology)
  return t.num_chips, t.chip.hbm_gib


def table(cells: dict[tuple[str, str], dict | None], rows=ROWS, topologies=TOPOLOGIES) -> str:
  """Markdown: per-chip GiB, ✓/✗ and the setting per slice; the smallest slice that fits (fewest chips, then least
  HBM), named only when every smaller slice was compiled too. A missing cell reads "not compiled"; one whose next
  setting is missing says so."""
  head = [f"{t} ({tpu.parse_topology(t).num_chips}×{tpu.parse_topology(t).chip.hbm_gib:g} GiB)" for t in topologies]
  lines = ["| experiment | " + " | ".join(head) + " | smallest that fits |",
           "|---|" + "---|" * len(topologies) + "---|"]
  for row in rows:
    out = []
    for t in topologies:
      c = cells.get((row.key, t))
      out.append("not compiled" if c is None else
                 f"{c['GiB']:.1f} {'✓' if c['fits'] else '✗'} (FSDP {c['fsdp']}, accum {c['accum']})"
                 + ("; next setting not compiled" if c.get("pending") else ""))
    smallest = "none of these"
    for t in sorted(topologies, key=_order):
      c = cells.get((row.key, t))
      if c is None or c.get("pending"):
        smallest = "not known yet"
        break
      if c["fits"]:
        smallest = f"{t}: FSDP {c['fsdp']}, grad accum {c['accum']}, remat `{c['remat']}`"
        break
    lines.append(f"| {row.label} | " + " | ".join(out) + f" | {smallest} |")
  return "\n".join(lines)


def write_readme(readme: pathlib.Path, text: str):
  content = readme.read_text()
  if BEGIN not in content or END not in content:
    raise ValueError(f"{readme} lacks the markers {BEGIN!r} ... {END!r} where the table goes")
  head, rest = content.split(BEGIN, 1)
  readme.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--cache", default=str(REPO / "docs" / "fits"), help="one JSON per compile; reused on reruns")
  p.add_argument("--readme", default=str(REPO / "README.md"))
  p.add_argument("--rows", default="", help="comma-separated row keys (default: all)")
  p.add_argument("--topologies", default=",".join(TOPOLOGIES))
  p.add_argument("--cached_only", action="store_true", help="compile nothing: the table from the cache alone")
  args = p.parse_args(argv)
  from tqdm import tqdm

  rows = [r for r in ROWS if not args.rows or r.key in args.rows.split(",")]
  topologies = args.topologies.split(",")
  cells = {}
  with tqdm(total=len(rows) * len(topologies), desc="fits") as bar:
    for row in rows:
      for t in topologies:
        cells[row.key, t] = fit_cell(row, t, pathlib.Path(args.cache), log=bar.write, cached_only=args.cached_only)
        bar.update()
  text = table(cells, rows, topologies)
  print(text)
  if args.readme:
    write_readme(pathlib.Path(args.readme), text)


if __name__ == "__main__":
  main()
