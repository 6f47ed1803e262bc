"""The closed-loop eval loop scores success correctly; Wilson intervals; the report files."""

import json

import numpy as np

from apt_jax.testbed import report
from apt_jax.testbed import tabletop as T
from apt_jax.testbed import vla


def _held_over_target(n):
  """Target object held, gripper closed, right above the target container."""
  s = T.reset(list(range(n)))
  b = np.arange(n)
  s.gripper = s.cont_pos[b, s.target_cont].copy()
  s.obj_pos[b, s.target_obj] = s.gripper
  s.held = s.target_obj.copy()
  s.closed[:] = True
  return s


def _policy(actions):
  def policy(rng, batch):
    b = len(batch["state"])
    assert batch["image"]["base_0_rgb"].shape == (b, vla.IMAGE_SIZE, vla.IMAGE_SIZE, 3)
    return np.broadcast_to(np.asarray(actions, np.float32), (b, 4, 3))
  return policy


def test_rollout_scores_release_over_target_as_success():
  s = _held_over_target(5)
  tok, mask = np.zeros((5, 16), np.int32), np.ones((5, 16), bool)
  assert vla.rollout(_policy([0, 0, -1]), s, tok, mask, steps=8, replan=4, chunk=4).all()   # open: success
  assert not vla.rollout(_policy([0, 0, 1]), s, tok, mask, steps=8, replan=4, chunk=4).any()  # keep holding


def test_rollout_scores_wrong_container_as_failure():
  s = _held_over_target(3)
  s.target_cont = (s.target_cont + 1) % 3
  tok, mask = np.zeros((3, 16), np.int32), np.ones((3, 16), bool)
  assert not vla.rollout(_policy([0, 0, -1]), s, tok, mask, steps=4, replan=4).any()


def test_wilson_and_report(tmp_path):
  lo, hi = report.wilson(5, 10)
  np.testing.assert_allclose([lo, hi], [0.2366, 0.7634], atol=1e-3)
  assert report.wilson(0, 10)[0] == 0.0 and report.wilson(10, 10)[1] == 1.0
  results = {"a": {"seen": [1, 0, 1], "paraphrase": [0, 0, 0]}, "b": {"seen": [1, 1, 1], "paraphrase": [1, 0, 0]}}
  summary = dict(config={"seeds": [0]}, vlm_eval_accuracy={"all": 0.5}, labels={"a": "A", "b": "B"})
  md = report.write(tmp_path, results, summary)
  assert "0.67" in md and (tmp_path / "results.png").stat().st_size > 1000
  tab = json.loads((tmp_path / "results.json").read_text())["table"]
  assert tab["b"]["seen"]["k"] == 3 and tab["a"]["paraphrase"]["rate"] == 0.0


def test_rollout_reports_target_grasp():
  s = T.reset([11, 12])
  b = np.arange(2)
  s.gripper = s.obj_pos[b, s.target_obj].copy()   # gripper on the target object, open
  tok, mask = np.zeros((2, 16), np.int32), np.ones((2, 16), bool)
  ok, grasp = vla.rollout(_policy([0, 0, 1]), s, tok, mask, steps=4, replan=4, return_grasp=True)
  assert grasp.all() and not ok.any()
  ok, grasp = vla.rollout(_policy([0, 0, -1]), s, tok, mask, steps=4, replan=4, return_grasp=True)
  assert not grasp.any()


def test_rollout_reports_a_distractor_grasp_as_held_not_target():
  s = T.reset([11, 12])
  b = np.arange(2)
  other = (s.target_obj + 1) % s.obj_pos.shape[1]
  s.gripper = s.obj_pos[b, other].copy()          # gripper on a distractor, open
  tok, mask = np.zeros((2, 16), np.int32), np.ones((2, 16), bool)
  ok, grasp, held = vla.rollout(_policy([0, 0, 1]), s, tok, mask, steps=4, replan=4, return_grasp=True,
                                return_any_held=True)
  assert held.all() and not grasp.any() and not ok.any()
