"""The LIBERO client's protocol pieces without the simulator: observation mapping (openpi's conventions, checked
against scipy and openpi-client), the episode loop on a scripted fake env, suites and step limits, resume, and the
Table 1 aggregation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from openpi_client import image_tools
from scipy.spatial.transform import Rotation

from apt_jax.eval import libero as L
from apt_jax.eval import summary
from apt_jax.eval import table1


def _random_quats(rng, n):
  q = rng.normal(size=(n, 4))
  return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_quat2axisangle_matches_scipy_for_nonnegative_w():
  rng = np.random.default_rng(0)
  for q in _random_quats(rng, 200):
    q = q if q[3] >= 0 else -q
    np.testing.assert_allclose(L.quat2axisangle(q), Rotation.from_quat(q).as_rotvec(), atol=1e-9)  # scipy: xyzw


def test_quat2axisangle_keeps_robosuite_angle_for_negative_w():
  """robosuite (and so openpi's client and openvla's data) does not flip q to w >= 0: angle = 2 acos(w) > pi."""
  rng = np.random.default_rng(1)
  for q in _random_quats(rng, 200):
    q = q if q[3] < 0 else -q
    v = L.quat2axisangle(q)
    assert np.linalg.norm(v) == pytest.approx(2 * math.acos(q[3]))
    assert np.linalg.norm(v) > math.pi
    np.testing.assert_allclose(Rotation.from_rotvec(v).as_matrix(), Rotation.from_quat(q).as_matrix(), atol=1e-9)


def test_quat2axisangle_identity_and_half_turn():
  np.testing.assert_array_equal(L.quat2axisangle([0, 0, 0, 1]), np.zeros(3))
  # LIBERO's start pose: gripper down, 180 deg about x -> (pi, 0, 0).
  np.testing.assert_allclose(L.quat2axisangle([1, 0, 0, 0]), [math.pi, 0, 0], atol=1e-12)


def _obs(rng, size=256):
  """A raw LIBERO observation whose top-left quadrant is red in both cameras (rendered upside down)."""
  def img():
    x = np.zeros((size, size, 3), np.uint8)
    x[: size // 2, : size // 2, 0] = 255
    return x
  return {"agentview_image": img(), "robot0_eye_in_hand_image": img(),
          "robot0_eef_pos": rng.normal(size=3), "robot0_eef_quat": _random_quats(rng, 1)[0],
          "robot0_gripper_qpos": np.array([0.03, -0.03]), "robot0_joint_pos": rng.normal(size=7)}


def test_request_images_rotated_180_and_resized_like_openpi():
  obs = _obs(np.random.default_rng(0))
  req = L.make_request(obs, "pick up the bowl")
  for key, raw in (("observation/image", "agentview_image"), ("observation/wrist_image", "robot0_eye_in_hand_image")):
    img = req[key]
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8
    # The red quadrant moves from top-left to bottom-right (rotation by 180 deg, not a single-axis flip).
    assert img[200, 200, 0] == 255 and img[20, 20, 0] == 0 and img[20, 200, 0] == 0 and img[200, 20, 0] == 0
    expected = image_tools.convert_to_uint8(image_tools.resize_with_pad(obs[raw][::-1, ::-1], 224, 224))
    np.testing.assert_array_equal(img, expected)
  assert req["prompt"] == "pick up the bowl"


def test_request_state_layout():
  obs = _obs(np.random.default_rng(3))
  state = L.make_request(obs, "x")["observation/state"]
  assert state.shape == (8,) and state.dtype == np.float32
  np.testing.assert_allclose(state[:3], obs["robot0_eef_pos"], rtol=1e-6)
  np.testing.assert_allclose(state[3:6], L.quat2axisangle(obs["robot0_eef_quat"]), rtol=1e-6)
  np.testing.assert_allclose(state[6:], [0.03, -0.03], rtol=1e-6)


class _FakeEnv:
  """Records the actions it gets; `done` from step `success_at` on (counting every step, waits included)."""

  def __init__(self, success_at=None):
    self.actions, self.success_at, self.seeds = [], success_at, []
    self._rng = np.random.default_rng(0)

  def seed(self, s):
    self.seeds.append(s)

  def reset(self):
    self.actions.clear()

  def set_init_state(self, state):
    return _obs(self._rng)

  def step(self, action):
    self.actions.append(list(action))
    done = self.success_at is not None and len(self.actions) >= self.success_at
    return _obs(self._rng), float(done), done, {}


class _ChunkPolicy:
  """Returns chunks [H, 7] whose gripper alternates +1 / -1 and whose x counts the queries."""

  def __init__(self, horizon=8):
    self.horizon, self.requests = horizon, []

  def infer(self, request):
    self.requests.append(request)
    chunk = np.zeros((self.horizon, 7))
    chunk[:, 0] = len(self.requests)
    chunk[:, 6] = np.where(np.arange(self.horizon) % 2 == 0, 1.0, -1.0)
    return {"actions": chunk}


def test_episode_loop_waits_replans_and_passes_actions_unchanged():
  env, policy = _FakeEnv(), _ChunkPolicy()
  result = L.run_episode(env, policy, None, prompt="p", max_policy_steps=12, replan_steps=5, seed=3)
  assert env.seeds == [3]
  assert env.actions[:10] == [[0.0] * 6 + [-1.0]] * 10  # openpi's settle steps: no motion, gripper open
  acts = np.array(env.actions[10:])
  assert len(acts) == 12 and result["steps"] == 12 and result["queries"] == 3 and not result["success"]
  np.testing.assert_array_equal(acts[:, 0], [1] * 5 + [2] * 5 + [3] * 2)  # first 5 actions of each chunk
  np.testing.assert_array_equal(acts[:, 6], [1, -1, 1, -1, 1] * 2 + [1, -1])  # gripper sign untouched (+1 closes)


def test_episode_success_ends_the_episode_and_ignores_done_while_settling():
  result = L.run_episode(_FakeEnv(success_at=3), _ChunkPolicy(), None, prompt="p", max_policy_steps=50)
  assert result["success"] and result["steps"] == 1  # done during the settle steps does not count
  result = L.run_episode(_FakeEnv(success_at=17), _ChunkPolicy(), None, prompt="p", max_policy_steps=50)
  assert result["success"] and result["steps"] == 7


def test_episode_rejects_short_chunks():
  with pytest.raises(ValueError, match="replan_steps=5"):
    L.run_episode(_FakeEnv(), _ChunkPolicy(horizon=4), None, prompt="p", max_policy_steps=10)


def test_suites_and_max_steps():
  assert len(L.SUITES) == 5 + 16 and len(set(L.SUITES)) == len(L.SUITES)
  expected = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
  for suite in L.SUITES:
    base = L.base_suite(suite)
    assert L.max_steps(suite) == expected[base]
  assert L.base_suite("libero_10_task") == "libero_10" and L.perturbation("libero_10_task") == "task"
  assert L.perturbation("libero_goal") is None and L.max_steps("libero_object_swap") == 280
  for bad in ("libero_spatial_env", "libero_100", "spatial"):
    with pytest.raises(ValueError, match="unknown suite"):
      L.base_suite(bad)


def test_prompt_source():
  assert [s for s in L.SUITES if L.prompt_from_bddl(s)] == [
      f"{b}_{p}" for b in L.PRO_BASES for p in ("lan", "task")]
  assert all(L.prompt_from_bddl(s, "bddl") for s in L.SUITES)
  assert not any(L.prompt_from_bddl(s, "filename") for s in L.SUITES)


def _record(suite, task, k, success, checkpoint="c"):
  return {"checkpoint": checkpoint, "suite": suite, "task_id": task, "init_index": k, "seed": 7,
          "instruction": f"task {task}", "success": success, "steps": 10, "seconds": 1.0, "env_seconds": 0.5}


def test_resume_runs_only_missing_episodes(tmp_path, monkeypatch):
  ran = []

  class FakeWorker:
    def __init__(self, config):
      self.config = config

    def __call__(self, ep):
      ran.append((ep["suite"], ep["task_id"], ep["init_index"]))
      return _record(ep["suite"], ep["task_id"], ep["init_index"], True)

  monkeypatch.setattr(L, "Worker", FakeWorker)
  done = [_record("libero_goal", 0, 0, False), _record("libero_goal", 1, 1, True),
          _record("libero_goal", 0, 1, True, checkpoint="other")]
  text = "".join(json.dumps(r) + "\n" for r in done) + '{"checkpoint": "c", "suite": "libero_go'  # crashed mid-line
  (tmp_path / "episodes.jsonl").write_text(text)
  episodes = L.plan_episodes(["libero_goal"], trials=2, n_tasks={"libero_goal": 2})
  records = L.run(L.RunConfig(checkpoint="c", out=str(tmp_path)), episodes, progress=False)
  assert ran == [("libero_goal", 0, 1), ("libero_goal", 1, 0)]
  assert sorted((r["task_id"], r["init_index"], r["success"]) for r in records) == [
      (0, 0, False), (0, 1, True), (1, 0, True), (1, 1, True)]
  assert len(L.read_records(tmp_path / "episodes.jsonl")) == 5  # the other checkpoint's record is kept
  ran.clear()
  assert len(L.run(L.RunConfig(checkpoint="c", out=str(tmp_path)), episodes, progress=False)) == 4
  assert ran == []


def test_corrupt_record_in_the_middle_is_an_error(tmp_path):
  (tmp_path / "episodes.jsonl").write_text("{not json\n" + json.dumps(_record("libero_goal", 0, 0, True)) + "\n")
  with pytest.raises(ValueError, match=r"episodes\.jsonl:1"):
    L.read_records(tmp_path / "episodes.jsonl")


def test_table1_aggregation_and_wilson(tmp_path):
  recs = ([_record("libero_spatial_swap", 0, k, k < 3) for k in range(4)]  # 3/4
          + [_record("libero_object_swap", 0, k, k < 1) for k in range(4)]  # 1/4 -> position 4/8
          + [_record("libero_goal_task", 1, k, False) for k in range(6)]  # task 0/6
          + [_record("libero_goal", 1, k, True) for k in range(2)]
          + [_record("libero_10_lan", 2, k, k == 0) for k in range(2)]
          + [_record("libero_90", 3, k, True) for k in range(2)])  # not a Table 1 row
  tab = summary.table1(recs)
  assert set(tab) == {"clean", "semantic", "position", "task", "average"}
  assert (tab["position"]["k"], tab["position"]["n"]) == (4, 8) and tab["task"]["rate"] == 0.0
  assert tab["average"]["rate"] == pytest.approx((0.5 + 0.0) / 2)
  assert (tab["clean"]["k"], tab["clean"]["n"]) == (2, 2) and tab["semantic"]["rate"] == 0.5
  # Wilson 95% for 0/6: [0, z^2 / (n + z^2)].
  assert tab["task"]["ci95"][0] == 0.0 and tab["task"]["ci95"][1] == pytest.approx(1.96**2 / (6 + 1.96**2))
  md = summary.write(tmp_path, recs)
  assert (tmp_path / "summary.png").stat().st_size > 0
  assert "| c | 1.00 [0.34, 1.00] (2/2) | 0.50 [" in md and "| libero_goal_task/1 | task 1 | 0.00 [" in md
  assert json.loads((tmp_path / "summary.json").read_text())["c"]["suites"]["libero_spatial_swap"]["k"] == 3
  assert "average" not in summary.table1(recs[:8])  # no task rows: no average


def test_table1_comparison_lists_paper_numbers_beside_ours():
  recs = [_record("libero_spatial_swap", 0, k, k < 1, checkpoint="mine") for k in range(2)]
  recs += [_record("libero_spatial_task", 0, k, False, checkpoint="mine") for k in range(2)]
  rows = table1.comparison(summary.summarize(recs))
  assert rows["APT"]["average"]["rate"] == 0.19 and rows["APT + VLM fine-tuning"]["average"]["rate"] == 0.27
  assert rows["mine"]["average"]["rate"] == 0.25 and rows["mine"]["source"] == "ours"
  md = table1.markdown(rows)
  assert "| APT |  |  | 19% | paper |" in md and "| mine | 0.50 [0.09, 0.91] (1/2) | 0.00 [" in md


def test_worker_reconnects_once_when_the_connection_drops(monkeypatch):
  from websockets.exceptions import ConnectionClosedError
  from websockets.frames import Close

  clients = []

  class FakeClient:
    def __init__(self, host, port, api_key=None):
      clients.append(self)
      self.calls = 0

    def get_server_metadata(self):
      return {}

    def infer(self, request):
      self.calls += 1
      if len(clients) == 1:  # the first connection is dropped (keepalive timeout)
        raise ConnectionClosedError(Close(1011, "keepalive ping timeout"), None)
      if request.get("fail"):
        raise RuntimeError("Error in inference server")
      return {"actions": np.zeros((5, 7))}

  monkeypatch.setattr(L.websocket_client_policy, "WebsocketClientPolicy", FakeClient)
  worker = L.Worker(L.RunConfig())
  assert worker.infer({})["actions"].shape == (5, 7)
  assert len(clients) == 2 and clients[0].calls == 1 and clients[1].calls == 1
  with pytest.raises(RuntimeError, match="inference server"):  # server errors are not retried
    worker.infer({"fail": True})
  assert len(clients) == 2
