"""Fault injection: `python -m apt_jax.train` SIGKILLed at random points (one of them while an async save is in
flight) and restarted each time ends bit for bit where an uninterrupted run ends: params, optimizer state, data
position, and a metrics.jsonl that logs every step once, in order. Real data (the shipped RLDS sample), async saves.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 30


def train_cmd(workdir, *overrides) -> list[str]:
  return [sys.executable, "-m", "apt_jax.train", "--config", str(REPO / "experiments" / "debug.py:stage1"),
          f"--workdir={workdir}", "--config.progress_bar=False", f"--config.num_train_steps={STEPS}",
          "--config.ckpt_every_steps=2", "--config.log_every_steps=1", *overrides]


def train_env(devices: int = 1) -> dict:
  # The test session's persistent compilation cache (conftest) is inherited: restarts skip most compilation.
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")


def restore_numpy(item_dir: pathlib.Path) -> dict:
  """An Orbax PyTree item as {key path: numpy array} (no target needed)."""
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(item_dir)
  tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  restored = ckptr.restore(item_dir, args=ocp.args.PyTreeRestore(item=tree, restore_args=args))
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(restored)}


def assert_same_step(a: pathlib.Path, b: pathlib.Path) -> None:
  """Two checkpoint steps hold the same params, optimizer state and data position, bit for bit."""
  for item in ("params", "train_state"):
    x, y = restore_numpy(a / item), restore_numpy(b / item)
    assert x.keys() == y.keys(), item
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=f"{item}/{k}")
  files = sorted(p.name for p in (a / "data_state").glob("process_*.json"))
  assert files == sorted(p.name for p in (b / "data_state").glob("process_*.json")) and files
  for f in files:
    assert json.loads((a / "data_state" / f).read_text()) == json.loads((b / "data_state" / f).read_text()), f


def logged(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _last_logged_step(workdir: pathlib.Path) -> int:
  try:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else -1
  except (FileNotFoundError, json.JSONDecodeError, IndexError):
    return -1


def _saving(workdir: pathlib.Path) -> bool:
  """An async save is in flight: Orbax writes a step into `<step>.orbax-checkpoint-tmp*` and renames it on commit."""
  ckpt = workdir / "checkpoints"
  return ckpt.is_dir() and any(".orbax-checkpoint-tmp" in p.name for p in ckpt.iterdir())


def run_and_kill(workdir: pathlib.Path, until, log: list, timeout_s: float = 300) -> bool:
  """Starts the trainer and SIGKILLs it as soon as `until()` holds; False if it finished first."""
  proc = subprocess.Popen(train_cmd(workdir), env=train_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.monotonic() + timeout_s
  while proc.poll() is None:
    if until():
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      log.append(f"killed after step {_last_logged_step(workdir)}, save in flight: {_saving(workdir)}")
      return True
    assert time.monotonic() < deadline, "the trainer hung"
    time.sleep(0.002)
  err = proc.stderr.read().decode(errors="replace")
  assert proc.returncode == 0, err[-3000:]
  log.append("finished before the kill")
  return False


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
  seed = int(os.environ.get("APT_JAX_FAULT_SEED", time.time_ns() % 2**31))
  rnd = random.Random(seed)
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  reference = subprocess.Popen(train_cmd(straight), env=train_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
  log = [f"seed {seed}"]
  # While an async save is in flight (a step directory still temporary): the save may commit between the check and
  # the kill, so up to 3 tries. Then at two random steps, after a random delay.
  for _ in range(3):
    run_and_kill(killed, lambda: _saving(killed) and _last_logged_step(killed) >= 3, log)
    if log[-1].endswith("save in flight: True"):
      break
  for lo, hi in ((8, 16), (17, 25)):
    target, delay = rnd.randint(lo, hi), rnd.uniform(0, 0.05)
    t_reached = []

    def until(target=target, delay=delay, t_reached=t_reached):
      if not t_reached and _last_logged_step(killed) >= target:
        t_reached.append(time.monotonic())
      return bool(t_reached) and time.monotonic() - t_reached[0] >= delay

    run_and_kill(killed, until, log)
  subprocess.run(train_cmd(killed), env=train_env(), check=True, capture_output=True)
  assert reference.wait(timeout=300) == 0, reference.stderr.read().decode(errors="replace")[-3000:]

  print("\n".join(log))
  assert any(entry.endswith("save in flight: True") for entry in log), log  # a kill interrupted an async save
  assert sum(entry.startswith("killed") for entry in log) >= 3, log
  assert_same_step(straight / "checkpoints" / str(STEPS), killed / "checkpoints" / str(STEPS))
  rows, ref_rows = logged(killed), logged(straight)
  assert [r["step"] for r in rows] == list(range(STEPS)), log  # each step once, in order
  assert [(r["loss"], r["grad_norm"]) for r in rows] == [(r["loss"], r["grad_norm"]) for r in ref_rows], log
