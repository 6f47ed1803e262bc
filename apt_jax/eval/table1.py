r"""The APT paper's Table 1 (LIBERO-PRO position and task perturbation) for our checkpoints, beside its numbers.

  python -m apt_jax.eval.table1 --checkpoint apt=/ckpt/apt/99999 [--checkpoint pi0=DIR ...] [--expert] \
      --out out/table1 [--trials 50] [--tasks 0,1] [--suites libero_spatial_swap,...] [--workers 2] \
      [--serve_args "--config experiments/pi0_apt_libero.py:stage2"]

For each checkpoint: starts `python -m apt_jax.serve --checkpoint DIR` (JAX venv) on a free port, waits for
/healthz, runs the evaluation client (`apt_jax.eval.libero`, .venv-libero) into `<out>/<name>/` and stops the
server; `--expert` adds the scripted positive control (`apt_jax.eval.libero_expert`, privileged state). Runs resume
(episodes already in `<out>/<name>/episodes.jsonl` are skipped). Writes `<out>/table1.{md,json,png}` (the paper's
rows and ours: position = `_swap`, task = `_task` over the four suites, average = their mean) and
`<out>/summary.{md,json,png}` (every suite, every task). Default suites: the 8 of Table 1
({spatial, object, goal, 10} x {swap, task}); add base, `_lan` and `_object` suites to fill the other columns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import pathlib
import shlex
import socket
import subprocess
import sys
import time
import urllib.request

from apt_jax.eval import libero as _libero
from apt_jax.eval import summary as _summary

_log = logging.getLogger(__name__)

REPO = pathlib.Path(__file__).resolve().parents[2]
# APT paper, Table 1: LIBERO-PRO success averaged over position and task perturbation (%).
PAPER_TABLE1 = {"OpenVLA": 0.0, "π0": 0.0, "π0.5": 11.0, "LangForce": 14.0, "APT": 19.0,
                "APT + VLM fine-tuning": 27.0}
TABLE1_SUITES = tuple(f"{b}_{p}" for b in _libero.PRO_BASES for p in ("swap", "task"))
EXPERT = "scripted expert"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def server(cmd: list[str], port: int, log_path: pathlib.Path, timeout: float = 600.0):
  """Runs a policy server subprocess until the block ends; waits for GET /healthz; a crash names its log."""
  log_path.parent.mkdir(parents=True, exist_ok=True)
  with open(log_path, "ab") as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
  try:
    deadline = time.monotonic() + timeout
    while True:
      if proc.poll() is not None:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"server exited with code {proc.returncode}: {shlex.join(cmd)}\n{log_path}:\n{tail}")
      try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
          if r.status == 200:
            break
      except OSError:
        pass
      if time.monotonic() > deadline:
        raise TimeoutError(f"server not healthy after {timeout:.0f} s: {shlex.join(cmd)} (log: {log_path})")
      time.sleep(1.0)
    yield proc
  finally:
    proc.terminate()
    try:
      proc.wait(30)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def evaluate(name: str, server_cmd: list[str], client_args: list[str], *, out: pathlib.Path, libero_python: str,
             privileged: bool = False) -> pathlib.Path:
  """One checkpoint: server up, client run into out/<name>/, server down. Returns the episodes file."""
  port = free_port()
  run_dir = out / name.replace(" ", "_").replace("/", "_")
  with server([*server_cmd, "--port", str(port)], port, run_dir / "server.log"):
    cmd = [libero_python, "-m", "apt_jax.eval.libero", "--port", str(port), "--checkpoint", name,
           "--out", str(run_dir), *client_args, *(["--privileged"] if privileged else [])]
    _log.info("%s: %s", name, shlex.join(cmd))
    subprocess.run(cmd, check=True, cwd=REPO)
  return run_dir / "episodes.jsonl"


def comparison(summary: dict) -> dict:
  """Rows of Table 1: the paper's (average only) and ours (position, task, average with counts and intervals)."""
  rows = {name: {"average": {"rate": pct / 100}, "source": "paper"} for name, pct in PAPER_TABLE1.items()}
  for ckpt, s in summary.items():
    rows[ckpt] = {**{k: s["table1"][k] for k in ("position", "task", "average") if k in s["table1"]},
                  "source": "ours"}
  return rows


