"""Facts from the real LIBERO / LIBERO-PRO simulator (`libero_probe.py`, run in .venv-libero): suites, init states,
the PRO instructions the client sends, and the observation mapping on a live env."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apt_jax.eval import libero as L
from tests.eval.conftest import run_json


@pytest.fixture(scope="module")
def probe(libero_python):
  return run_json(libero_python, ["tests/eval/libero_probe.py"], timeout=900)


def test_every_suite_loads_with_50_init_states_per_task(probe):
  assert list(probe["suites"]) == list(L.SUITES)
  for name, facts in probe["suites"].items():
    assert facts["n_tasks"] == (90 if name == "libero_90" else 10), name
    assert set(facts["n_init"]) == {50}, name


@pytest.mark.parametrize("perturbation", ["lan", "task"])
def test_pro_prompt_is_the_perturbed_bddl_instruction(probe, perturbation):
  for base in L.PRO_BASES:
    for i, t in enumerate(probe["prompts"][f"{base}_{perturbation}"]):
      where = f"{base}_{perturbation} task {i}"
      assert t["filename"] == t["base_filename"], where  # the trap: task.language is the base suite's text
      assert t["bddl"].lower() != t["base_filename"].lower(), where
      assert t["prompt"] == t["bddl"], where


def test_unperturbed_instruction_suites_send_the_training_text(probe):
  for base in L.PRO_BASES:
    for i, t in enumerate(probe["prompts"][f"{base}_swap"]):
      assert t["prompt"] == t["filename"] == t["base_filename"], f"{base}_swap task {i}"


def test_live_observation_mapping(probe):
  env = probe["env"]
  assert env["env_language"] == env["bddl_language"]  # bddl_language() is what the env itself parses
  assert env["raw_shape"] == [256, 256, 3]
  assert env["image_shape"] == env["wrist_shape"] == [224, 224, 3] and env["image_dtype"] == "uint8"
  state = np.array(env["state"])
  np.testing.assert_allclose(state[:3], env["eef_pos"], rtol=1e-6)
  np.testing.assert_allclose(state[3:6], env["robosuite_axisangle"], rtol=1e-5, atol=1e-6)  # robosuite's own function
  assert abs(np.linalg.norm(state[3:6]) - math.pi) < 0.2  # start pose: gripper pointing down
  assert state[6] == pytest.approx(-state[7], abs=1e-4) and 0.03 < state[6] < 0.045  # open fingers, mirrored
  assert env["upright_bottom_minus_top_brightness"] > 20  # rotated upright: table at the bottom


def test_gripper_sign(probe):
  env = probe["env"]
  assert env["width_open"] > 0.07  # the settle steps' -1 keeps it open
  assert env["width_after_plus_one"] < 0.01  # +1 closes
  assert env["width_after_minus_one"] > 0.07  # -1 opens again
