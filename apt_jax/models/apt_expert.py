"""The APT paper's own action expert (layer-wise gated fusion), adapted to a PaliGemma backbone, with both stages.

Sequence (paper §1.3): the expert self-attends over x = [VL stream ; action stream].
  VL stream      vl0 = `vl_in`(VLM input embeddings): SigLIP tokens of each camera, then prompt embeddings.
  Action stream  [state token ; AH noisy action tokens]; each token = MLP(Linear, LayerNorm, GELU, Linear) of the
                 state / action, action tokens + a sinusoidal embedding of their index (as BayesVLA's `traj_time_pe`).
  Time           SinusoidalPosEmb(W, temperature 1000) of the diffusion step -> Linear, SiLU, Linear; enters every
                 layer through AdaRMSNorm on the action stream only (modulation Dense zero-initialised, giving
                 scale, shift and a residual gate, as π0.5's adaRMS); the VL stream gets a plain RMSNorm.
  Layer          pre-norm self-attention (fused QKV with bias, qk-RMSNorm, RoPE) and pre-norm FFN(W -> 2W, GELU);
                 both streams share the weights. Then gated fusion on the VL stream only (paper §1.4):
                   vl <- g ⊙ vl + (1 − g) ⊙ highway_j,  g = σ(gate[j]),  highway_j = `highway_j`(VLM hidden state
                   tap j) (gate: [N, W] zeros, so g = 0.5 at init). As in the paper, the fusion after the last
                   layer is dead (only action tokens are read out), so its highway and gate row get no gradient.
  Output         final RMSNorm -> `action_out` (zero-initialised) on the AH action tokens.
  Objective      the paper's DDIM (T = 100, squaredcos_cap_v2, ε-prediction, weighted L1, 20 DDIM steps) by default,
                 or flow matching in π0's convention (net time t·T so the time embedding sees the same range).

Masks (paper `prepare_attention_mask`): `full` — every query sees valid VL keys, action queries also see action keys,
VL queries never see action keys. `dilated` — `full` minus vision/action -> language and language -> vision/action:
language attends only to language, actions see only vision and actions.

Stages (N = `expert_variant.depth`, the Stage 2 depth; N taps):
  "stage1"  N/2 layers, all `dilated`; layer i fuses tap 2i+1 (odd taps). The prompt is dropped from the VLM and the
            expert (numerically the same as the paper's masking: nothing downstream of a vision or action token can
            see it). VLM frozen.
  "stage2"  N layers: Stage 1 layer i becomes layer 2i+1 (`dilated`, fuses tap 2i+1); new layers take the even
            places (`full`, fuse tap 2i, and carry `fusion_open` [W]: vl <- vl + open ⊙ (fused − vl)).
            `stage2_params_from_stage1(..., init=)`:
              "paper"       new layers random, open = 1 (exactly the paper's fusion). NB the paper's loader also
                            re-initialises every Stage 1 param except the attention layers; we keep them all.
              "preserving"  new layers' output projections (`out`, `ffn_out`) and `open` start at 0, so the new
                            layers are the identity and the model equals Stage 1 at init.
  "none"    N `full` layers, layer i fuses tap i (one-stage baseline).

RoPE positions keep Stage 1 independent of the prompt: all vision tokens share id 0 (the paper gives the image tokens
of a prompt one id), the action stream takes 1..1+AH, prompt tokens follow after it.

Adaptation notes / left out:
  - PRoPE (camera-pose projective encoding on half the head channels) is omitted: our observations carry no camera
    extrinsics. Without it, RoPE is applied on all head channels of every layer.
  - No end-effector `abs_pos_enc`, arm-id embeddings or history actions: the robot state is the one history token.
  - VLM taps: the paper taps Qwen3-VL hidden states; here `vlm_taps[j]` indexes [input embeddings, layer 1 .. L
    outputs] of Gemma (index 0 = embeddings). Default: round((j + 1)·L / N), spread over depth and ending at the
    last layer (gemma_2b, N = 20: 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 14, 15, 16, 17, 18).
  - Gemma's residual stream grows with depth (embeddings are scaled by √D), so taps and inputs are RMS-normalised
    (no parameters) before their projections; the paper projects Qwen hidden states directly.

Letters: B batch, V VL tokens, A action-stream tokens (1 + AH), T = V + A, W expert width, N heads, H head dim.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from apt_jax import tree as tree_lib
from apt_jax.models import gemma as _gemma
from apt_jax.models import model as _model
from apt_jax.models import variants as _variants
from apt_jax.models import vlm as _vlm

VISION, LANGUAGE, ACTION = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
  width: int
  num_heads: int
  depth: int  # Stage 2 (and one-stage) depth N = number of VLM taps; Stage 1 builds N/2 layers.
  mlp_ratio: int = 2

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads


_EXPERT_VARIANTS = {
    "base": dict(width=768, num_heads=12, depth=20),
    "small": dict(width=384, num_heads=6, depth=20),
    "tiny": dict(width=192, num_heads=3, depth=20),
    "dummy": dict(width=32, num_heads=2, depth=4),
}


def get_expert_config(variant) -> ExpertConfig:
  return _variants.resolve(ExpertConfig, _EXPERT_VARIANTS, variant, "expert")


def default_taps(vlm_depth: int, num_taps: int) -> tuple[int, ...]:
  """round((j + 1)·L / N) (halves up), j = 0..N−1: indices into [embeddings, layer 1 .. L outputs]."""
  return tuple(int(math.floor((j + 1) * vlm_depth / num_taps + 0.5)) for j in range(num_taps))


@dataclasses.dataclass(frozen=True)
class AptExpertConfig(_vlm.FeatureHeadConfig):
  """The paper's expert. Defaults: base size (768 / 12 heads, 20 layers), Ta = 32, DDIM, gemma_2b + So400m/14."""

  action_horizon: int = 32
  objective: str = "ddim"
  expert_variant: Any = "base"
  vlm_taps: Any = None  # None: default_taps(VLM depth, N).
  # How a Stage 2 model is initialised from Stage 1 (train.py `init_from`): "preserving" or "paper".
  stage2_init: str = "preserving"

  flow_convention = "pi0"

  def __post_init__(self):
    super().__post_init__()
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("expert_variant", get_expert_config(_vlm._freeze(self.expert_variant)))
    e = self.expert_variant
    if e.depth % 2:
      raise ValueError(f"expert depth {e.depth} must be even (Stage 1 builds half of it)")
    if e.width % e.num_heads or e.head_dim % 2:
      raise ValueError(f"expert width {e.width} must split into {e.num_heads} heads of even size")
    taps = default_taps(self.vlm_config.depth, e.depth) if self.vlm_taps is None else tuple(int(t)
                                                                                           for t in self.vlm_taps)
    if len(taps) != e.depth or not all(0 <= t <= self.vlm_config.depth for t in taps):
      raise ValueError(f"vlm_taps={taps}: need {e.depth} indices in [0, {self.vlm_config.depth}]")
    set_("vlm_taps", taps)
    if self.stage2_init not in ("preserving", "paper"):
      raise ValueError(f"stage2_init={self.stage2_init!r}; expected 'preserving' or 'paper'")

  @property
  def num_layers(self) -> int:
    return self.expert_variant.depth // 2 if self.apt_stage == "stage1" else self.expert_variant.depth

  def tap_index(self, layer: int) -> int:
    """Which tap layer `layer` fuses: 2i+1 in Stage 1, i otherwise."""
    return 2 * layer + 1 if self.apt_stage == "stage1" else layer

  def is_dilated(self, layer: int) -> bool:
    return self.apt_stage == "stage1" or (self.apt_stage == "stage2" and layer % 2 == 1)

  def is_new_stage2_layer(self, layer: int) -> bool:
    return self.apt_stage == "stage2" and layer % 2 == 0

  def stage2_partial_params(self, stage1_params: dict, abstract_params: dict):
    """train.py's Stage 1 -> Stage 2 hook: (partial params to merge over a fresh init, restored, new keys)."""
    flat = tree_lib.flatten(abstract_params)
    partial, restored, new = stage2_partial_from_stage1(stage1_params, flat, self.stage2_init)
    partial = {k: np.asarray(v).astype(flat[k].dtype) for k, v in partial.items()}
    return tree_lib.unflatten(partial), restored, new

  def module(self) -> "AptExpertModule":
    return AptExpertModule(self)

  def model_class(self):
    return AptExpert


