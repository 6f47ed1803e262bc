"""Run in .venv-libero by libero_sim_test.py: facts from the real simulator and benchmark, printed as one JSON line.

  .venv-libero/bin/python tests/eval/libero_probe.py
"""

import json

import numpy as np
from robosuite.utils import transform_utils

from apt_jax.eval import libero as L


def suites():
  out = {}
  for name in L.SUITES:
    s = L.load_suite(name)
    out[name] = {"n_tasks": s.n_tasks, "n_init": [len(s.get_task_init_states(i)) for i in range(s.n_tasks)]}
  return out


def prompts():
  """For every PRO suite with an instruction perturbation: per task, the file-name text, the BDDL text, the base
  suite's file-name text and the prompt the client sends."""
  out = {}
  for base in L.PRO_BASES:
    base_suite = L.load_suite(base)
    for p in ("lan", "task", "swap"):
      s = L.load_suite(f"{base}_{p}")
      out[f"{base}_{p}"] = [{"filename": str(s.get_task(i).language), "bddl": L.bddl_language(s.get_task(i)),
                             "base_filename": str(base_suite.get_task(i).language),
                             "prompt": L.instruction(s.get_task(i), f"{base}_{p}")} for i in range(s.n_tasks)]
  return out


def env_facts():
  """libero_spatial_task, task 0, init 0: the request after the settle steps; the gripper under +1 / -1."""
  s = L.load_suite("libero_spatial_task")
  env, task = L.make_env(s, 0)
  env.seed(L.SEED)
  env.reset()
  obs = env.set_init_state(s.get_task_init_states(0)[0])
  for _ in range(L.NUM_STEPS_WAIT):
    obs, _, _, _ = env.step(L.DUMMY_ACTION)
  req = L.make_request(obs, "x")
  facts = {
      "env_language": env.language_instruction, "bddl_language": L.bddl_language(task),
      "raw_shape": list(obs["agentview_image"].shape),
      "image_shape": list(req["observation/image"].shape), "image_dtype": str(req["observation/image"].dtype),
      "wrist_shape": list(req["observation/wrist_image"].shape),
      "state": req["observation/state"].tolist(),
      "eef_pos": obs["robot0_eef_pos"].tolist(),
      "robosuite_axisangle": transform_utils.quat2axisangle(obs["robot0_eef_quat"].copy()).tolist(),
      # Where the scene is in the upright image: the table (bright) fills the bottom rows, the back wall the top.
      "upright_bottom_minus_top_brightness": float(req["observation/image"][-40:].mean()
                                                   - req["observation/image"][:40].mean()),
  }
  width = lambda o: float(o["robot0_gripper_qpos"][0] - o["robot0_gripper_qpos"][1])
  facts["width_open"] = width(obs)
  for _ in range(12):
    obs, _, _, _ = env.step([0.0] * 6 + [1.0])
  facts["width_after_plus_one"] = width(obs)
  for _ in range(12):
    obs, _, _, _ = env.step([0.0] * 6 + [-1.0])
  facts["width_after_minus_one"] = width(obs)
  env.close()
  return facts


if __name__ == "__main__":
  print(json.dumps({"suites": suites(), "prompts": prompts(), "env": env_facts()}, default=np.asarray))
