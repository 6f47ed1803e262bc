"""Training objectives and samplers of the action heads: flow matching (two time conventions) and DDIM.

An objective corrupts actions at a time it draws (`sample_time`, `training_inputs`), scores the head's prediction
(`loss`) and samples by calling the head's `denoise(x_t, net_time) -> prediction [B, AH, AD]` (`sample`). `net_time`
[B] is what the head embeds:

  objective              prediction     net_time                                     sampler (default steps)
  FlowMatching("pi0")    u = ε − a      t ∈ (0, 1], t=1 noise (openpi)               Euler 1 → 0 (10)
  FlowMatching("gr00t")  v = a − ε      bucket ⌊t·1000⌋, t=1 data (GR00T N1.5)       Euler 0 → 1 (4)
  Ddim                   ε              step k ∈ {0..T−1}, k large = noisy (APT)      DDIM, η=0 (20)

Letters: B batch (*b: any batch shape), AH action horizon, AD action dim, T diffusion steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]
ObjectiveName = Literal["flow", "ddim"]
FlowConvention = Literal["pi0", "gr00t"]
DdimLoss = Literal["l1", "l2"]


def group_weights(loss_weights: Sequence[tuple[int, float]], action_dim: int) -> np.ndarray:
  """Per-dimension weights [AD] so that Σ_d w_d·e_d = Σ_g weight_g · mean_{d∈g} e_d.

  loss_weights: ((num_dims, weight), ...) covering the leading dims in order; dims after the last group get weight 0
  (padding, e.g. LIBERO's 7 real dims inside action_dim 32). Empty: one group over all dims with weight 1 (a mean).
  """
  if not loss_weights:
    return np.full((action_dim,), 1.0 / action_dim, np.float32)
  w = np.zeros((action_dim,), np.float32)
  start = 0
  for group in loss_weights:
    n, weight = int(group[0]), float(group[1])
    if n <= 0:
      raise ValueError(f"loss_weights group {tuple(group)} must have a positive number of dims")
    if start + n > action_dim:
      raise ValueError(f"loss_weights {loss_weights} cover {start + n} dims > action_dim {action_dim}")
    w[start:start + n] = weight / n
    start += n
  return w


def normalize_loss_weights(loss_weights) -> tuple:
  """ml_collections/JSON lists -> a hashable tuple of (num_dims, weight) pairs."""
  return tuple((int(g[0]), float(g[1])) for g in (loss_weights or ()))


@dataclasses.dataclass(frozen=True)
class FlowMatching:
  """Rectified-flow matching with openpi's ("pi0") or GR00T's ("gr00t") time convention; MSE loss.

  pi0 (openpi): t = Beta(1.5, 1)·0.999 + 0.001, x_t = t·ε + (1−t)·a.
  gr00t (`flow_matching_action_head.py`): t = (s − Beta(1.5, 1))/s with s = 0.999, so t ∈ [−0.001, 1] with most mass
  near 0 (noise); x_t = (1−t)·ε + t·a; the network sees ⌊t·1000⌋ (truncated toward zero, as torch's `.long()`).
  Sampling at t_i = i/K; GR00T's buckets int(t_i·1000) are computed in float64, as its Python loop does.
  """

  convention: FlowConvention = "pi0"
  num_steps: int | None = None  # None: 10 for "pi0", 4 for "gr00t".
  beta_alpha: float = 1.5
  beta_beta: float = 1.0
  noise_s: float = 0.999  # GR00T's `noise_s`; openpi's 0.999 scale + 0.001 offset.
  num_buckets: int = 1000  # GR00T's `num_timestep_buckets`.

  def __post_init__(self):
    if self.convention not in get_args(FlowConvention):
      raise ValueError(f"flow convention {self.convention!r}; expected one of {get_args(FlowConvention)}")

  @property
  def default_steps(self) -> int:
    if self.num_steps is not None:
      return self.num_steps
    return 10 if self.convention == "pi0" else 4

  def sample_time(self, rng, batch_shape) -> jax.Array:
    """The continuous t of this convention [*b]."""
    b = jax.random.beta(rng, self.beta_alpha, self.beta_beta, batch_shape)
    if self.convention == "pi0":
      return b * 0.999 + 0.001
    return (self.noise_s - b) / self.noise_s

  def net_time(self, t) -> jax.Array:
    if self.convention == "pi0":
      return t
    return jnp.trunc(t * self.num_buckets)

  def training_inputs(self, actions, noise, time):
    """actions, noise [*b, AH, AD]; time: the continuous t [*b] -> (x_t, net_time [*b], target)."""
    t = time[..., None, None]
    if self.convention == "pi0":
      return t * noise + (1 - t) * actions, self.net_time(time), noise - actions
    return (1 - t) * noise + t * actions, self.net_time(time), actions - noise

  def loss(self, prediction, target) -> jax.Array:
    """MSE over AD -> [*b, AH]."""
    return jnp.mean(jnp.square(prediction - target), axis=-1)

  def sample(self, denoise: Denoiser, noise, num_steps: int | None = None) -> jax.Array:
    """Euler integration from noise to data with `num_steps` uniform steps."""
    k = num_steps or self.default_steps
    batch = noise.shape[0]
    if self.convention == "pi0":
      times = np.array([1.0 - i / k for i in range(k)], np.float32)
      dt = -1.0 / k
    else:
      times = np.array([int(i / k * self.num_buckets) for i in range(k)], np.float32)  # Buckets, as GR00T.
      dt = 1.0 / k

    def body(i, x):
      v = denoise(x, jnp.broadcast_to(jnp.asarray(times)[i], (batch,)))
      return x + dt * v.astype(x.dtype)

    return jax.lax.fori_loop(0, k, body, noise)


def squaredcos_cap_v2_alphas_cumprod(diffusion_steps: int, max_beta: float = 0.999) -> np.ndarray:
  """ᾱ_k, k = 0..T−1, of diffusers' `betas_for_alpha_bar` with the cosine schedule (Nichol & Dhariwal)."""
  alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  betas = np.array([min(1 - alpha_bar((i + 1) / diffusion_steps) / alpha_bar(i / diffusion_steps), max_beta)
                    for i in range(diffusion_steps)], np.float64)
  return np.cumprod(1.0 - betas)


@dataclasses.dataclass(frozen=True)
class Ddim:
  """DDPM training with ε-prediction, deterministic DDIM sampling (the APT paper's head, diffusers' `DDIMScheduler`).

  Training: k uniform over {0..T−1}, x_k = √ᾱ_k·a + √(1−ᾱ_k)·ε with `squaredcos_cap_v2` betas; the L1 loss is
  group-weighted (APT: 30·L1(pos) + 10·L1(rot6d) + 10·L1(gripper)). Sampling: diffusers' defaults ("leading" spacing,
  steps_offset 0, set_alpha_to_one=True, η=0) with clip_sample=False: k = 95, 90, …, 0 for 20 steps.
  NB: DDIM needs E[ε | x_k], but an L1 loss trains the per-dimension posterior *median*. For multimodal actions the
  two differ and the samples are biased: on the 2-D mixture of tests/heads (weights 0.3 / 0.7) the L1-optimal
  denoiser moves the sample mean 0.35 toward the heavier mode (objectives_test.py); `ddim_loss="l2"` (DDPM's usual
  loss) has no such bias.
  """

  action_dim: int
  diffusion_steps: int = 100  # T
  num_steps: int | None = None  # None: 20.
  loss_weights: tuple = ()
  ddim_loss: DdimLoss = "l1"  # the paper: L1

  def __post_init__(self):
    if self.ddim_loss not in get_args(DdimLoss):
      raise ValueError(f"ddim_loss={self.ddim_loss!r}; expected 'l1' (the paper) or 'l2'")
    group_weights(self.loss_weights, self.action_dim)  # Fails on groups that do not fit, naming them.

  @property
  def default_steps(self) -> int:
    return self.num_steps or 20

  @property
  def alphas_cumprod(self) -> np.ndarray:
    return squaredcos_cap_v2_alphas_cumprod(self.diffusion_steps).astype(np.float32)

  def sample_time(self, rng, batch_shape) -> jax.Array:
    """The integer step k [*b]."""
    return jax.random.randint(rng, batch_shape, 0, self.diffusion_steps)

  def training_inputs(self, actions, noise, time):
    """actions, noise [*b, AH, AD]; time: the integer step k [*b] -> (x_k, net_time = k as float, target = ε)."""
    ac = jnp.asarray(self.alphas_cumprod)[time][..., None, None]
    x = jnp.sqrt(ac) * actions + jnp.sqrt(1 - ac) * noise
    return x, jnp.asarray(time, jnp.float32), noise

  def loss(self, prediction, target) -> jax.Array:
    """Group-weighted L1 (or squared error) over AD -> [*b, AH]."""
    w = jnp.asarray(group_weights(self.loss_weights, self.action_dim))
    err = jnp.abs(prediction - target) if self.ddim_loss == "l1" else jnp.square(prediction - target)
    return jnp.sum(err * w, axis=-1)

  def timesteps(self, num_steps: int | None = None) -> np.ndarray:
    """diffusers' "leading" spacing: (arange(S) · T//S) reversed."""
    s = num_steps or self.default_steps
    if not 0 < s <= self.diffusion_steps:
      raise ValueError(f"DDIM num_steps={s} must be in [1, {self.diffusion_steps}]")
    return (np.arange(s) * (self.diffusion_steps // s))[::-1].astype(np.int32)

  def sample(self, denoise: Denoiser, noise, num_steps: int | None = None) -> jax.Array:
    steps = self.timesteps(num_steps)
    ratio = self.diffusion_steps // len(steps)
    ac = self.alphas_cumprod
    a_t = ac[steps]
    a_prev = np.array([ac[k - ratio] if k - ratio >= 0 else 1.0 for k in steps], np.float32)  # set_alpha_to_one.
    steps, a_t, a_prev = (jnp.asarray(x) for x in (steps, a_t, a_prev))
    batch = noise.shape[0]

    def body(i, x):
      eps = denoise(x, jnp.broadcast_to(steps[i].astype(jnp.float32), (batch,))).astype(x.dtype)
      x0 = (x - jnp.sqrt(1 - a_t[i]) * eps) / jnp.sqrt(a_t[i])  # clip_sample=False
      return jnp.sqrt(a_prev[i]) * x0 + jnp.sqrt(1 - a_prev[i]) * eps

    return jax.lax.fori_loop(0, len(steps), body, noise)


Objective = FlowMatching | Ddim
