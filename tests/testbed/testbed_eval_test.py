"""The closed-loop eval loop scores success correctly; the report's tables, endpoint and files."""

import json

import numpy as np

from apt_jax.testbed import experiment
from apt_jax.testbed import language as L
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


def test_report_tables_endpoint_and_plots(tmp_path):
  cfg = experiment.base_config()
  cfg.seeds = (1, 2)
  cfg.recipes = ("pi0_joint", "ki_2stage", "apt_vlm_ft")
  rows = [dict(arm=arm, recipe=r, seed=s, split=split, episode=i, flow_steps=10, success=i < k, grasp=i < k + 1)
          for arm in L.ARMS for r, k in (("pi0_joint", 1), ("ki_2stage", 3), ("apt_vlm_ft", 2)) for s in (1, 2)
          for split in L.SPLITS for i in range(4)]
  rows[1]["success"] = True   # shortcut/pi0_joint/seed 1/seen, episode 1: 2 of 4
  summary = report.write(tmp_path, cfg, rows, labels={"pi0_joint": "P"}, timings={})
  seen = summary["tables"]["shortcut"]["success"]["pi0_joint"]["seen"]
  assert seen["per_seed"] == {1: 0.5, 2: 0.25} and (seen["k"], seen["n"]) == (3, 8)
  primary = summary["primary"]
  assert [(c["recipe"], c["split"]) for c in primary["contrasts"]] == [
      ("ki_2stage", "paraphrase"), ("ki_2stage", "unseen_object"), ("apt_vlm_ft", "paraphrase"),
      ("apt_vlm_ft", "unseen_object")]
  np.testing.assert_allclose(primary["contrasts"][0]["d"], [0.5, 0.5])   # (3 - 1) / 4 on both seeds
  assert primary["verdict"] == "supports"                                  # zero spread: [0.5, 0.5]
  md = (tmp_path / "results.md").read_text()
  assert "| P |" in md and "Primary endpoint" in md and "**supports**" in md
  for f in ("results_shortcut.png", "results_balanced.png", "contrasts.png"):
    assert (tmp_path / f).stat().st_size > 1000
  assert json.loads((tmp_path / "results.json").read_text())["primary"]["verdict"] == "supports"


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
