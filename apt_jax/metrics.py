"""Training metrics on disk: `<workdir>/metrics.jsonl` (one JSON row per logged step), TensorBoard scalars under
`<workdir>/tensorboard/`, and loss-curve plots."""

from __future__ import annotations

import json
import logging
import os
import pathlib


class MetricWriter:
  """metrics.jsonl + TensorBoard scalars in the workdir (process 0 only: `enabled`).

  A run that starts (or resumes) at `start_step` first drops what an earlier run logged from that step on, so the
  logs read each step once, in order: metrics.jsonl is rewritten without those rows (and without a line a crash cut
  short), and TensorBoard is told to purge them (`purge_step`).
  """

  def __init__(self, workdir: pathlib.Path, enabled: bool = True, start_step: int = 0):
    self.enabled = enabled
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if enabled:
      truncate_metrics(self.path, start_step)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"), purge_step=start_step)
      except ImportError:
        logging.warning("tensorboardX not installed: no TensorBoard scalars")

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **metrics}) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(k, v, step)

  def close(self):
    if self._tb is not None:
      self._tb.close()


def truncate_metrics(path: pathlib.Path, start_step: int) -> None:
  """Keeps the rows of `path` (metrics.jsonl) logged before `start_step`; atomic (temporary file + rename)."""
  if not path.exists():
    return
  keep = []
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:  # the last line of a run killed while writing it
      continue
    if row["step"] < start_step:
      keep.append(line)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(line + "\n" for line in keep))
  os.replace(tmp, path)


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def plot_losses(workdirs: dict[str, str | os.PathLike], out_png) -> None:
  """Loss curves of one or several runs (e.g. Stage 1 and Stage 2) into one PNG."""
  import matplotlib as mpl
  mpl.use("Agg")  # no display needed
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for name, wd in workdirs.items():
    rows = [r for r in read_metrics(wd) if "loss" in r]
    if rows:
      ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_yscale("log")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)
