"""The open-loop diagnostic: an oracle policy (the expert itself, rolled out here step by step) scores 0 error and
full gripper agreement, a fixed offset scores exactly that offset, and the CLI path runs on saved policies."""

import json

import jax
import numpy as np
import pytest

from apt_jax.models import registry
from apt_jax.models import tokenizer as _tokenizer
from apt_jax.testbed import corpus
from apt_jax.testbed import experiment as E
from apt_jax.testbed import language as L
from apt_jax.testbed import openloop as ol
from apt_jax.testbed import tabletop as T
from apt_jax.testbed import vla

SIZE = dict(vlm_width=16, expert_width=16, depth=1, num_heads=2, num_kv_heads=2, head_dim=8, siglip_width=16,
            siglip_depth=1, patch_size=16, action_horizon=4, max_token_len=12)


def _oracle(state, *, offset=0.0, flip_grip=False):
  """A policy that answers call i with the expert's action at replan point ol.AT_STEPS[i] (its own rollout)."""
  s, chunks = state.copy(), {}
  for t in range(max(ol.AT_STEPS) + 1):
    if t in ol.AT_STEPS:
      a = T.expert_action(s)
      a[:, :2] += offset
      a[:, 2] *= -1 if flip_grip else 1
      chunks[t] = np.repeat(a[:, None], 4, axis=1)
    s = T.step(s, T.expert_action(s))
  calls = iter(ol.AT_STEPS)

  def policy(rng, batch):
    t = next(calls)
    np.testing.assert_allclose(batch["state"], T.observe_state(_at(state, t)))   # asked at the expert's state
    return chunks[t]
  return policy


def _at(state, t):
  s = state.copy()
  for _ in range(t):
    s = T.step(s, T.expert_action(s))
  return s


def test_oracle_scores_zero_and_an_offset_scores_itself():
  train = L.training_episodes("shortcut", 10, 1)
  eps = L.eval_episodes("shortcut", "seen", 6, 1, train)
  tokens, mask = np.zeros((6, 12), np.int32), np.ones((6, 12), bool)
  err = ol.action_error(_oracle(eps.state), eps.state, tokens, mask)
  assert err["move"].shape == (len(ol.AT_STEPS), 6)
  np.testing.assert_allclose(err["move"], 0.0, atol=1e-6)
  assert err["grip"].all() and err["zero"].mean() > 0.1
  err = ol.action_error(_oracle(eps.state, offset=0.25, flip_grip=True), eps.state, tokens, mask)
  np.testing.assert_allclose(err["move"], 0.25, atol=1e-5)
  assert not err["grip"].any()


def test_runs_on_saved_policies(tmp_path):
  cfg = E.base_config()
  cfg.data.episodes = 10
  cfg.eval.update(episodes_per_split=3)
  (tmp_path / "config.json").write_text(cfg.to_json_best_effort())
  vlm_corpus = corpus.generate(40, 4, seed=0)
  tok = _tokenizer.train_sentencepiece(corpus.all_sentences(vlm_corpus[1]), str(tmp_path / "tok"), vocab_size=256)
  mc = registry.create_config("pi0", **vla.model_kwargs(SIZE, vocab_size=256))
  E.save_policy(tmp_path / "shortcut" / "pi0_joint" / "s1" / "checkpoints" / "7", mc,
                mc.create(jax.random.key(0)).params, tok)
  result = ol.openloop([tmp_path], log=lambda m: None)
  (row,) = result["rows"]
  assert (row["head"], row["recipe"], row["seed"]) == ("pi0", "pi0_joint", 1)
  # The scale column: the expert's mean |move| over the split's episodes and replan points, recomputed here.
  train = L.training_episodes("shortcut", 10, 1)
  eps = L.eval_episodes("shortcut", "seen", 3, 1, train)
  zero = np.mean([np.abs(T.expert_action(_at(eps.state, t))[:, :2]).mean() for t in ol.AT_STEPS])
  assert row["zero"] == pytest.approx(zero, rel=1e-6)
  assert np.isfinite(row["move"]) and 0 <= row["grip"] <= 1
  assert "pi0[flow]/shortcut/pi0_joint" in ol.markdown(result)
  with pytest.raises(FileNotFoundError, match="not a testbed workdir"):
    ol.openloop([tmp_path / "nope"])
  ol.main(["--workdir", str(tmp_path), "--recipes", "pi0_joint", "--out", str(tmp_path / "o.json")])
  assert json.loads((tmp_path / "o.json").read_text())["rows"][0]["move"] == pytest.approx(row["move"])
  with pytest.raises(SystemExit, match=r"error: .*nope/config\.json not found"):
    ol.main(["--workdir", str(tmp_path / "nope")])
