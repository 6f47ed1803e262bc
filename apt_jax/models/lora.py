"""LoRA on Gemma's einsums and gated MLP, as openpi's `models/lora.py` (names, shapes and arithmetic), plus the fold
of the adapters into their base weights (`merge_params`, used by `python -m apt_jax.export --merge_lora`).

An einsum weight w gets `lora_a` (w with its last axis replaced by the rank r) and `lora_b` (w with its second to last
axis replaced by r), applied by two einsums that openpi derives from the base equation by label substitution; the MLP
gets `gating_einsum_lora_{a,b}` and `linear_lora_{a,b}`. Einsum adapters are scaled by α/r; the MLP's are not scaled at
all (openpi's `FeedForward._dot` ignores the scaling; the same whenever α = r, as in every openpi variant).

Init: `lora_a` ~ N(0, 0.01) as openpi, `lora_b` = 0 (openpi draws both from N(0, 0.01)), so a model with fresh
adapters computes exactly what its base weights compute.

Letters: r rank, L the rank label in einsum strings (must not occur in the base equation).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from apt_jax import tree as tree_lib

RANK_LABEL = "L"
# "/"-joined param paths of LoRA adapters: einsum `.../lora_a`, MLP `.../gating_einsum_lora_b`, ...
LORA_PARAM_REGEX = r"(.*/)?([^/]*_)?lora_[ab]"


def is_lora_param(path: str) -> bool:
  return re.fullmatch(LORA_PARAM_REGEX, path) is not None


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int
  alpha: float

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")

  @property
  def scaling(self) -> float:
    return self.alpha / self.rank


def _init_a():
  return nn.initializers.normal(stddev=0.01)


def einsum_equations(eqn: str) -> tuple[str, str]:
  """Base equation "x,w->y" -> (x,a->h, h,b->y), the LoRA path with the rank label L (openpi's substitution).

  a is w with its last label replaced by L, b is w with its second-to-last label replaced by L. E.g.
  "BTD,NDH->BTNH" -> ("BTD,NDL->BTNL", "BTNL,NLH->BTNH"); "BTNH,NHD->BTD" -> ("BTNH,NHL->BTL", "BTL,NLD->BTD"),
  where b's N is summed on its own (h no longer carries N).
  """
  if RANK_LABEL in eqn:
    raise ValueError(f"LoRA rank label {RANK_LABEL!r} already in einsum {eqn!r}")
  m = re.fullmatch(r"(.*),(.*)->(.*)", eqn)
  if not m:
    raise ValueError(f"Unsupported einsum for LoRA: {eqn!r}")
  lhs, rhs, out = m.groups()
  a_label, b_label = rhs[-2], rhs[-1]
  a_out = out.replace(b_label, RANK_LABEL)
  return f"{lhs},{rhs.replace(b_label, RANK_LABEL)}->{a_out}", f"{a_out},{rhs.replace(a_label, RANK_LABEL)}->{out}"


def einsum_delta(eqn: str, a, b, *, scaling: float) -> np.ndarray:
  """The weight change that LoRA adds to the weight of `eqn`: x·w + lora(x) == x·(w + delta) for every x.

  b's labels that the first LoRA einsum contracts away (N in "BTNH,NHD->BTD") are summed over b on their own.
  """
  (_, a_rhs, h), (_, b_rhs, out) = (re.fullmatch(r"(.*),(.*)->(.*)", e).groups() for e in einsum_equations(eqn))
  w_labels = re.fullmatch(r".*,(.*)->.*", eqn).group(1)
  b_rhs = "".join(c if c in h or c in out else c.lower() for c in b_rhs)  # summed on its own: a fresh label
  # NumPy takes letters only (Gemma's equations use "2" and "3" for the k/v and q/k/v axes).
  letters = {c: chr(ord("a") + i) for i, c in enumerate(sorted(set(a_rhs + b_rhs + w_labels)))}
  spell = lambda labels: "".join(letters[c] for c in labels)
  return scaling * np.einsum(f"{spell(a_rhs)},{spell(b_rhs)}->{spell(w_labels)}", np.asarray(a, np.float64),
                             np.asarray(b, np.float64))


class Einsum(nn.Module):
  """An einsum with its weight at `<name>/w`, cast to the input dtype, and LoRA adapters when `lora` is set."""

  shape: tuple[int, ...]
  init_fn: nn.initializers.Initializer = nn.initializers.zeros_init()
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, eqn, x):
    dtype = x.dtype
    out = jnp.einsum(eqn, x, self.param("w", self.init_fn, self.shape).astype(dtype))
    if self.lora is None:
      return out
    r = self.lora.rank
    a = self.param("lora_a", _init_a(), (*self.shape[:-1], r)).astype(dtype)
    b = self.param("lora_b", nn.initializers.zeros_init(), (*self.shape[:-2], r, self.shape[-1])).astype(dtype)
    eqn_a, eqn_b = einsum_equations(eqn)
    return out + jnp.einsum(eqn_b, jnp.einsum(eqn_a, x, a), b) * self.lora.scaling


def dense_adapters(module: nn.Module, name: str, shape: tuple[int, ...], lora: LoraConfig | None):
  """The MLP's adapters for a weight of `shape` [..., in, out]: (a [..., in, r], b [..., r, out]) or None."""
  if lora is None:
    return None
  a = module.param(f"{name}_lora_a", _init_a(), (*shape[:-1], lora.rank))
  b = module.param(f"{name}_lora_b", nn.initializers.zeros_init(), (*shape[:-2], lora.rank, shape[-1]))
  return a, b


def dense(x, w, adapters):
  """x·w (+ x·a·b, unscaled as openpi's MLP), weights cast to x's dtype."""
  out = jnp.dot(x, w.astype(x.dtype))
  if adapters is None:
    return out
  a, b = adapters
  return out + jnp.dot(jnp.dot(x, a.astype(x.dtype)), b.astype(x.dtype))


# --- Folding the adapters into the base weights ------------------------------------------------------------------

# Einsum weights of the Gemma mixture by name (expert suffixes `_1`, ... stripped): their equation in gemma.Attention.
ATTENTION_EQUATIONS = {
    "q_einsum": "BTD,NDH->BTNH",
    "kv_einsum": "BSD,2KDH->2BSKH",
    "qkv_einsum": "BSD,3KDH->3BSKH",
    "attn_vec_einsum": "BTNH,NHD->BTD",
}


def _expert_and_equation(einsum_name: str) -> tuple[int, str]:
  """"q_einsum_1" -> (1, q_einsum's equation): the expert index from gemma's `_i` naming."""
  m = re.fullmatch(r"(.*?)(?:_(\d+))?", einsum_name)
  base, expert = m.group(1), int(m.group(2) or 0)
  if base not in ATTENTION_EQUATIONS:
    raise ValueError(f"LoRA adapters on an unknown einsum {einsum_name!r}; known: {sorted(ATTENTION_EQUATIONS)}")
  return expert, ATTENTION_EQUATIONS[base]


def merge_params(params: dict, scalings) -> dict:
  """Params with every LoRA adapter folded into its base weight (in float64, cast back to the base dtype) and the
  adapter leaves removed: the tree of the same model without LoRA.

  scalings: α/r of expert i's einsums at index i (the MLP adapters are unscaled). Stacked weights [depth, ...] merge
  layer by layer.
  """
  flat = tree_lib.flatten(params)
  out = {k: v for k, v in flat.items() if not is_lora_param(k)}
  for key in sorted(k for k in flat if is_lora_param(k) and k.endswith("_a")):
    head, leaf = key.rsplit("/", 1)
    if leaf == "lora_a":  # An einsum: <head>/{w, lora_a, lora_b}.
      w_key, b_key = f"{head}/w", f"{head}/lora_b"
      expert, eqn = _expert_and_equation(head.rsplit("/", 1)[1])
      w_rank = len(eqn.split(",")[1].split("->")[0])
      delta = functools.partial(einsum_delta, eqn, scaling=scalings[expert])
    else:  # The MLP: <head>/{name, name_lora_a, name_lora_b}, x·a·b unscaled; matmul broadcasts over the layers.
      name = leaf[: -len("_lora_a")]
      w_key, b_key = f"{head}/{name}", f"{head}/{name}_lora_b"
      w_rank = None
      delta = lambda a, b: np.matmul(np.asarray(a, np.float64), np.asarray(b, np.float64))
    if w_key not in flat or b_key not in flat:
      raise ValueError(f"LoRA adapter {key} has no matching {w_key} and {b_key}")
    w, a, b = (np.asarray(flat[k]) for k in (w_key, key, b_key))
    if w_rank is not None and w.ndim == w_rank + 1:  # A scanned stack [depth, ...]: layer by layer.
      d = np.stack([delta(x, y) for x, y in zip(a, b)])
    else:
      d = delta(a, b)
    out[w_key] = (w.astype(np.float64) + d).astype(w.dtype)
  return tree_lib.unflatten(out)
