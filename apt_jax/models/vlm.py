"""PaliGemma (SigLIP + Gemma) as every head runs it: the prefix of image and prompt tokens, and its attention mask.

Parameter tree `PaliGemma/img` (SigLIP) and `PaliGemma/llm` (a gemma.Module whose expert 0 is PaliGemma's LLM; π0
adds its action expert as expert 1), openpi's names, so PaliGemma npz weights and π0 checkpoints load unchanged.

Letters: B batch, P prefix length, D VLM width, L VLM depth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from apt_jax.models import array_typing as at
from apt_jax.models import gemma
from apt_jax.models import model as _model
from apt_jax.models import siglip


@dataclasses.dataclass
class Prefix:
  """The VLM's input sequence: [image tokens of each camera ; prompt tokens]."""

  # Input embeddings: SigLIP tokens; prompt embeddings scaled by √D.
  tokens: at.Float[at.Array, "b p d"]
  # Valid tokens (False: an absent camera, prompt padding).
  mask: at.Bool[at.Array, "b p"]
  # make_attn_mask's `mask_ar`.
  ar: at.Bool[at.Array, " p"]
  # Prompt tokens.
  is_lang: at.Bool[at.Array, " p"]

  def __post_init__(self):
    at.check_fields(self)


def make_attn_mask(input_mask, mask_ar):
  """The big_vision / openpi attention mask. input_mask bool [B, N]; mask_ar bool [?B, N] -> [B, N, N].

  Token i may attend to token j iff both are valid and cumsum(mask_ar)[j] <= cumsum(mask_ar)[i]: a token with
  mask_ar=True starts a new block that earlier tokens cannot see; mask_ar=False puts a token in the block of the one
  before it. Some masks it can express (rows: queries, columns: keys):

    [1 1 1 1 1 1]          causal: each token sees itself and the past.
    [0 0 0 1 1 1]          prefix-LM: the first 3 tokens see each other, the last 3 are causal on top of them
                           (the first entry may be 1 without changing anything).
    [1 0 1 0 1 0 0 1 0 0]  causal between 4 blocks: a block sees itself and every block before it.

  π0 is [images 0… ; prompt 0… | state 1 | actions 1 0 0…]: images and prompt see each other (PaliGemma's prefix), the
  state token sees the prefix, the actions see the prefix, the state and each other; the prefix never sees them. APT
  Stage 2 ("causal") starts the prompt with a 1, [images 0… ; prompt 1 0…]: images no longer see the prompt, so the
  vision features are those of Stage 1, which has no prompt at all.
  """
  mask_ar = jnp.broadcast_to(jnp.asarray(mask_ar), input_mask.shape)
  cumsum = jnp.cumsum(mask_ar, axis=1)
  attn_mask = cumsum[:, None, :] <= cumsum[:, :, None]
  valid_mask = input_mask[:, None, :] * input_mask[:, :, None]
  return jnp.logical_and(attn_mask, valid_mask)


class PaliGemma(nn.Module):
  """SigLIP (`img`) and the Gemma mixture (`llm`). `llm_configs[0]` is the VLM; any later expert is π0's."""

  llm_configs: Sequence[gemma.Config]
  siglip_config: siglip.Config
  dtype: str = "bfloat16"
  vocab_size: int = gemma.PALIGEMMA_VOCAB_SIZE
  remat_policy: str = "nothing_saveable"
  # Also return expert 0's output of every layer (heads that read VLM features: GR00T, the APT expert).
  return_hidden_states: bool = False

  def setup(self):
    self.img = siglip.Module(self.siglip_config, num_classes=self.llm_configs[0].width, dtype_mm=self.dtype,
                             remat_policy=self.remat_policy)
    self.llm = gemma.Module(configs=tuple(self.llm_configs), embed_dtype=self.dtype, vocab_size=self.vocab_size,
                            remat_policy=self.remat_policy, return_hidden_states=self.return_hidden_states)

  @at.typecheck
  def embed_prefix(self, obs: _model.Observation, *, with_language: bool, language_block: bool) -> Prefix:
    """with_language=False drops the prompt (APT Stage 1); language_block: the prompt opens a new attention block,
    hidden from the image tokens (APT Stage 2, see make_attn_mask)."""
    tokens, masks, ar, is_lang = [], [], [], []
    for name in obs.images:
      image_tokens = self.img(obs.images[name])
      n = image_tokens.shape[1]
      tokens.append(image_tokens)
      masks.append(einops.repeat(jnp.asarray(obs.image_masks[name]), "b -> b s", s=n))
      ar += [False] * n  # Image tokens attend to each other (and to the prompt unless `language_block`).
      is_lang += [False] * n
    if with_language and obs.tokenized_prompt is not None:
      lang = self.llm.embed(obs.tokenized_prompt)
      n = lang.shape[1]
      tokens.append(lang)
      masks.append(jnp.asarray(obs.tokenized_prompt_mask))
      ar += [language_block] + [False] * (n - 1)
      is_lang += [True] * n
    return Prefix(jnp.concatenate(tokens, axis=1), jnp.concatenate(masks, axis=1), np.array(ar, bool),
                  np.array(is_lang, bool))

  def hidden_states(self, prefix: Prefix):
    """-> [L+1, B, P, D]: index 0 the input embeddings, index l the output of layer l (before the final norm)."""
    attn = make_attn_mask(prefix.mask, prefix.ar)
    # Padding does not take a position: a camera or prompt token has the same position with or without padding.
    positions = jnp.cumsum(prefix.mask, axis=1) - 1
    _, _, hidden = self.llm([prefix.tokens], mask=attn, positions=positions)
    return jnp.concatenate([prefix.tokens[None].astype(hidden.dtype), hidden], axis=0)

  def final_norm(self, x):
    """The LLM's final RMSNorm (what PaliGemma applies after its last layer)."""
    return self.llm.final_norms[0](x)[0]


def from_config(config: _model.VlaHeadConfig, *experts: gemma.Config, return_hidden_states: bool = False):
  """The PaliGemma of a head config; `experts` are Gemma experts after the VLM's own (π0's action expert)."""
  return PaliGemma((config.vlm_config, *experts), config.siglip_variant, dtype=config.dtype,
                   vocab_size=config.vocab_size, remat_policy=config.remat_policy,
                   return_hidden_states=return_hidden_states)


def broadcast_batch(tree, n: int):
  """Broadcasts arrays with a leading batch of 1 to batch n (one observation, n action samples)."""
  def f(x):
    if x.shape[0] == n:
      return x
    if x.shape[0] != 1:
      raise ValueError(f"batch {x.shape[0]} cannot be broadcast to {n} (only a batch of 1 can)")
    return jnp.broadcast_to(x, (n, *x.shape[1:]))
  return jax.tree.map(f, tree)
