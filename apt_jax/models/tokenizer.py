"""PaliGemma SentencePiece tokenizer with openpi's π0 prompt convention.

`tokenize(prompt)` = BOS + encode(cleaned text) + encode("\\n"), truncated or right-padded with 0 to `max_len`, plus a
boolean mask that is True on real tokens. Cleaning: strip, lower-case is NOT applied (openpi only strips and turns
"_" and "\\n" into spaces).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import sentencepiece as spm


def clean_text(text: str) -> str:
  return text.strip().replace("_", " ").replace("\n", " ")


class PaligemmaTokenizer:
  """Wraps a SentencePiece model (the real `paligemma_tokenizer.model`, or a small one trained for tests)."""

  def __init__(self, model_path: str | os.PathLike, max_len: int = 48):
    model_path = os.fspath(model_path)
    if not os.path.exists(model_path):
      raise FileNotFoundError(f"Tokenizer model not found: {model_path} (set config.tokenizer_path)")
    self._sp = spm.SentencePieceProcessor(model_file=model_path)
    self.max_len = max_len
    self.model_path = model_path

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def tokenize(self, prompt: str, *, truncate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """prompt -> (tokens [max_len] int32, mask [max_len] bool).

    Longer prompts are truncated with a warning; with truncate=False they raise instead (naming the prompt).
    """
    tokens = [self._sp.bos_id()] + self._sp.encode(clean_text(prompt)) + self._sp.encode("\n")
    n = len(tokens)
    if n > self.max_len:
      if not truncate:
        raise ValueError(f"Prompt of {n} tokens exceeds max_token_len={self.max_len}: {prompt!r}")
      logging.warning("Prompt of %d tokens truncated to max_token_len=%d: %r", n, self.max_len, prompt)
      tokens, n = tokens[: self.max_len], self.max_len
    out = np.zeros([self.max_len], np.int32)
    out[:n] = tokens
    mask = np.zeros([self.max_len], bool)
    mask[:n] = True
    return out, mask

  def detokenize(self, tokens, mask=None) -> str:
    tokens = np.asarray(tokens)
    if mask is not None:
      tokens = tokens[np.asarray(mask, bool)]
    ids = [int(t) for t in tokens if int(t) != self._sp.bos_id()]
    return self._sp.decode(ids).strip()


def train_sentencepiece(sentences, model_prefix: str, vocab_size: int = 256, model_type: str = "bpe") -> str:
  """Trains a small SentencePiece model (PaliGemma conventions: pad 0, eos 1, bos 2, unk 3). Returns the path."""
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(sentences)),
      model_prefix=model_prefix,
      vocab_size=vocab_size,
      model_type=model_type,
      hard_vocab_limit=False,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3,
      character_coverage=1.0,
      minloglevel=2,
  )
  return model_prefix + ".model"
