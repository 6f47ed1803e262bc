"""PaliGemma SentencePiece tokenizer with openpi's π0 and π0.5 prompt conventions.

π0: `tokenize(prompt)` = BOS + encode(cleaned text) + encode("\\n"). π0.5 (`tokenize(prompt, state)`, the normalized
state in [-1, 1]): BOS + encode("Task: {cleaned}, State: {bins};\\nAction: "), the bins `discretize_state(state)`
joined by spaces. Either is truncated or right-padded with 0 to `max_len`, plus a boolean mask that is True on real
tokens. Cleaning: strip, lower-case is NOT applied (openpi only strips and turns "_" and "\\n" into spaces).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import sentencepiece as spm

STATE_BINS = 256


def clean_text(text: str) -> str:
  return text.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state) -> np.ndarray:
  """openpi's π0.5 state bins: 256 equal bins over [-1, 1), bin k = [-1 + 2k/256, -1 + 2(k+1)/256). Values below -1
  give -1 and values from 1 - 2/256 up give 255 (np.digitize, as openpi: not clipped)."""
  return np.digitize(np.asarray(state), bins=np.linspace(-1, 1, STATE_BINS + 1)[:-1]) - 1


def pi05_prompt(prompt: str, state) -> str:
  """The π0.5 text: the cleaned task and the discretized state."""
  bins = " ".join(map(str, discretize_state(state)))
  return f"Task: {clean_text(prompt)}, State: {bins};\nAction: "


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

  def tokenize(self, prompt: str, state=None, *, truncate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """prompt (and for π0.5 the normalized state [S]) -> (tokens [max_len] int32, mask [max_len] bool).

    Longer prompts are truncated with a warning; with truncate=False they raise instead (naming the prompt).
    """
    if state is None:
      tokens = [self._sp.bos_id()] + self._sp.encode(clean_text(prompt)) + self._sp.encode("\n")
    else:
      tokens = [self._sp.bos_id()] + self._sp.encode(pi05_prompt(prompt, state))
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
