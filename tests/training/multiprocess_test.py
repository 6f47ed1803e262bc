"""Two processes train together (jax.distributed on CPU) on the shipped RLDS sample, and a run stopped after a
checkpoint resumes with each process continuing its own data stream: the result equals the uninterrupted run."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import pytest

from tests.training.faults_test import assert_same_step
from tests.training.faults_test import logged
from tests.training.faults_test import train_cmd
from tests.training.faults_test import train_env

STEPS = 6


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_two_processes(workdir, *overrides, timeout_s: float = 600) -> None:
  """2 processes x 1 CPU device: params sharded over both (FSDP), each process reading its own half of every
  batch. Output goes to files (a full pipe would block a process inside a collective); both are killed on timeout."""
  port = _free_port()
  logs = [workdir.parent / f"{workdir.name}_process_{pid}.log" for pid in range(2)]
  procs = []
  try:
    for pid in range(2):
      with open(logs[pid], "w") as log:
        procs.append(subprocess.Popen(
            train_cmd(workdir, f"--config.num_train_steps={STEPS}", "--config.mesh.fsdp_devices=2",
                      "--config.mesh.min_fsdp_mbytes=0",
                      "--config.data.shuffle_buffer=64", "--config.data.episodes_per_block=1",
                      "--config.distributed.num_processes=2", f"--config.distributed.process_id={pid}",
                      f"--config.distributed.coordinator_address=127.0.0.1:{port}", *overrides),
            env=train_env(1), stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout_s
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for pid, p in enumerate(procs):
    assert p.returncode == 0, f"process {pid} exited with {p.returncode}:\n{logs[pid].read_text()[-4000:]}"


# Slow (2 x 2 JAX start-ups, ~2.5 min at load ~11), and on CPU not yet reliable: in 1 of 2 runs at load ~16
# both processes hung in the first train step after the restore (gloo collectives; see the issue 14 report).
@pytest.mark.slow
def test_two_processes_resume_each_its_own_data_stream(tmp_path):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  _train_two_processes(straight, "--config.max_to_keep=3")
  ckpt = straight / "checkpoints"
  states = [json.loads((ckpt / "4" / "data_state" / f"process_{i}.json").read_text()) for i in range(2)]
  assert [s["process_index"] for s in states] == [0, 1] and states[0]["state"] != states[1]["state"]
  # A run stopped right after committing step 4: the same files without the later step.
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "checkpoints" / str(STEPS))
  _train_two_processes(resumed, "--config.max_to_keep=3")
  assert_same_step(ckpt / str(STEPS), resumed / "checkpoints" / str(STEPS))
  assert [r["step"] for r in logged(resumed)] == list(range(STEPS))
  assert [r["loss"] for r in logged(resumed)] == [r["loss"] for r in logged(straight)]
