"""Simulator: the scripted expert succeeds, rendering and stepping are deterministic, success is scored right."""

import numpy as np
import pytest

from apt_jax.testbed import language as L
from apt_jax.testbed import tabletop as T


def test_expert_succeeds_on_95_percent():
  state = T.reset(range(200))
  for _ in range(30):
    state = T.step(state, T.expert_action(state))
  assert T.success(state).mean() >= 0.95


def test_noisy_expert_demonstrations_succeed():
  ok = T.rollout_expert(T.reset(range(100), layout="fixed"), 24, rng=np.random.default_rng(0), noise=0.3)[3]
  assert ok.mean() >= 0.95


def test_render_and_step_deterministic():
  def run():
    s = T.reset([7, 8, 9])
    frames = [T.render(s)]
    rng = np.random.default_rng(1)
    for _ in range(5):
      s = T.step(s, rng.uniform(-1, 1, (3, 3)))
      frames.append(T.render(s))
    return np.stack(frames), T.observe_state(s)
  (f1, s1), (f2, s2) = run(), run()
  np.testing.assert_array_equal(f1, f2)
  np.testing.assert_array_equal(s1, s2)
  assert f1.shape == (6, 3, T.IMAGE_SIZE, T.IMAGE_SIZE, 3) and f1.dtype == np.uint8
  assert not np.array_equal(T.render(T.reset([7])), T.render(T.reset([8])))


def test_step_does_not_mutate_input():
  s = T.reset([1])
  before = s.copy()
  T.step(s, np.ones((1, 3)))
  np.testing.assert_array_equal(s.gripper, before.gripper)


def _hand_state(obj_xy, gripper_xy, held, closed, target_obj=0, target_cont=1):
  return T.State(gripper=np.array([gripper_xy], float), closed=np.array([closed]), held=np.array([held]),
                 obj_pos=np.array([[obj_xy, (0.9, 0.9), (0.1, 0.9)]], float), obj_kind=np.array([[0, 3, 5]]),
                 cont_pos=np.array([[(0.2, 0.2), (0.5, 0.5), (0.8, 0.2)]], float),
                 target_obj=np.array([target_obj]), target_cont=np.array([target_cont]))


def test_success_on_hand_built_states():
  assert T.success(_hand_state((0.5, 0.5), (0.1, 0.1), -1, False))[0]               # resting in the target
  assert not T.success(_hand_state((0.5, 0.5), (0.5, 0.5), 0, True))[0]             # still held
  assert not T.success(_hand_state((0.2, 0.2), (0.1, 0.1), -1, False))[0]           # wrong container
  assert not T.success(_hand_state((0.5, 0.5 + T.CONTAINER_RADIUS + 0.01), (0.1, 0.1), -1, False))[0]  # outside
  assert not T.success(_hand_state((0.5, 0.5), (0.1, 0.1), -1, False, target_obj=1))[0]  # another object


def test_grasp_carry_release():
  s = _hand_state((0.3, 0.3), (0.3, 0.3), -1, False)
  s = T.step(s, [[0, 0, 1]])                    # close on the object
  assert s.held[0] == 0
  for _ in range(3):                            # carry it towards the target container at (0.5, 0.5)
    s = T.step(s, [[(0.5 - 0.3) / 3 / T.MAX_STEP, (0.5 - 0.3) / 3 / T.MAX_STEP, 1]])
  np.testing.assert_allclose(s.obj_pos[0, 0], (0.5, 0.5), atol=1e-9)
  assert not T.success(s)[0]
  s = T.step(s, [[0, 0, -1]])                   # open
  assert s.held[0] == -1 and T.success(s)[0]


