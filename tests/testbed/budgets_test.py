"""The paper's budgets (docs/testbed_v2_protocol.md §4): Stage 2 steps = π0 joint steps; Stage 1 runs the same
number of steps on a separate language-free pool (>= 5x the task demos, random and fixed layouts, all pairs),
trained once per seed and shared by every recipe and arm; the three controls; co-training only where configured."""

import numpy as np
import pytest

from apt_jax.models import tokenizer as _tokenizer
from apt_jax.testbed import corpus
from apt_jax.testbed import experiment as E
from apt_jax.testbed import language as L
from apt_jax.testbed import tabletop as T
from apt_jax.testbed import vla


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("budgets")
  cfg = E.base_config()
  cfg.data.update(episodes=20, episode_len=8)
  cfg.vla.steps = 7
  vlm_corpus = corpus.generate(40, 4, seed=0)
  sentences = corpus.all_sentences(vlm_corpus[1]) + [L.instruction(p) for p in L.ALL_PAIRS]
  tok_path = _tokenizer.train_sentencepiece(sentences, str(tmp / "tok"), vocab_size=256)
  tok = _tokenizer.PaligemmaTokenizer(tok_path, max_len=cfg.size.max_token_len)
  calls = []

  def fake_train(cfg_, jobs, *, steps, cotrain=False, log):
    for j in jobs:
      calls.append(dict(name=j.name, stage=j.kw["apt_stage"], ki=j.kw["knowledge_insulation"], steps=steps,
                        data=j.data, cotrain=cotrain, init=j.init_params, npz=j.npz, batch=next(j.data)))
    return [(None, {"trained": j.name}) for j in jobs]

  vlm = dict(npz="vlm.npz", tokenizer=tok, tokenizer_path=tok_path, vocab=256, corpus=vlm_corpus)
  seed_run = E.SeedRun(cfg, 1, tmp, vlm, log=lambda *a: None)
  out = {}
  with pytest.MonkeyPatch.context() as mp:   # undone even if a recipe raises (later tests save real policies)
    mp.setattr(E, "_train", fake_train)
    mp.setattr(E, "save_policy", lambda *a: None)
    for arm in L.ARMS:
      train = L.training_episodes(arm, cfg.data.episodes, 1)
      frames = E.episode_frames(cfg, train, tok, seed=1, render=True)
      for name in E.recipes_of("pi0"):
        n0 = len(calls)
        E.train_recipe([seed_run], arm, name, [frames])
        out[arm, name] = calls[n0:]
  return cfg, tok, seed_run, out


def test_stage1_pool_is_trained_once_per_seed_and_shared(run):
  cfg, _tok, _seed_run, out = run
  s1 = [c for calls in out.values() for c in calls if c["stage"] == "stage1" and "pool" in c["name"]]
  assert len(s1) == 1 and s1[0]["steps"] == cfg.vla.steps and s1[0]["npz"] == "vlm.npz"
  pool_users = [k for k in E.recipes_of("pi0") if E.RECIPES[k].stage1 == "pool"]
  for arm in L.ARMS:
    for name in pool_users:
      main = out[arm, name][-1]
      assert main["init"] == {"trained": s1[0]["name"]} and main["steps"] == cfg.vla.steps
      assert main["stage"] == ("stage2" if E.RECIPES[name].fusion else "none")


def test_pool_is_language_free_5x_the_demos_both_layouts_all_pairs(run):
  cfg, tok, seed_run, _ = run
  pool = seed_run._pool
  n_ep = len(pool["tokens"])
  assert n_ep == cfg.data.pool_factor * cfg.data.episodes >= 5 * cfg.data.episodes
  empty = tok.tokenize("")
  assert (pool["tokens"] == empty[0]).all() and (pool["mask"] == empty[1]).all()
  assert pool["images"] is None                                       # rendered on the fly
  eps = E.pool_episodes(200, 1)
  cells = T.cells_of(eps.state.obj_pos)
  fixed = np.isin(cells, T.FIXED_OBJECT_CELLS).all(1)
  assert 0.3 < fixed.mean() < 0.7                                      # random and fixed layouts
  assert len(set(eps.pairs)) > 0.8 * len(L.ALL_PAIRS) and set(eps.pairs) <= set(L.ALL_PAIRS)
  assert {k for k, _ in eps.pairs} & set(L.HELDOUT_KINDS) and L.HELDOUT_CONTAINER in {c for _, c in eps.pairs}


def test_one_stage_recipes_and_controls(run):
  cfg, _, _, out = run
  n = cfg.vla.steps
  for arm in L.ARMS:
    (joint,) = out[arm, "pi0_joint"]
    assert joint["stage"] == "none" and joint["steps"] == n and joint["init"] is None and joint["npz"] == "vlm.npz"
    (eq,) = out[arm, "ctrl_pi0_equal_compute"]
    assert eq["steps"] == 2 * n and isinstance(eq["data"], vla.Concat)
    assert [p[1] for p in eq["data"].parts] == [n, n]
    s1_task, main = out[arm, "ctrl_taskonly_s1"]
    assert s1_task["stage"] == "stage1" and s1_task["steps"] == n and f"task_{arm}" in s1_task["name"]
    assert main["init"] == {"trained": s1_task["name"]} and main["stage"] == "stage2"


def test_cotraining_batches_only_for_ki_recipes(run):
  _, _, _, out = run
  for (_arm, name), calls in out.items():
    main = calls[-1]
    assert ("vl" in main["batch"]) == main["cotrain"] == E.RECIPES[name].cotrain, name
    assert main["ki"] == E.RECIPES[name].ki
    if E.RECIPES[name].cotrain:
      vl = main["batch"]["vl"]
      assert vl["image"].shape[1:] == (T.IMAGE_SIZE, T.IMAGE_SIZE, 3) and vl["loss_mask"].any()


def test_concat_takes_each_part_for_its_count_and_the_last_on_past_it():
  c = vla.Concat(((iter("aaa"), 2), (iter("bbb"), 1), (iter("cccc"), 1)))
  assert "".join(next(c) for _ in range(6)) == "aabccc"
