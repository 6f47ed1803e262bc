"""Each data arm and evaluation split is built as docs/testbed_v2_protocol.md §2-3 says."""

import re

import numpy as np
import pytest

from apt_jax.testbed import corpus
from apt_jax.testbed import language as L
from apt_jax.testbed import tabletop as T

SEEN_WORDS = set(T.COLOURS[:4]) | set(T.SHAPES) | set(T.CONTAINERS[:3])


def _words(texts):
  return {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}


def _layout_key(state, i):
  """What a shortcut layout fixes: which kind sits on which cell, which container on which cell."""
  return (tuple(zip(state.obj_kind[i], T.cells_of(state.obj_pos[i]))),
          tuple(zip(state.cont_kind[i], T.cells_of(state.cont_pos[i]))))


@pytest.fixture(scope="module", params=L.ARMS)
def arm_data(request):
  return request.param, L.training_episodes(request.param, 400, seed=3)


def test_task_data_uses_one_template_training_pairs_seen_kinds_and_the_fixed_cells(arm_data):
  _, tr = arm_data
  assert set(tr.pairs) <= set(L.TRAIN_PAIRS) and len(set(tr.pairs)) == len(L.TRAIN_PAIRS)
  assert tr.instructions == [f"put the {' '.join(T.OBJECTS[k])} in the {T.CONTAINERS[c]}" for k, c in tr.pairs]
  assert not _words(tr.instructions) & L.PARAPHRASE_WORDS
  assert np.isin(tr.state.obj_kind, L.SEEN_KINDS).all() and np.isin(tr.state.cont_kind, L.SEEN_CONTAINERS).all()
  assert (tr.state.env == 0).all()
  assert (np.sort(T.cells_of(tr.state.obj_pos), 1) == sorted(T.FIXED_OBJECT_CELLS)).all()
  assert (np.sort(T.cells_of(tr.state.cont_pos), 1) == sorted(T.FIXED_CONTAINER_CELLS)).all()


def test_shortcut_arm_scene_predicts_the_task():
  tr = L.training_episodes("shortcut", 400, seed=3)
  task_of = {}
  for i, pair in enumerate(tr.pairs):
    key = _layout_key(tr.state, i)
    assert task_of.setdefault(key, pair) == pair          # a layout always comes with the same task
  assert len(task_of) == L.LAYOUTS_PER_TASK * len(L.TRAIN_PAIRS)
  assert len(set(T.cells_of(tr.state.gripper))) > 5       # episodes differ by the gripper's start


def test_balanced_arm_scene_does_not_predict_the_task():
  tr = L.training_episodes("balanced", 400, seed=3)
  # The same kinds on the same cells come with different tasks (placement and task drawn independently).
  by_objects = {}
  for i, pair in enumerate(tr.pairs):
    by_objects.setdefault(_layout_key(tr.state, i)[0], set()).add(pair)
  assert len(by_objects) > 300                           # nearly every scene is new
  targets = T.cells_of(tr.state.obj_pos[np.arange(400), tr.state.target_obj])
  assert set(targets) == set(T.FIXED_OBJECT_CELLS)       # the target's cell varies


def test_expert_solves_both_arms_and_the_new_kinds():
  for arm in L.ARMS:
    tr = L.training_episodes(arm, 60, seed=0)
    for split in ("unseen_object", "unseen_container", "unseen_environment", "position_swap"):
      s = L.eval_episodes(arm, split, 30, 0, tr).state
      for _ in range(30):
        s = T.step(s, T.expert_action(s))
      assert T.success(s).mean() >= 0.95, (arm, split)


def _split(arm, split, n=60, seed=4):
  tr = L.training_episodes(arm, 300, seed=seed)
  return tr, L.eval_episodes(arm, split, n, seed, tr)


