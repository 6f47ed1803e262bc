"""Fig. 4 on one GPU (experiments/testbed_gpu.py): each head once over all its seeds, trained together (seeds
vmapped): first the π-style head, whose run trains and gates every seed's VLM, then the GR00T-style and APT-expert
heads on those VLMs; after every head the pooled per-episode rows, the logs and the Fig. 4 report are copied into OUT,
so a run stopped at its time limit leaves the finished heads' results there.

  experiments/testbed_gpu.sh OUT [--tiny] [--work /tmp/gpu_fig4] [--budget_s 480]   # runs this module

OUT receives results.jsonl (every head's episodes; rows carry `head`), log.txt, fig4.md, fig4.json and the plots.
A seed whose VLM fails the probe gate is logged and dropped (from that head and the later ones), and the head reruns
on the others (the gated VLMs and finished checkpoints are reused). --budget_s: no new head starts after it; a
SIGTERM (the script's hard time limit) still copies the rows finished so far into OUT.
"""

import argparse
import json
import pathlib
import signal
import sys
import time

from apt_jax import experiment_files
from apt_jax.testbed import experiment
from apt_jax.testbed import fig4
from apt_jax.testbed import probes

CONFIG = experiment_files.REPO_ROOT / "experiments" / "testbed_gpu.py"


def collect(work: pathlib.Path, heads, out: pathlib.Path, log_lines) -> list[dict]:
  """Pools the heads' rows and logs into OUT (written whole, then renamed: a reader never sees half a file)."""
  rows, logs = [], list(log_lines)
  for h in heads:
    rows += experiment.read_rows(work / h / "results.jsonl")
    if (work / h / "log.txt").exists():
      logs += [f"==== {h} ====", (work / h / "log.txt").read_text()]
  for name, text in (("results.jsonl", "".join(json.dumps(r) + "\n" for r in rows)), ("log.txt", "\n".join(logs))):
    (out / f".{name}").write_text(text)
    (out / f".{name}").replace(out / name)
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("out")
  p.add_argument("--tiny", action="store_true", help="the CPU test's size")
  p.add_argument("--work", default="/tmp/gpu_fig4", help="checkpoints and per-head workdirs")
  p.add_argument("--heads", default=",".join(fig4.FIG4))
  p.add_argument("--budget_s", type=float, default=480.0)
  args = p.parse_args(argv)
  out, work = pathlib.Path(args.out), pathlib.Path(args.work)
  out.mkdir(parents=True, exist_ok=True)
  heads = args.heads.split(",")
  if heads[0] != "pi0":
    raise SystemExit(f"--heads {args.heads!r}: pi0 comes first (its run trains the VLMs the others reuse)")
  cfgs = {h: experiment_files.load(CONFIG, h + (":tiny" if args.tiny else "")) for h in heads}
  t0, log = time.time(), []

  def note(msg):
    log.append(f"[{time.time() - t0:6.0f}s] {msg}")
    print(log[-1], flush=True)

  seeds = list(cfgs["pi0"].seeds)
  note(f"heads {heads}, seeds {seeds}, budget {args.budget_s:.0f}s; work {work}")
  def on_term(*_):
    note("SIGTERM (the time limit): copying the rows finished so far into OUT")
    sys.exit(143)

  # With seeds vmapped a head's run is long: on the time limit's SIGTERM, unwind through `finally`, which copies the
  # rows finished so far (experiment.run writes them per recipe and seed) into OUT.
  previous = signal.signal(signal.SIGTERM, on_term)
  try:
    for h in heads:
      if time.time() - t0 > args.budget_s:
        note(f"budget spent: {h} and later heads not started")
        break
      c = cfgs[h].copy_and_resolve_references()
      if h != "pi0":
        c.vlm.reuse_from = str(work / "pi0")
      t = time.time()
      while seeds:
        c.seeds = tuple(seeds)
        try:
          experiment.run(c, work / h, command=f"apt_jax.testbed.gpu_fig4 head {h} seeds {seeds}")
          break
        except probes.VlmGateError as e:
          seeds.remove(e.seed)
          note(f"{h}: seed {e.seed}'s VLM fails the gate, dropped from this and later heads: {str(e)[:300]}")
      if not seeds:
        note("no seed's VLM passes the gate: stopping")
        break
      note(f"{h}: done in {time.time() - t:.0f}s, seeds {seeds}")
      fig4.write(collect(work, heads, out, log), out)
  finally:
    signal.signal(signal.SIGTERM, previous)
    rows = collect(work, heads, out, log)
    if rows:
      fig4.write(rows, out)
  note(f"finished: {len(rows)} episode rows in {out / 'results.jsonl'}")


if __name__ == "__main__":
  main()
