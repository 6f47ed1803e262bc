"""PaligemmaTokenizer: openpi's π0 prompt convention, checked against SentencePiece itself."""

import numpy as np
import pytest
import sentencepiece as spm

from apt_jax.models import tokenizer

PROMPT = "pick up the red block"


@pytest.fixture(scope="module")
def sp(tiny_tokenizer_path):
  return spm.SentencePieceProcessor(model_file=tiny_tokenizer_path)


@pytest.fixture(scope="module")
def newline_tokenizer_path(tmp_path_factory, robot_sentences):
  """Like PaliGemma's tokenizer, "\\n" is a real token here (the default SentencePiece normaliser drops it)."""
  prefix = str(tmp_path_factory.mktemp("tok_nl") / "nl")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(robot_sentences), model_prefix=prefix, vocab_size=200, model_type="bpe",
      hard_vocab_limit=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3, character_coverage=1.0, minloglevel=2,
      user_defined_symbols=["\n"], normalization_rule_name="identity")
  return prefix + ".model"


@pytest.mark.parametrize("model", ["tiny_tokenizer_path", "newline_tokenizer_path"])
def test_tokenize_is_bos_text_newline_then_padding(request, model):
  path = request.getfixturevalue(model)
  sp = spm.SentencePieceProcessor(model_file=path)
  expected = [sp.bos_id()] + sp.encode(PROMPT) + sp.encode("\n")
  assert sp.bos_id() == 2 and sp.pad_id() == 0  # PaliGemma's ids.
  if model == "newline_tokenizer_path":
    assert sp.encode("\n"), "the newline must be a token in this model"

  tok = tokenizer.PaligemmaTokenizer(path, max_len=20)
  tokens, mask = tok.tokenize(PROMPT)
  n = len(expected)
  assert tokens.shape == mask.shape == (20,)
  assert tokens.dtype == np.int32 and mask.dtype == np.bool_
  assert tokens[0] == sp.bos_id()
  np.testing.assert_array_equal(tokens[:n], expected)
  np.testing.assert_array_equal(tokens[n:], 0)
  np.testing.assert_array_equal(mask, np.arange(20) < n)


def test_detokenize_round_trip(tiny_tokenizer_path):
  tok = tokenizer.PaligemmaTokenizer(tiny_tokenizer_path, max_len=24)
  for prompt in [PROMPT, "put the blue mug on the white plate"]:
    tokens, mask = tok.tokenize(prompt)
    assert tok.detokenize(tokens, mask) == prompt
    # Without the mask, the padding (id 0) decodes to nothing.
    assert tok.detokenize(tokens) == prompt


def test_long_prompt_is_truncated_or_rejected(tiny_tokenizer_path, sp):
  prompt = "pick up the red block and place it in the basket then open the drawer and push the cup inside"
  full = [sp.bos_id()] + sp.encode(prompt) + sp.encode("\n")
  max_len = 8
  assert len(full) > max_len
  tok = tokenizer.PaligemmaTokenizer(tiny_tokenizer_path, max_len=max_len)
  tokens, mask = tok.tokenize(prompt)
  np.testing.assert_array_equal(tokens, full[:max_len])
  assert mask.all() and mask.shape == (max_len,)
  with pytest.raises(ValueError) as err:
    tok.tokenize(prompt, truncate=False)
  assert prompt in str(err.value)


def test_missing_model_raises_naming_the_path(tmp_path):
  path = tmp_path / "no_such_tokenizer.model"
  with pytest.raises(FileNotFoundError, match=r"no_such_tokenizer\.model"):
    tokenizer.PaligemmaTokenizer(path)


def test_underscores_and_newlines_become_spaces(tiny_tokenizer_path, sp):
  assert tokenizer.clean_text("  pick_up the\nred block \n") == PROMPT
  tok = tokenizer.PaligemmaTokenizer(tiny_tokenizer_path, max_len=20)
  tokens, mask = tok.tokenize("pick_up the\nred_block")
  want_tokens, want_mask = tok.tokenize(PROMPT)
  np.testing.assert_array_equal(tokens, want_tokens)
  np.testing.assert_array_equal(mask, want_mask)
  assert tok.vocab_size == sp.get_piece_size()
