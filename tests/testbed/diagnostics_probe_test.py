"""benchmarks/testbed_diagnostics.py's probes change exactly what they claim, keep the task solvable, and undo
themselves."""

import importlib.util
import pathlib

import numpy as np
import pytest

from apt_jax.testbed import language as L
from apt_jax.testbed import tabletop as T
from apt_jax.testbed import vla

_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "testbed_diagnostics.py"
_spec = importlib.util.spec_from_file_location("testbed_diagnostics", _PATH)
D = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(D)


def test_goal_in_state_appends_object_then_container():
  with D.probe("goal_in_state"):
    s = T.reset([11])
    obs = T.observe_state(s)
    assert obs.shape == (1, 5)
    np.testing.assert_allclose(obs[0, 3:], s.obj_pos[0, s.target_obj[0]], atol=1e-6)
    s.held[:] = s.target_obj
    np.testing.assert_allclose(T.observe_state(s)[0, 3:], s.cont_pos[0, s.target_cont[0]], atol=1e-6)
    assert vla.model_kwargs({"vlm_width": 8, "expert_width": 8, "depth": 1, "siglip_width": 8, "siglip_depth": 1,
                             "patch_size": 16, "action_horizon": 2, "max_token_len": 4})["action_dim"] == 5
  assert T.observe_state(T.reset([11])).shape == (1, 3)
  assert vla.model_kwargs({"vlm_width": 8, "expert_width": 8, "depth": 1, "siglip_width": 8, "siglip_depth": 1,
                           "patch_size": 16, "action_horizon": 2, "max_token_len": 4})["action_dim"] == 3


@pytest.mark.parametrize("layout", T.LAYOUTS)
def test_one_object_probe_stays_solvable(layout):
  with D.probe("one_object"):
    seeds, pairs, _ = L.training_tasks(60, seed=0)
    s = L.scenes(seeds, pairs, layout=layout)
    assert s.obj_pos.shape[1] == 1
    for _ in range(30):
      s = T.step(s, T.expert_action(s))
    assert T.success(s).mean() >= 0.95


def test_probe_undoes_itself_on_error():
  before = (T.NUM_OBJECTS, T.sample_positions, T.observe_state)
  with pytest.raises(RuntimeError), D.probe("one_object"):
    assert T.NUM_OBJECTS == 1
    raise RuntimeError("boom")
  assert (T.NUM_OBJECTS, T.sample_positions, T.observe_state) == before
  with pytest.raises(ValueError, match="--probe='nope'"), D.probe("nope"):
    pass
