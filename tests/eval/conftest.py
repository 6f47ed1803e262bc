"""Fixtures for the LIBERO evaluation tests: the simulator venv (`make libero`) and subprocess helpers.

The evaluation client runs in `.venv-libero` (LIBERO pins numpy 1.26 and mujoco 2.3.7), so tests that need the
simulator run it there as a subprocess, as users do. Without that venv they fail under CI=true and skip (with the
reason) elsewhere.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import pytest

from tests.conftest import unavailable

REPO = pathlib.Path(__file__).resolve().parents[2]
LIBERO_PYTHON = REPO / ".venv-libero" / "bin" / "python"


@pytest.fixture(scope="session")
def libero_python() -> str:
  if not LIBERO_PYTHON.exists():
    unavailable(f"{LIBERO_PYTHON} missing: run `make libero`")
  return str(LIBERO_PYTHON)


def run_python(python: str, args: list[str], *, timeout: float = 600) -> str:
  """Runs `python args...` in the repo root; returns stdout, or fails the test with the output's tail."""
  env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "osmesa"))
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([python, *args], check=False, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)
  if proc.returncode != 0:
    pytest.fail(f"{' '.join(args)} exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc.stdout


def run_json(python: str, args: list[str], *, timeout: float = 600):
  """Like run_python; the last stdout line is JSON."""
  return json.loads(run_python(python, args, timeout=timeout).strip().splitlines()[-1])
