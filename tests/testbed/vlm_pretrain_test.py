"""VLM pretraining's pointing targets and its saved tree: the cell each answer names (round trip through the
corpus's cell words), and only the PaliGemma tree `{img, llm}` leaves pretraining."""

import numpy as np

from apt_jax.models import registry
from apt_jax.models import tokenizer as _tokenizer
from apt_jax.testbed import corpus
from apt_jax.testbed import experiment as E
from apt_jax.testbed import language as L
from apt_jax.testbed import tabletop as T
from apt_jax.testbed import vlm_pretrain


def test_point_targets_hand_derived():
  qa = [(0, "where is the bowl?", "upper left"), (0, "put it in", "bottom far-right to top center"),
        (0, "is there a red ball?", "yes"), (0, "", "a red ball, a blue block")]
  np.testing.assert_array_equal(vlm_pretrain.point_targets(qa), [1 * 5 + 1, 4 * 5 + 4, -1, -1])


def test_point_targets_are_the_named_cells_of_the_scene():
  state = corpus.scenes(30, seed=3)
  rng = np.random.default_rng(0)
  refer, bare = corpus.TASK_NAMES.index("refer"), corpus.TASK_NAMES.index("bare")
  for i in range(30):
    q, a = corpus.qa(rng, state, i, refer)
    cell = vlm_pretrain.point_targets([(i, q, a)])[0]
    assert cell in T.cells_of(state.obj_pos[i]), (q, a)
    q, a = corpus.qa(rng, state, i, bare)
    assert vlm_pretrain.point_targets([(i, q, a)])[0] in T.cells_of(state.obj_pos[i]), (q, a)


def test_pretraining_returns_the_paligemma_tree(tmp_path):
  cfg = E.base_config()
  cfg.size.update(vlm_width=16, expert_width=16, depth=1, num_heads=2, num_kv_heads=2, head_dim=8, siglip_width=16)
  data = corpus.generate(6, 4, seed=0)
  _tokenizer.train_sentencepiece(corpus.all_sentences(data[1]) + [L.instruction(p) for p in L.ALL_PAIRS],
                                 str(tmp_path / "tok"), vocab_size=cfg.tokenizer.vocab_size)
  tok = _tokenizer.PaligemmaTokenizer(str(tmp_path / "tok.model"), max_len=cfg.size.max_token_len)
  mc = registry.create_config("pi0", **E.model_kw(cfg, max(256, tok.vocab_size)))
  v = dict(cfg.vlm.to_dict(), steps=2, batch_size=4)
  res = vlm_pretrain.pretrain(mc, tok, data, data, v, seed=0, log=lambda m: None)
  assert set(res.params) == {"img", "llm"}
  assert np.isfinite(np.array(res.losses)).all() and np.array(res.losses).shape == (2, 4)   # step, lm, grad, point
