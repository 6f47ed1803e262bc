"""The scripted positive control: its geometry helpers, its request checks, and (slow) its success through the real
client and server, with the recorded demonstrations training the debug config."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from apt_jax import envs
from apt_jax import serve
from apt_jax.eval import libero as L
from apt_jax.eval import libero_expert as X
from tests.eval.conftest import REPO
from tests.eval.conftest import run_python


def test_rotation_helpers_match_scipy():
  for q in Rotation.random(100, random_state=1).as_quat():
    r = Rotation.from_quat(q)
    np.testing.assert_allclose(X._rotvec_from_matrix(r.as_matrix()), r.as_rotvec(), atol=1e-7)
    np.testing.assert_allclose(X._rotation_of_state(np.r_[0, 0, 0, L.quat2axisangle(q), 0, 0]), r.as_matrix(),
                               atol=1e-9)
  half_turn = Rotation.from_rotvec([np.pi, 0, 0]).as_matrix()
  np.testing.assert_allclose(np.abs(X._rotvec_from_matrix(half_turn)), [np.pi, 0, 0], atol=1e-7)


def _request(goal, **priv):
  state = np.r_[0.0, 0.0, 0.3, np.pi, 0, 0, 0.039, -0.039].astype(np.float32)
  bodies = {"can_1": np.r_[0.1, 0.0, 0.04, 0, 0, 0, 1.0], "basket_1": np.r_[-0.1, 0.2, 0.0, 0, 0, 0, 1.0]}
  return {"observation/state": state, "privileged": {"goal": goal, "bodies": bodies, "sites": {"basket_1_region":
          np.r_[-0.1, 0.2, 0.05]}, "episode": "e", "step": 0, **priv}}


def test_expert_moves_towards_the_object_first():
  out = X.ExpertPolicy(horizon=6).infer(_request([["in", "can_1", "basket_1_region"]]))
  a = out["actions"]
  assert a.shape == (6, 7) and np.all(a[:, 6] == -1.0)  # gripper open while approaching
  assert a[0, 0] > 0.3 and abs(a[0, 1]) < 0.05  # towards the can (+x)
  assert np.all(np.abs(a[:, :6]) <= 1.0)


def test_expert_errors_name_the_field():
  policy = X.ExpertPolicy()
  with pytest.raises(envs.InputError, match="'privileged'"):
    policy.infer({"observation/state": np.zeros(8, np.float32)})
  with pytest.raises(envs.InputError, match="privileged/goal"):
    policy.infer(_request([["open", "drawer_1"]]))
  request = _request([["in", "can_1", "basket_1_region"]])
  del request["privileged"]["step"]
  with pytest.raises(envs.InputError, match="privileged/step"):
    policy.infer(request)


@pytest.fixture(scope="module")
def expert_run(libero_python, tmp_path_factory):
  out = tmp_path_factory.mktemp("expert")
  with serve.PolicyServer(X.ExpertPolicy(), host="127.0.0.1", port=0) as server:
    run_python(libero_python, ["-m", "apt_jax.eval.libero", "--port", str(server.port), "--suites", "libero_object",
                               "--tasks", "0,1,2,3,4", "--trials", "1", "--privileged", "--out", str(out / "eval"),
                               "--checkpoint", "expert", "--record", str(out / "demos"), "--rlds_python",
                               sys.executable, "--no_progress"], timeout=1800)
  return out


@pytest.mark.slow
def test_expert_solves_libero_object(expert_run):
  records = L.read_records(expert_run / "eval" / "episodes.jsonl")
  assert len(records) == 5
  assert sum(r["success"] for r in records) >= 4, [(r["task_id"], r["success"], r["steps"]) for r in records]


@pytest.mark.slow
def test_recorded_demos_train_the_debug_config(expert_run, tmp_path):
  from apt_jax import train
  from apt_jax.data import compute_norm_stats

  demos = expert_run / "demos"
  successes = sum(r["success"] for r in L.read_records(expert_run / "eval" / "episodes.jsonl"))
  info = json.loads((demos / "libero_object_no_noops" / "1.0.0" / "dataset_info.json").read_text())
  assert sum(int(n) for s in info["splits"] for n in s["shardLengths"]) == successes
  compute_norm_stats.main(["--data_dir", str(demos), "--dataset", "libero_object_no_noops", "--delta_action_dims",
                           "6", "--action_horizon", "10", "--out", str(tmp_path / "stats")])
  config = compute_norm_stats.load_experiment_config(str(REPO / "experiments" / "debug.py") + ":joint")
  with config.unlocked():
    config.data.datasets = [dict(name="libero_object_no_noops", data_dir=str(demos), adapter="libero", weight=1.0,
                                 split="train")]
    config.data.norm_stats_path = str(tmp_path / "stats" / "norm_stats.json")
    config.num_train_steps, config.ckpt_every_steps, config.log_every_steps = 3, 3, 1
    config.progress_bar = False
  train.main(config, tmp_path / "train")
  metrics = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
  assert metrics and all(np.isfinite(m["loss"]) for m in metrics if "loss" in m)
  assert (tmp_path / "train" / "checkpoints" / "3" / "params").is_dir()
