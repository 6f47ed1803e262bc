"""Each split excludes what it claims: no paraphrase word and no held-out pair in the VLA training data."""

import re

import numpy as np
import pytest

from apt_jax.testbed import corpus
from apt_jax.testbed import language as L
from apt_jax.testbed import tabletop as T


def _words(texts):
  return {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}


def test_training_data_has_no_paraphrase_word_and_no_heldout_pair():
  seeds, pairs, instr = L.training_tasks(2000, seed=0)
  assert not _words(instr) & L.PARAPHRASE_WORDS
  assert not set(pairs) & L.HELDOUT_PAIRS
  assert set(pairs) == set(L.TRAIN_PAIRS)      # every training pair is demonstrated
  assert len(set(instr)) == len(L.TRAIN_PAIRS)  # one template per task
  # The demonstrated scenes hold the named object; other objects are distractors.
  state = L.scenes(seeds[:50], pairs[:50])
  np.testing.assert_array_equal(T.target_pair(state), np.array(pairs[:50]))


def test_paraphrase_split_uses_only_unseen_words_for_seen_tasks():
  train_words = _words(L.training_tasks(2000, seed=0)[2])
  _, pairs, instr = L.eval_tasks("paraphrase", 200, seed=0)
  assert set(pairs) <= set(L.TRAIN_PAIRS)
  for text in instr:
    ws = _words([text])
    assert ws & L.PARAPHRASE_WORDS
    # Colour, shape and container words are all synonyms never seen in the VLA data.
    assert not ws & (set(T.COLOURS) | set(T.SHAPES) | set(T.CONTAINERS))
    assert ws - train_words  # something unseen in every instruction


def test_compositional_split_uses_only_heldout_pairs_and_seen_words():
  train_words = _words(L.training_tasks(2000, seed=0)[2])
  _, pairs, instr = L.eval_tasks("compositional", 200, seed=0)
  assert set(pairs) <= L.HELDOUT_PAIRS
  assert _words(instr) <= train_words
  # Each held-out pair's object and container are seen separately in training.
  for k, c in L.HELDOUT_PAIRS:
    assert any(p[0] == k for p in L.TRAIN_PAIRS) and any(p[1] == c for p in L.TRAIN_PAIRS)


def test_task_perturbation_reuses_training_scenes_with_another_target():
  tseeds, tpairs, _ = L.training_tasks(100, seed=0)
  seeds, pairs, _, scene_pairs = L.eval_tasks("task_perturb", 40, seed=0, train_seeds=tseeds, train_pairs=tpairs)
  assert len(seeds) == 40
  state = L.scenes(seeds, pairs, scene_pairs)
  for i, s in enumerate(seeds):
    j = tseeds.index(s)
    orig = L.scenes([s], [tpairs[j]])
    np.testing.assert_array_equal(state.obj_pos[i], orig.obj_pos[0])   # the same scene ...
    np.testing.assert_array_equal(state.obj_kind[i], orig.obj_kind[0])
    assert tuple(pairs[i]) != tuple(tpairs[j]) and pairs[i][0] != tpairs[j][0]   # ... another object
    assert tuple(pairs[i]) in L.TRAIN_PAIRS
    assert tuple(T.target_pair(state)[i]) == tuple(pairs[i])


def test_eval_scenes_are_disjoint_from_training_scenes():
  tseeds = set(L.training_tasks(2000, seed=0)[0])
  for split in ("seen", "paraphrase", "compositional"):
    assert not set(L.eval_tasks(split, 100, seed=2)[0]) & tseeds


def test_vlm_corpus_has_the_language_the_vla_data_lacks():
  _, qa, tasks = corpus.generate(100, 6, seed=0)
  words = _words([q for _, q, _ in qa] + [a for _, _, a in qa])
  assert words & L.PARAPHRASE_WORDS >= {"crimson", "cube", "dish", "place", "into"}
  assert set(tasks) == set(range(corpus.NUM_TASKS))
  # Board cells are 0.2 wide: x 0.1 -> column 0, y 0.1 -> row 0; (0.5, 0.5) is the centre cell; (0.79, 0.21) is
  # row 1 (y), column 3 (x).
  assert corpus.location((0.1, 0.1)) == "top far-left" and corpus.location((0.5, 0.5)) == "middle center"
  assert corpus.location((0.79, 0.21)) == "upper right"


def test_vlm_curriculum_phases():
  from apt_jax.testbed import vlm_pretrain
  a, b, c = (np.eye(corpus.NUM_TASKS)[i] for i in range(3))
  cur = ((0.2, a), (0.55, b), (1.0, c))
  for step, want in ((0, a), (19, a), (20, b), (54, b), (55, c), (99, c)):
    np.testing.assert_array_equal(vlm_pretrain.curriculum_weights(cur, step, 100), want)
  with pytest.raises(ValueError, match="curriculum weights"):
    vlm_pretrain.curriculum_weights(((1.0, (1, 0)),), 0, 10)
