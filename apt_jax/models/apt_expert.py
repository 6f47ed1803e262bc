"""The APT paper's own action expert (layer-wise gated fusion), adapted to a PaliGemma backbone, with both stages.

The expert self-attends over [VL stream ; action stream] (paper §1.3). The VL stream starts as the VLM's input
embeddings and, after every layer, is mixed with one VLM hidden state ("tap") through a sigmoid gate (§1.4); the action
stream is [state token ; AH noisy action tokens], conditioned on the diffusion time through AdaRMSNorm (π0.5's adaRMS,
modulation zero at init). Objective: the paper's DDIM by default, or flow matching in π0's convention.
Stage 1 trains N/2 `dilated` layers (actions see vision, not language) on the odd taps without a prompt; Stage 2
interleaves N/2 new `full` layers on the even taps (AptExpertConfig). Left out: PRoPE (our observations carry no
camera poses: RoPE on every head channel instead), end-effector position encodings, arm ids and action history (the
robot state is the one history token).

Letters: B batch, V VL tokens, A action-stream tokens (1 + AH), T = V + A, W expert width, N heads, H head dim,
Dv VLM width, AH/AD action horizon/dim.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Literal, get_args

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from apt_jax.models import gemma as _gemma
from apt_jax.models import layers
from apt_jax.models import model as _model
from apt_jax.models import objectives
from apt_jax.models import variants as _variants
from apt_jax.models import vlm as _vlm

VISION, LANGUAGE, ACTION = 0, 1, 2
Stage2Init = Literal["preserving", "paper"]
_LAYER = re.compile(r"^layer_(\d+)/")
_ZEROED_IN_PRESERVING = ("out/kernel", "out/bias", "ffn_out/kernel", "ffn_out/bias", "fusion_open")


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
  return tuple(math.floor((j + 1) * vlm_depth / num_taps + 0.5) for j in range(num_taps))


@dataclasses.dataclass(frozen=True)
class AptExpertConfig(_model.VlaHeadConfig):
  """The paper's expert. Defaults: base size (768 / 12 heads, 20 layers), Ta = 32, DDIM, gemma_2b + So400m/14.

  Stages (N = `expert_variant.depth`, the Stage 2 depth, one VLM tap per layer):
    "stage1"  N/2 layers, all `dilated`; layer i fuses tap 2i+1. The prompt is dropped from the VLM and the expert,
              numerically the same as the paper's masking (nothing downstream of a vision or action token sees it).
    "stage2"  N layers: Stage 1 layer i becomes layer 2i+1 (`dilated`, tap 2i+1); new `full` layers take the even
              places (tap 2i) and mix their fused stream in through `fusion_open` [W]: vl <- vl + open ⊙ (fused − vl).
    "none"    N `full` layers, layer i fuses tap i (the one-stage baseline).
  """

  action_horizon: int = 32
  objective: objectives.ObjectiveName = "ddim"
  expert_variant: Any = "base"
  # Indices into [input embeddings, layer 1 .. L outputs] of the VLM (the paper taps Qwen3-VL). None: default_taps,
  # spread over depth and ending at the last layer.
  vlm_taps: Any = None
  # Stage 2's new params from Stage 1 (train.py `init_from`):
  #   "paper"       fresh, open = 1: the paper's fusion. (Its loader also re-initialises every Stage 1 param but the
  #                 attention layers; we keep them all.)
  #   "preserving"  the new layers' output projections (`out`, `ffn_out`) and `open` start at 0: the new layers are
  #                 the identity and the model equals Stage 1 at init.
  stage2_init: Stage2Init = "preserving"

  # Stage 2's new layers take the even places, with the highways of the even taps.
  stage2_new_params_regex = r"(layer|highway)_\d*[02468]/.*"

  def __post_init__(self):
    super().__post_init__()
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("expert_variant", get_expert_config(self.expert_variant))
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
    _model.check_choice(self, "stage2_init", get_args(Stage2Init))

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

  def stage2_name(self, stage1_key: str) -> str:
    """Stage 1 layer i is Stage 2 layer 2i+1; every other name is unchanged."""
    return _LAYER.sub(lambda m: f"layer_{2 * int(m.group(1)) + 1}/", stage1_key)

  def stage2_zeroed(self, key: str) -> bool:
    return (self.stage2_init == "preserving" and _LAYER.match(key) is not None
            and key.split("/", 1)[1] in _ZEROED_IN_PRESERVING)

  def module(self) -> AptExpertModule:
    return AptExpertModule(self)

  def model_class(self):
    return AptExpert


# --- Layers ------------------------------------------------------------------------------------------------------


def sinusoidal_pos_emb(x, dim: int, temperature: float = 10000.0):
  """BayesVLA/APT `SinusoidalPosEmb`: [sin, cos] of x·temperature^(−j/(half−1)). x [...] -> [..., dim]."""
  half = dim // 2
  return layers.sinusoidal_embedding(x, jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(temperature) /
                                                                                       (half - 1))))


def rms_normalize(x, eps: float = 1e-6):
  """Parameter-free RMS normalisation in float32 (for projecting raw Gemma residual streams)."""
  x = x.astype(jnp.float32)
  return x * jnp.reciprocal(jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps))


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
    y = layers.dot_product_attention(q, k, v, mask[:, None], c.num_heads)
    y = nn.Dense(c.width, dtype=self.dtype, name="out")(y.reshape(*y.shape[:2], c.width))
    vl, act = residual(vl, act, y, act_gate)

    # Feed-forward.
    x, act_gate = split_norm("ffn_norm", vl, act)
    y = nn.gelu(nn.Dense(c.mlp_ratio * c.width, dtype=self.dtype, name="ffn_in")(x))
    y = nn.Dense(c.width, dtype=self.dtype, name="ffn_out")(y)
    vl, act = residual(vl, act, y, act_gate)

    # Gated fusion of this layer's VLM tap into the VL stream (the paper's convex mix; g = 0.5 at init). After the
    # last layer it is dead, as in the paper: only action tokens are read out.
    g = jax.nn.sigmoid(gate_logit.astype(jnp.float32))
    fused = (g * vl + (1 - g) * highway).astype(vl.dtype)
    if self.new_in_stage2:
      # "preserving" starts open (and this layer's output projections) at 0: the new layer is then the identity.
      fusion_open = self.param("fusion_open", nn.initializers.ones_init(), (c.width,))
      fused = vl + (fusion_open * (fused - vl)).astype(vl.dtype)
    return fused, act


# --- The head ----------------------------------------------------------------------------------------------------


class AptExpertModule(_model.VlaHeadModule):
  config: AptExpertConfig

  def setup(self):
    c = self.config
    e = c.expert_variant
    self.PaliGemma = _vlm.from_config(c, return_hidden_states=True)
    self.vl_in = nn.Dense(e.width, dtype=c.dtype)
    self.highway = {str(j): nn.Dense(e.width, dtype=c.dtype) for j in self.tap_indices()}
    self.gate = self.param("gate", nn.initializers.zeros_init(), (e.depth, e.width))
    self.time_mlp_in = nn.Dense(e.width, dtype=c.dtype)
    self.time_mlp_out = nn.Dense(e.width, dtype=c.dtype)
    self.state_in = TokenMlp(e.width, c.dtype)
    self.action_in = TokenMlp(e.width, c.dtype)
    expert_layer = layers.remat(ExpertLayer, c.remat_policy)
    self.layer = [expert_layer(e, c.dtype, new_in_stage2=c.is_new_stage2_layer(i)) for i in range(c.num_layers)]
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
    prefix = self.PaliGemma.embed_prefix(obs, with_language=with_language, language_block=c.language_block)
    hidden = self.PaliGemma.hidden_states(prefix)  # [L+1, B, V, Dv]; hidden[0] == prefix.tokens
    if c.stop_vlm_gradient:
      hidden = jax.lax.stop_gradient(hidden)
    # Gemma's residual stream grows with depth (embeddings are scaled by √D): normalise what the projections read.
    vl0 = self.vl_in(rms_normalize(hidden[0]).astype(c.dtype))
    highways = {j: self.highway[j](rms_normalize(hidden[c.vlm_taps[int(j)]]).astype(c.dtype))
                for j in self.highway}
    return {"vl0": vl0, "highways": highways, "mask": prefix.mask,
            "is_lang": jnp.broadcast_to(jnp.asarray(prefix.is_lang), prefix.mask.shape)}

  # --- Masks and positions ----------------------------------------------------------------------------------------

  @staticmethod
  def masks_and_positions(vl_mask, is_lang, num_action_tokens: int):
    """-> (full [B, T, T], dilated [B, T, T], positions [B, T]) over [VL ; action] (the paper's
    `prepare_attention_mask`).

    full:     every query sees the valid VL keys; action queries also see the action keys, VL queries never do (the
              VL stream does not depend on the noisy actions).
    dilated:  full, minus vision/action -> language and language -> vision/action: language attends to language only,
              the actions see only vision and actions (the VA prior).
    RoPE positions keep the prior independent of the prompt: every vision token has id 0 (the paper gives all image
    tokens one id), the action stream 1 .. A, and the prompt tokens follow after it.
    """
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


@flax.struct.dataclass
class AptExpert(_model.BaseModel):
  """The APT expert model: `config` + `params`; compute_loss / sample_actions from BaseModel."""

