"""CI smoke test: the evaluation client (.venv-libero) against a real `python -m apt_jax.serve` on a debug checkpoint
trained with `python -m apt_jax.train`; one 20-step episode of libero_spatial_task. About 1.5 min on 2 cores."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from apt_jax.eval import table1
from tests.eval.conftest import REPO
from tests.eval.conftest import run_python

SUITE, STEPS = "libero_spatial_task", 20


@pytest.fixture(scope="module")
def debug_checkpoint(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("debug_ckpt")
  subprocess.run([sys.executable, "-m", "apt_jax.train", "--config", "experiments/debug.py:joint", "--workdir",
                  str(workdir), "--config.num_train_steps=2", "--config.ckpt_every_steps=2",
                  "--config.log_every_steps=1", "--config.progress_bar=False"],
                 cwd=REPO, check=True, capture_output=True, timeout=600)
  return workdir / "checkpoints" / "2"


@pytest.fixture(scope="module")
def smoke_run(libero_python, debug_checkpoint, tmp_path_factory):
  out = tmp_path_factory.mktemp("libero_smoke")
  port = table1.free_port()
  cmd = [sys.executable, "-m", "apt_jax.serve", "--checkpoint", str(debug_checkpoint), "--port", str(port)]
  client = ["-m", "apt_jax.eval.libero", "--port", str(port), "--suites", SUITE, "--tasks", "0", "--trials", "1",
            "--max_steps", str(STEPS), "--out", str(out), "--checkpoint", "debug", "--save_requests", "--no_progress"]
  with table1.server(cmd, port, out / "server.log", timeout=300):
    run_python(libero_python, client, timeout=900)
    rerun = run_python(libero_python, client, timeout=900)  # everything recorded: nothing runs again
  return out, rerun


def test_episode_record(smoke_run):
  out, _ = smoke_run
  lines = (out / "episodes.jsonl").read_text().splitlines()
  assert len(lines) == 1
  rec = json.loads(lines[0])
  assert {k: rec[k] for k in ("checkpoint", "suite", "task_id", "init_index", "seed")} == {
      "checkpoint": "debug", "suite": SUITE, "task_id": 0, "init_index": 0, "seed": 7}
  assert rec["success"] is False and rec["steps"] == STEPS and rec["queries"] == math.ceil(STEPS / 5)
  assert rec["seconds"] >= rec["env_seconds"] > 0 and rec["infer_seconds"] > 0
  # The PRO instruction (BDDL), not the file-name text shared with libero_spatial.
  assert rec["instruction"] != rec["filename_instruction"]
  assert "not between" in rec["instruction"]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["debug"]["suites"][SUITE]["n"] == 1 and (out / "summary.md").exists()


def test_request_shapes_and_ranges(smoke_run):
  out, _ = smoke_run
  with np.load(out / "requests" / f"{SUITE}_t00_i00.npz") as f:
    req = {k: f[k] for k in f.files}
  for key in ("observation.image", "observation.wrist_image"):
    img = req[key]
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8
    assert img.std() > 10 and img.max() > 100  # a rendered scene, not a blank frame
  state = req["observation.state"]
  assert state.shape == (8,) and state.dtype == np.float32 and np.all(np.isfinite(state))
  assert 0.8 < state[2] < 1.5  # eef above the table (z ~ 0.9 m in the spatial scenes)
  assert 0 <= np.linalg.norm(state[3:6]) <= 2 * np.pi
  assert abs(state[6] + state[7]) < 1e-3 and 0 <= state[6] <= 0.041
  assert str(req["prompt"]) == json.loads((out / "episodes.jsonl").read_text())["instruction"]


def test_rerun_resumes(smoke_run):
  out, rerun = smoke_run
  assert len((out / "episodes.jsonl").read_text().splitlines()) == 1
  assert "| debug |" in rerun  # the summary is still printed
