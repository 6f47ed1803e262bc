"""Tests that spawn processes: a SIGKILLed run resumes bit-exactly; two processes train together (jax.distributed).

Both are slow (several JAX start-ups and compilations) and run with `make test-all`.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from apt_jax import checkpoints
from apt_jax import tree as tree_lib

REPO = pathlib.Path(__file__).resolve().parents[2]


def _train_cmd(workdir, *overrides):
  return [sys.executable, "-m", "apt_jax.train", "--config", str(REPO / "experiments" / "debug.py:stage1"),
          f"--workdir={workdir}", "--config.progress_bar=False", "--config.async_checkpoint=False",
          "--config.ckpt_every_steps=2", "--config.max_to_keep=10", *overrides]


def _env(devices=1):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  subprocess.run(_train_cmd(straight, "--config.num_train_steps=4"), check=True, env=_env(), capture_output=True)
  proc = subprocess.Popen(_train_cmd(killed, "--config.num_train_steps=10000"), env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (killed / "checkpoints" / "2" / "commit_success.txt").exists():
    assert time.time() < deadline and proc.poll() is None, "training never wrote its step-2 checkpoint"
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # Steps the killed run may have committed after 2 are dropped, as if it had died right after step 2.
  for p in (killed / "checkpoints").iterdir():
    if p.name.isdigit() and int(p.name) > 2:
      import shutil
      shutil.rmtree(p)
  subprocess.run(_train_cmd(killed, "--config.num_train_steps=4"), check=True, env=_env(), capture_output=True)
  a = tree_lib.flatten(checkpoints.restore_params(straight / "checkpoints/4/params", restore_type=np.ndarray))
  b = tree_lib.flatten(checkpoints.restore_params(killed / "checkpoints/4/params", restore_type=np.ndarray))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_one_step_together(tmp_path):
  """jax.distributed on CPU: 2 processes × 2 devices, one global batch, FSDP over all 4 devices."""
  port = _free_port()
  procs = []
  for pid in range(2):
    cmd = _train_cmd(tmp_path / "wd", "--config.num_train_steps=1", "--config.data.kind=fake",
                     "--config.mesh.fsdp_devices=4", "--config.mesh.min_fsdp_mbytes=0",
                     "--config.distributed.num_processes=2", f"--config.distributed.process_id={pid}",
                     f"--config.distributed.coordinator_address=127.0.0.1:{port}")
    procs.append(subprocess.Popen(cmd, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  rows = [json.loads(line) for line in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
  assert len(rows) == 1 and np.isfinite(rows[0]["loss"])
  assert (tmp_path / "wd" / "checkpoints" / "1" / "params").is_dir()
