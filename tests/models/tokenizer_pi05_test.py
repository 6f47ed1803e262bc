"""π0.5's prompt: "Task: {cleaned}, State: {bins};\\nAction: " with BOS, the state in 256 bins over [-1, 1] (openpi's
`PaligemmaTokenizer.tokenize(prompt, state)`), checked against strings and token ids derived by hand."""

import numpy as np
import pytest
import sentencepiece as spm

from apt_jax.models import tokenizer

# Bins by hand: bin k covers [-1 + k/128, -1 + (k+1)/128); below -1 is -1, from 1 - 1/128 up is 255.
STATE = [-1.0, -0.999, 0.0, 0.99, 1.0, 1.5, -1.5, -0.5, 0.5 - 1e-6]
BINS = "0 0 128 254 255 255 -1 64 191"


@pytest.fixture(scope="module")
def char_tokenizer_path(tmp_path_factory):
  """One piece per character (PaliGemma's ids: pad 0, eos 1, bos 2, unk 3; "\\n" a token and whitespace kept, as in
  PaliGemma's), so the expected ids follow from the expected text character by character."""
  prefix = str(tmp_path_factory.mktemp("tok_char") / "char")
  text = ["Task: pick up the red block, State: -1 0 123 456 789;", "Action: put it in the bowl"]
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(text), model_prefix=prefix, model_type="char", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
      character_coverage=1.0, minloglevel=2, user_defined_symbols=["\n"], normalization_rule_name="identity",
      add_dummy_prefix=False, remove_extra_whitespaces=False, hard_vocab_limit=False, vocab_size=64)
  return prefix + ".model"


def _char_ids(sp, text):
  return [sp.piece_to_id("▁" if c == " " else c) for c in text]


def test_state_bins_by_hand():
  assert " ".join(map(str, tokenizer.discretize_state(np.asarray(STATE, np.float32)))) == BINS


def test_pi05_prompt_text_by_hand():
  text = tokenizer.pi05_prompt("  pick_up the\nred block ", np.asarray(STATE))
  assert text == f"Task: pick up the red block, State: {BINS};\nAction: "


def test_pi05_tokens_are_bos_and_the_characters_of_the_prompt(char_tokenizer_path):
  sp = spm.SentencePieceProcessor(model_file=char_tokenizer_path)
  text = "Task: pick up the red block, State: 0 255 -1;\nAction: "
  want = [sp.bos_id()] + _char_ids(sp, text)
  assert sp.unk_id() not in want
  tok = tokenizer.PaligemmaTokenizer(char_tokenizer_path, max_len=80)
  tokens, mask = tok.tokenize("pick_up the red block\n", np.array([-1.0, 1.0, -2.0]))
  np.testing.assert_array_equal(tokens[: len(want)], want)
  np.testing.assert_array_equal(tokens[len(want):], 0)
  np.testing.assert_array_equal(mask, np.arange(80) < len(want))
  # π0's format for the same prompt: no "Task:", the newline after the text, and no state.
  pi0_tokens, _ = tok.tokenize("pick up the red block")
  np.testing.assert_array_equal(pi0_tokens[:23], [sp.bos_id()] + _char_ids(sp, "pick up the red block\n"))


def test_pi05_prompt_is_truncated_to_max_len(char_tokenizer_path):
  tok = tokenizer.PaligemmaTokenizer(char_tokenizer_path, max_len=10)
  tokens, mask = tok.tokenize("pick up", np.zeros(3))
  sp = spm.SentencePieceProcessor(model_file=char_tokenizer_path)
  np.testing.assert_array_equal(tokens, [sp.bos_id()] + _char_ids(sp, "Task: pic"))
  assert mask.all()
  with pytest.raises(ValueError, match="max_token_len=10"):
    tok.tokenize("pick up", np.zeros(3), truncate=False)