def test_entities_sit_on_distinct_board_cells_one_per_image_patch():
  s = T.reset(range(50))
  pts = np.concatenate([s.obj_pos, s.cont_pos, s.gripper[:, None]], axis=1)       # [B, 7, 2]
  cells = pts * T.GRID - 0.5
  np.testing.assert_allclose(cells, np.round(cells), atol=1e-12)                  # cell centres
  idx = np.round(cells[..., 1]) * T.GRID + np.round(cells[..., 0])
  assert all(len(set(row)) == pts.shape[1] for row in idx)                          # distinct cells
  # A 16-px patch of the image is one cell: each colour's pixels lie exactly in the cells of the objects of that colour.
  img = T.render(s.index(np.arange(1)))[0]
  for colour, rgb in T.RGB.items():
    ys, xs = np.nonzero((img == rgb).all(-1))
    want = {tuple((s.obj_pos[0, n] * T.GRID).astype(int)) for n in range(T.NUM_OBJECTS)
            if T.OBJECTS[s.obj_kind[0, n]][0] == colour}
    assert set(zip(xs // 16, ys // 16)) == want


def test_clean_labels_record_noise_free_actions_on_the_same_states():
  scene = lambda: L.training_episodes("balanced", 20, seed=5).state
  runs = [T.rollout_expert(scene(), 12, rng=np.random.default_rng(4), noise=0.3, size=16, clean_labels=c)
          for c in (False, True)]
  (img0, st0, act0, *_), (img1, st1, act1, *_) = runs
  np.testing.assert_array_equal(img0, img1)      # the same noisy actions were executed
  np.testing.assert_array_equal(st0, st1)
  np.testing.assert_array_equal(act1[0], T.expert_action(scene()))
  assert np.abs(act0 - act1).max() > 0.05        # the executed (noisy) actions differ from the labels


def test_fixed_layout_fixes_cells_and_shuffles_kinds():
  s = T.reset(range(60), layout="fixed")
  obj, cont = T.cells_of(s.obj_pos), T.cells_of(s.cont_pos)
  assert (np.sort(obj, axis=1) == sorted(T.FIXED_OBJECT_CELLS)).all()          # hand-picked: cells 5, 7, 9
  assert (np.sort(cont, axis=1) == sorted(T.FIXED_CONTAINER_CELLS)).all()      # cells 15, 17, 19
  assert not np.isin(T.cells_of(s.gripper), T.FIXED_OBJECT_CELLS + T.FIXED_CONTAINER_CELLS).any()
  # Which container, and the target object, sit where varies: vision alone cannot tell the target.
  assert len({tuple(k[np.argsort(c)]) for k, c in zip(s.cont_kind, cont)}) == 6   # all 3! container orders occur
  assert len(set(obj[np.arange(60), s.target_obj])) == 3
  # The kinds (and so the language) do not depend on the layout.
  np.testing.assert_array_equal(s.obj_kind, T.reset(range(60)).obj_kind)
  ok = T.rollout_expert(s, 24, rng=np.random.default_rng(0), noise=0.3, size=16)[3]
  assert ok.mean() >= 0.95


def test_unknown_layout_is_named():
  with pytest.raises(ValueError, match="layout='grid'"):
    T.reset([1], layout="grid")


def test_retarget_and_render_by_container_kind():
  s = T.reset([3])
  k, c = int(s.obj_kind[0, 2]), int(s.cont_kind[0, 1])
  r = T.retarget(s, [(k, c)])
  assert (r.target_obj[0], r.target_cont[0]) == (2, 1) and tuple(T.target_pair(r)[0]) == (k, c)
  with pytest.raises(ValueError, match="no object kind"):
    T.retarget(s, [(k, T.CONTAINERS.index("basket"))])
  # A basket in slot 0 is drawn around slot 0's centre (most of it in that cell; like the bowl it spills over).
  s.cont_kind[0, 0] = T.CONTAINERS.index("basket")
  ys, xs = np.nonzero((T.render(s)[0] == T.CONTAINER_RGB["basket"]).all(-1))
  cells = list(zip(xs // 16, ys // 16))
  assert max(set(cells), key=cells.count) == tuple((s.cont_pos[0, 0] * T.GRID).astype(int))
  np.testing.assert_allclose([xs.mean(), ys.mean()], s.cont_pos[0, 0] * T.IMAGE_SIZE - 0.5, atol=1.0)