def markdown(rows: dict) -> str:
  lines = ["| method | position (`_swap`) | task (`_task`) | average | source |", "|---|---|---|---|---|"]
  for name, row in rows.items():
    fmt = lambda key, row=row: (_summary.cell(row[key]) if "k" in row.get(key, {})
                                else f"{100 * row[key]['rate']:.0f}%" if key in row else "")
    lines.append(f"| {name} | {fmt('position')} | {fmt('task')} | {fmt('average')} | {row['source']} |")
  return ("LIBERO-PRO, APT paper Table 1 protocol: success rate, Wilson 95% CI (successes/episodes); the paper's "
          "rows give only its published average.\n\n" + "\n".join(lines) + "\n")


def plot(rows: dict, path) -> None:
  import matplotlib as mpl
  mpl.use("Agg")
  import matplotlib.pyplot as plt

  names = [n for n, r in rows.items() if "average" in r]
  rates = [rows[n]["average"]["rate"] for n in names]
  err = [[r - rows[n]["average"].get("ci95", [r, r])[0] for n, r in zip(names, rates)],
         [rows[n]["average"].get("ci95", [r, r])[1] - r for n, r in zip(names, rates)]]
  colors = ["0.6" if rows[n]["source"] == "paper" else "C0" for n in names]
  fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 3.8))
  ax.bar(range(len(names)), rates, yerr=err, capsize=3, color=colors)
  ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
  ax.set_ylabel("success, mean of position and task")
  ax.set_ylim(0, 1)
  ax.set_title("LIBERO-PRO Table 1 (grey: paper, blue: ours with Wilson 95% CI)", fontsize=9)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m apt_jax.eval.table1", description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=DIR", help="repeatable")
  p.add_argument("--expert", action="store_true", help="also evaluate the scripted expert (positive control)")
  p.add_argument("--out", required=True)
  p.add_argument("--suites", default=",".join(TABLE1_SUITES))
  p.add_argument("--tasks", default=None, help="comma-separated task ids (default all)")
  p.add_argument("--trials", type=int, default=50)
  p.add_argument("--workers", type=int, default=1)
  p.add_argument("--max_steps", type=int, default=None, help="override the suites' step limits (smoke runs)")
  p.add_argument("--video_every", type=int, default=0)
  p.add_argument("--serve_args", default="", help="extra arguments for python -m apt_jax.serve")
  p.add_argument("--jax_python", default=str(REPO / ".venv" / "bin" / "python"))
  p.add_argument("--libero_python", default=str(REPO / ".venv-libero" / "bin" / "python"))
  return p


def main(argv=None) -> dict:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  parser = build_parser()
  args = parser.parse_args(argv)
  runs = []
  for spec in args.checkpoint:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
      parser.error(f"--checkpoint {spec!r}: expected NAME=DIR")
    if not pathlib.Path(path).is_dir():
      parser.error(f"--checkpoint {spec!r}: {path} is not a directory")
    runs.append((name, [args.jax_python, "-m", "apt_jax.serve", "--checkpoint", path,
                        *shlex.split(args.serve_args)], False))
  if args.expert:  # served by apt_jax.serve: the jax venv
    runs.append((EXPERT, [args.jax_python, "-m", "apt_jax.eval.libero_expert"], True))
  if not runs:
    parser.error("give at least one --checkpoint NAME=DIR or --expert")
  for python in {r[1][0] for r in runs} | {args.libero_python}:
    if not pathlib.Path(python).exists():
      parser.error(f"{python} not found (make venv / make libero)")
  suites = [s.strip() for s in args.suites.split(",") if s.strip()]
  tasks = None if args.tasks is None else {int(t) for t in args.tasks.split(",")}
  client = ["--suites", ",".join(suites), "--trials", str(args.trials), "--workers", str(args.workers),
            "--video_every", str(args.video_every), *([] if sys.stderr.isatty() else ["--no_progress"])]
  client += ["--tasks", args.tasks] if args.tasks else []
  client += ["--max_steps", str(args.max_steps)] if args.max_steps else []
  out = pathlib.Path(args.out)
  records = []
  for name, cmd, privileged in runs:
    path = evaluate(name, cmd, client, out=out, libero_python=args.libero_python, privileged=privileged)
    records += [r for r in _libero.read_records(path)  # this run's episodes, not others in the same file
                if r["checkpoint"] == name and r["suite"] in suites and r["init_index"] < args.trials
                and (tasks is None or r["task_id"] in tasks)]
  summary_md = _summary.write(out, records)
  rows = comparison(_summary.summarize(records))
  md = markdown(rows)
  (out / "table1.md").write_text(md + "\n" + summary_md)
  (out / "table1.json").write_text(json.dumps(rows, indent=1))
  plot(rows, out / "table1.png")
  print(md)
  return rows


if __name__ == "__main__":
  main()