# --- Layers ------------------------------------------------------------------------------------------------------


def sinusoidal_pos_emb(x, dim: int, temperature: float = 10000.0):
  """BayesVLA/APT `SinusoidalPosEmb`: [sin, cos] of x·temperature^(−i/(half−1)). x [...] -> [..., dim]."""
  half = dim // 2
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(temperature) / (half - 1)))
  emb = x.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1)


def torch_linear_bias_init(key, shape, dtype=jnp.float32, *, fan_in: int):
  """torch.nn.Linear's bias init, U(±1/√fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class TokenMlp(nn.Module):
  """BayesVLA/APT `simple_mlp([in, W, W], ln=True)`: Linear -> LayerNorm -> ReLU -> Linear.

  The first bias starts as torch's U(±1/√in), not 0: with a zero bias the LayerNorm right after it would make the
  token blind to the input's magnitude (|x_t| is what an ε-predictor needs at high noise).
  """

  width: int
  dtype: str

  @nn.compact
  def __call__(self, x):
    bias_init = lambda k, s, d=jnp.float32: torch_linear_bias_init(k, s, d, fan_in=x.shape[-1])
    x = nn.Dense(self.width, dtype=self.dtype, bias_init=bias_init)(x)
    x = nn.relu(nn.LayerNorm(dtype=self.dtype)(x))
    return nn.Dense(self.width, dtype=self.dtype)(x)


class ExpertLayer(nn.Module):
  """One expert layer over [vl ; act] + gated fusion of one VLM tap into the VL stream."""

  config: ExpertConfig
  dtype: str
  new_in_stage2: bool = False

  @nn.compact
  def __call__(self, vl, act, cond, mask, positions, highway, gate_logit):
    c = self.config
    n_vl = vl.shape[1]

    def split_norm(name, vl, act):
      vl_h, _ = _gemma.RMSNorm(name=f"{name}_vl")(vl)
      act_h, act_gate = _gemma.RMSNorm(name=f"{name}_act")(act, cond)
      return jnp.concatenate([vl_h, act_h], axis=1), act_gate

    def residual(vl, act, y, act_gate):
      return vl + y[:, :n_vl], act + y[:, n_vl:] * act_gate

    # Self-attention.
    x, act_gate = split_norm("attn_norm", vl, act)
    qkv = nn.Dense(3 * c.width, dtype=self.dtype, name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(*qkv.shape[:2], 3, c.num_heads, c.head_dim), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    q = _gemma.apply_rope(_gemma.RMSNorm(name="q_norm")(q)[0], positions) * c.head_dim**-0.5
    k = _gemma.apply_rope(_gemma.RMSNorm(name="k_norm")(k)[0], positions)
    y = _gemma.dot_product_attention(q, k, v, mask[:, None], c.num_heads)
    y = nn.Dense(c.width, dtype=self.dtype, name="out")(y.reshape(*y.shape[:2], c.width))
    vl, act = residual(vl, act, y, act_gate)

    # Feed-forward.
    x, act_gate = split_norm("ffn_norm", vl, act)
    y = nn.gelu(nn.Dense(c.mlp_ratio * c.width, dtype=self.dtype, name="ffn_in")(x))
    y = nn.Dense(c.width, dtype=self.dtype, name="ffn_out")(y)
    vl, act = residual(vl, act, y, act_gate)

    # Gated fusion (VL stream only).
    g = jax.nn.sigmoid(gate_logit.astype(jnp.float32))
    fused = (g * vl + (1 - g) * highway).astype(vl.dtype)
    if self.new_in_stage2:
      fusion_open = self.param("fusion_open", nn.initializers.ones_init(), (c.width,))
      fused = vl + (fusion_open * (fused - vl)).astype(vl.dtype)
    return fused, act


# --- The head ----------------------------------------------------------------------------------------------------


class AptExpertModule(nn.Module):
  config: AptExpertConfig

  def setup(self):
    c = self.config
    e = c.expert_variant
    self.PaliGemma = c.make_vlm()
    self.vl_in = nn.Dense(e.width, dtype=c.dtype)
    self.highway = {str(j): nn.Dense(e.width, dtype=c.dtype) for j in self.tap_indices()}
    self.gate = self.param("gate", nn.initializers.zeros_init(), (e.depth, e.width))
    self.time_mlp_in = nn.Dense(e.width, dtype=c.dtype)
    self.time_mlp_out = nn.Dense(e.width, dtype=c.dtype)
    self.state_in = TokenMlp(e.width, c.dtype)
    self.action_in = TokenMlp(e.width, c.dtype)
    self.layer = [ExpertLayer(e, c.dtype, new_in_stage2=c.is_new_stage2_layer(i)) for i in range(c.num_layers)]
    self.final_norm = _gemma.RMSNorm()
    self.action_out = nn.Dense(c.action_dim, kernel_init=nn.initializers.zeros_init(), dtype=c.dtype)

  def tap_indices(self) -> list[int]:
    return sorted({self.config.tap_index(i) for i in range(self.config.num_layers)})

  # --- VL stream and taps -----------------------------------------------------------------------------------------

  def encode(self, obs: _model.Observation, *, with_language: bool | None = None):
    """-> context: vl0 [B, V, W], highways {j: [B, V, W]}, VL mask [B, V], is_lang [V] (static as an array)."""
    c = self.config
    if with_language is None:
      with_language = c.uses_language
    prefix = self.PaliGemma.embed(obs, with_language=with_language, language_block=c.language_block)
    hidden = self.PaliGemma(prefix)  # [L+1, B, V, Dv]; hidden[0] == prefix.tokens
    if c.stop_vlm_gradient:
      hidden = jax.lax.stop_gradient(hidden)
    vl0 = self.vl_in(_vlm.rms_normalize(hidden[0]).astype(c.dtype))
    highways = {j: self.highway[j](_vlm.rms_normalize(hidden[c.vlm_taps[int(j)]]).astype(c.dtype))
                for j in self.highway}
    return {"vl0": vl0, "highways": highways, "mask": prefix.mask,
            "is_lang": jnp.broadcast_to(jnp.asarray(prefix.is_lang), prefix.mask.shape)}

  # --- Masks and positions ----------------------------------------------------------------------------------------

  @staticmethod
  def masks_and_positions(vl_mask, is_lang, num_action_tokens: int):
    """-> (full [B, T, T], dilated [B, T, T], positions [B, T]) over [VL ; action]."""
    b = vl_mask.shape[0]
    kind = jnp.concatenate([jnp.where(is_lang, LANGUAGE, VISION),
                            jnp.full((b, num_action_tokens), ACTION)], axis=1)
    valid = jnp.concatenate([vl_mask, jnp.ones((b, num_action_tokens), bool)], axis=1)
    q, k = kind[:, :, None], kind[:, None, :]
    full = valid[:, :, None] & valid[:, None, :] & ((k != ACTION) | (q == ACTION))
    dilated = full & ~((q != LANGUAGE) & (k == LANGUAGE)) & ~((q == LANGUAGE) & (k != LANGUAGE))
    lang = is_lang & vl_mask
    action_pos = jnp.broadcast_to(jnp.arange(1, num_action_tokens + 1), (b, num_action_tokens))
    vl_pos = jnp.where(lang, num_action_tokens + jnp.cumsum(lang, axis=1), 0)
    return full, dilated, jnp.concatenate([vl_pos, action_pos], axis=1)

  # --- Denoiser ---------------------------------------------------------------------------------------------------

  def _time_input(self, net_time):
    """DDIM: the integer step k (as the paper); flow (t=1 noise): t·T, the same range."""
    c = self.config
    return net_time if c.objective == "ddim" else net_time * c.diffusion_steps

  def denoise(self, obs: _model.Observation, context, x_t, net_time):
    """-> prediction [B, AH, AD] (ε for DDIM, ε − a for flow)."""
    c = self.config
    e = c.expert_variant
    context, state = _vlm.broadcast_batch((context, obs.state), x_t.shape[0])
    temb = sinusoidal_pos_emb(self._time_input(net_time), e.width, temperature=1000.0).astype(c.dtype)
    cond = self.time_mlp_out(nn.silu(self.time_mlp_in(temb)))
    state = self.state_in(state.astype(c.dtype))[:, None]
    actions = self.action_in(x_t.astype(c.dtype))
    actions = actions + sinusoidal_pos_emb(jnp.arange(c.action_horizon), e.width)[None].astype(c.dtype)
    act = jnp.concatenate([state, actions], axis=1)
    vl = context["vl0"]
    full, dilated, positions = self.masks_and_positions(context["mask"], context["is_lang"], act.shape[1])
    for i, layer in enumerate(self.layer):
      j = c.tap_index(i)
      vl, act = layer(vl, act, cond, dilated if c.is_dilated(i) else full, positions,
                      context["highways"][str(j)], self.gate[j])
    out, _ = self.final_norm(act[:, -c.action_horizon:])
    return self.action_out(out)

  def predict(self, obs, x_t, net_time):
    return self.denoise(obs, self.encode(obs), x_t, net_time)

  def init_all(self, obs, actions):
    """Touches every parameter (prompt embedding included) whatever the stage."""
    return self.denoise(obs, self.encode(obs, with_language=True), actions, jnp.zeros(actions.shape[0]))


@flax.struct.dataclass
class AptExpert(_vlm.FeatureHeadModel):
  """The APT expert model: `config` + `params`; compute_loss / sample_actions from FeatureHeadModel."""


# --- Stage 1 -> Stage 2 --------------------------------------------------------------------------------------------

_LAYER = re.compile(r"^layer_(\d+)/")
_ZEROED_IN_PRESERVING = ("out/kernel", "out/bias", "ffn_out/kernel", "ffn_out/bias", "fusion_open")


def stage1_to_stage2_name(key: str) -> str:
  """Stage 1 layer i is Stage 2 layer 2i+1; every other name is unchanged."""
  return _LAYER.sub(lambda m: f"layer_{2 * int(m.group(1)) + 1}/", key)


def stage2_partial_from_stage1(stage1_params, stage2_shapes: dict, init: str = "preserving"):
  """The Stage 1 -> Stage 2 mapping. stage2_shapes: "/"-joined Stage 2 key -> shape (or anything with .shape).

  -> (flat partial params: Stage 1 params under Stage 2 names, plus zeros for the new layers' `out`, `ffn_out` and
  `fusion_open` when init="preserving"; restored keys; new keys). Fails naming every Stage 1 param that does not fit.
  """
  if init not in ("preserving", "paper"):
    raise ValueError(f"init={init!r}; expected 'preserving' or 'paper'")
  shape = lambda v: tuple(v.shape) if hasattr(v, "shape") else tuple(v)
  flat1 = tree_lib.flatten(stage1_params)
  mapped = {stage1_to_stage2_name(k): v for k, v in flat1.items()}
  problems = [f"{k1} -> {k2}: " + ("missing" if k2 not in stage2_shapes else
                                   f"{np.shape(v)} vs {shape(stage2_shapes[k2])}")
              for k1, (k2, v) in zip(flat1, mapped.items())
              if k2 not in stage2_shapes or np.shape(v) != shape(stage2_shapes[k2])]
  if problems:
    raise ValueError("Stage 1 params do not fit the Stage 2 tree:\n  " + "\n  ".join(problems[:20]))
  new = sorted(set(stage2_shapes) - set(mapped))
  partial = dict(mapped)
  if init == "preserving":
    for k in new:
      if _LAYER.match(k) and k.split("/", 1)[1] in _ZEROED_IN_PRESERVING:
        partial[k] = np.zeros(shape(stage2_shapes[k]), np.float32)
  return partial, sorted(mapped), new


def stage2_params_from_stage1(stage1_params, stage2_init_params, init: str = "preserving"):
  """Merges Stage 1 params into a freshly initialised Stage 2 tree.

  Every Stage 1 param is restored (layers renumbered i -> 2i+1); the even layers, the even taps' highways and
  `fusion_open` are new. init="paper": the new params keep their fresh init (fusion_open = 1: the paper's fusion);
  init="preserving": the new layers' `out`, `ffn_out` and `fusion_open` are zeroed so the model equals Stage 1.
  Returns (params, restored_keys, new_keys) with Stage 2 names.
  """
  flat2 = tree_lib.flatten(stage2_init_params)
  partial, restored, new = stage2_partial_from_stage1(stage1_params, flat2, init)
  out = dict(flat2)
  out.update({k: jnp.asarray(v, flat2[k].dtype) for k, v in partial.items()})
  return tree_lib.unflatten(out), restored, new


def param_count(config: AptExpertConfig) -> dict:
  """Hand-computed parameter counts of the expert's parts (for the full-size shape test)."""
  c, e = config, config.expert_variant
  w, dv, ad = e.width, c.vlm_config.width, c.action_dim
  dense = lambda i, o: i * o + o
  layer = (dense(w, 3 * w) + dense(w, w) + dense(w, e.mlp_ratio * w) + dense(e.mlp_ratio * w, w)
           + 2 * w + 2 * dense(w, 3 * w) + 2 * e.head_dim)
  new_layers = e.depth // 2 if c.apt_stage == "stage2" else 0
  num_taps = len({c.tap_index(i) for i in range(c.num_layers)})
  token_mlp = lambda i: dense(i, w) + 2 * w + dense(w, w)
  out = {
      "attention_layers": c.num_layers * layer + new_layers * w,
      "context_encoder": dense(dv, w) + num_taps * dense(dv, w),
      "gate": e.depth * w,
      "time_mlp": 2 * dense(w, w),
      "token_mlps": token_mlp(c.action_dim) + token_mlp(ad),
      "output": w + dense(w, ad),
  }
  out["head_total"] = sum(out.values())
  return out