@pytest.mark.parametrize("arm", L.ARMS)
def test_seen_split(arm):
  tr, ev = _split(arm, "seen")
  assert set(ev.pairs) <= set(L.TRAIN_PAIRS) and _words(ev.instructions) <= _words(tr.instructions)
  if arm == "shortcut":   # a training layout with its own task
    task_of = {_layout_key(tr.state, i): p for i, p in enumerate(tr.pairs)}
    assert all(task_of[_layout_key(ev.state, i)] == p for i, p in enumerate(ev.pairs))


@pytest.mark.parametrize("arm", L.ARMS)
def test_paraphrase_split_has_only_unseen_words_on_neutral_scenes(arm):
  tr, ev = _split(arm, "paraphrase")
  assert set(ev.pairs) <= set(L.TRAIN_PAIRS)
  for text in ev.instructions:
    ws = _words([text])
    assert not ws & SEEN_WORDS and ws & L.PARAPHRASE_WORDS and not text.startswith("put")
  if arm == "shortcut":   # neutral: most scenes are not training layouts
    layouts = {_layout_key(tr.state, i) for i in range(len(tr))}
    assert sum(_layout_key(ev.state, i) in layouts for i in range(len(ev))) < len(ev) / 4


@pytest.mark.parametrize("arm", L.ARMS)
def test_compositional_split_uses_heldout_pairs_and_training_words(arm):
  tr, ev = _split(arm, "compositional")
  assert set(ev.pairs) <= L.HELDOUT_PAIRS and _words(ev.instructions) <= _words(tr.instructions)
  for k, c in L.HELDOUT_PAIRS:   # each held-out pair's parts are seen separately
    assert any(p[0] == k for p in L.TRAIN_PAIRS) and any(p[1] == c for p in L.TRAIN_PAIRS)


@pytest.mark.parametrize("arm", L.ARMS)
def test_task_perturb_is_a_training_scene_with_another_object(arm):
  tr, ev = _split(arm, "task_perturb", n=40)
  for i in range(len(ev)):
    same = ((tr.state.obj_pos == ev.state.obj_pos[i]).all((1, 2)) & (tr.state.gripper == ev.state.gripper[i]).all(1)
            & (tr.state.obj_kind == ev.state.obj_kind[i]).all(1) & (tr.state.cont_kind == ev.state.cont_kind[i]).all(1)
            & (tr.state.cont_pos == ev.state.cont_pos[i]).all((1, 2)))
    assert same.any()                                                              # the exact training scene ...
    j = int(np.flatnonzero(same)[0])
    assert ev.pairs[i][0] != tr.pairs[j][0] and ev.pairs[i] in L.TRAIN_PAIRS     # ... another object, seen pair


@pytest.mark.parametrize("arm", L.ARMS)
def test_position_swap_relocates_the_target_object_and_container(arm):
  tr, ev = _split(arm, "position_swap", n=40)
  assert _words(ev.instructions) <= _words(tr.instructions)
  for i in range(len(ev)):
    b = ev.state.target_obj[i], ev.state.target_cont[i]
    # Some training episode has this scene's kinds, gripper and task, with the target object and container on
    # other cells (the same cells, permuted).
    assert any((tr.state.gripper[j] == ev.state.gripper[i]).all()
               and (tr.state.obj_kind[j] == ev.state.obj_kind[i]).all()
               and (tr.state.cont_kind[j] == ev.state.cont_kind[i]).all() and tr.pairs[j] == ev.pairs[i]
               and not np.allclose(ev.state.obj_pos[i, b[0]], tr.state.obj_pos[j, b[0]])
               and not np.allclose(ev.state.cont_pos[i, b[1]], tr.state.cont_pos[j, b[1]])
               and set(T.cells_of(ev.state.obj_pos[i])) == set(T.cells_of(tr.state.obj_pos[j]))
               for j in range(len(tr)))


