"""Training metrics on disk: `<workdir>/metrics.jsonl` (one JSON row per logged step), TensorBoard scalars under
`<workdir>/tensorboard/`, and loss-curve plots."""

from __future__ import annotations

import json
import logging
import os
import pathlib


class MetricWriter:
  """metrics.jsonl + TensorBoard scalars in the workdir (process 0 only: `enabled`)."""

  def __init__(self, workdir: pathlib.Path, enabled: bool = True):
    self.enabled = enabled
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if enabled:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))
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