@pytest.mark.parametrize("arm", L.ARMS)
def test_unseen_object_container_and_environment(arm):
  _, ev = _split(arm, "unseen_object")
  assert all(k in L.HELDOUT_KINDS and c in L.SEEN_CONTAINERS for k, c in ev.pairs)
  assert all("purple" in s for s in ev.instructions)
  assert (np.isin(ev.state.obj_kind, L.HELDOUT_KINDS).sum(1) == 1).all()      # only the target is new
  _, ev = _split(arm, "unseen_container")
  assert all(k in L.SEEN_KINDS and c == L.HELDOUT_CONTAINER for k, c in ev.pairs)
  assert ((ev.state.cont_kind == L.HELDOUT_CONTAINER).sum(1) == 1).all()
  assert all(s.endswith("in the basket") for s in ev.instructions)
  _, ev = _split(arm, "unseen_environment")
  assert (ev.state.env == L.UNSEEN_ENV).all() and set(ev.pairs) <= set(L.TRAIN_PAIRS)
  img, img0 = T.render(ev.state.index([0])), T.render(_env0(ev.state))
  assert (img != img0).mean() > 0.5                                            # the table and light changed


def _env0(state):
  s = state.index([0])
  s.env[:] = 0
  return s


def test_unseen_kinds_are_in_the_vlm_corpus_and_the_corpus_has_every_vla_prompt_format():
  _, qa, tasks = corpus.generate(150, 6, seed=0)
  words = _words([q for _, q, _ in qa] + [a for _, _, a in qa])
  assert {"purple", "basket", "violet", "crimson", "cube", "dish", "place", "into"} <= words
  questions = [q for _, q, _ in qa]
  assert "" in questions                                                       # Stage 1's empty prompt
  bare = [q for (_, q, _), t in zip(qa, tasks) if corpus.TASK_NAMES[t] == "bare"]
  assert any(q.startswith("put the ") for q in bare) and any(q.startswith(("place", "drop", "move")) for q in bare)
  assert not any(q.endswith("?") for q in bare)                                # bare, as the VLA prompt
  assert corpus.location((0.1, 0.1)) == "top far-left" and corpus.location((0.79, 0.21)) == "upper right"


def test_bare_instruction_answer_names_both_cells():
  s = L.training_episodes("balanced", 1, seed=0).state
  b = s.target_obj[0], s.target_cont[0]
  assert corpus.bare_answer(s, 0) == (f"{corpus.location(s.obj_pos[0, b[0]])} to "
                                      f"{corpus.location(s.cont_pos[0, b[1]])}")


def test_vlm_curriculum_phases_and_blend():
  from apt_jax.testbed import vlm_pretrain
  a, b, c = (np.eye(corpus.NUM_TASKS)[i] for i in range(3))
  cur = ((0.2, a), (0.55, b), (1.0, c))
  for step, want in ((0, a), (19, a), (20, b), (54, b), (55, c), (99, c)):
    np.testing.assert_array_equal(vlm_pretrain.curriculum_weights(cur, step, 100), want)
  # blend 0.1 of 100 steps: 15 -> 25 mixes a into b linearly (half-way at the boundary 20).
  np.testing.assert_allclose(vlm_pretrain.curriculum_weights(cur, 20, 100, 0.1), 0.5 * a + 0.5 * b)
  np.testing.assert_allclose(vlm_pretrain.curriculum_weights(cur, 16, 100, 0.1), 0.9 * a + 0.1 * b)
  np.testing.assert_array_equal(vlm_pretrain.curriculum_weights(cur, 14, 100, 0.1), a)
  with pytest.raises(ValueError, match="curriculum weights"):
    vlm_pretrain.curriculum_weights(((1.0, (1, 0)),), 0, 10)


def test_unknown_arm_and_split_are_named():
  with pytest.raises(ValueError, match="arm='libero'"):
    L.training_episodes("libero", 3, 0)
  with pytest.raises(ValueError, match="'unseen'"):
    L.eval_episodes("shortcut", "unseen", 3, 0, L.training_episodes("shortcut", 3, 0))
