"""Objectives: the cosine schedule, DDIM timesteps, loss weights, time conventions, and the samplers driven by the
exact denoiser of a 2-D Gaussian mixture (so sampler errors are not hidden by training noise)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apt_jax.models import objectives

# A known 2-D mixture ("actions" with AH = 1, AD = 2).
WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[-1.5, 0.5], [1.0, -0.8]])
COVS = np.array([[[0.10, 0.03], [0.03, 0.05]], [[0.06, -0.02], [-0.02, 0.12]]])


def mixture_moments():
  mean = WEIGHTS @ MEANS
  second = sum(w * (c + np.outer(m, m)) for w, m, c in zip(WEIGHTS, MEANS, COVS))
  return mean, second - np.outer(mean, mean)


def sample_mixture(rng, n):
  comp = rng.choice(2, size=n, p=WEIGHTS)
  chol = np.linalg.cholesky(COVS)
  return (MEANS[comp] + np.einsum("nij,nj->ni", chol[comp], rng.normal(size=(n, 2)))).astype(np.float32)


def posterior_means(x, alpha, sigma):
  """E[a | x] and E[ε | x] for x = α·a + σ·ε, a ~ mixture, ε ~ N(0, I). x [N, 2]; α, σ scalars."""
  eye = jnp.eye(2)
  cs = alpha**2 * COVS + sigma**2 * eye                               # [M, 2, 2]
  cinv = jnp.linalg.inv(cs)
  d = x[:, None, :] - alpha * MEANS[None]                             # [N, M, 2]
  maha = jnp.einsum("nmi,mij,nmj->nm", d, cinv, d)
  logw = jnp.log(WEIGHTS) - 0.5 * maha - 0.5 * jnp.log(jnp.linalg.det(cs))
  w = jax.nn.softmax(logw, axis=-1)
  cinv_d = jnp.einsum("mij,nmj->nmi", cinv, d)
  e_a = MEANS[None] + alpha * jnp.einsum("mij,nmj->nmi", COVS, cinv_d)
  e_eps = sigma * cinv_d
  return jnp.einsum("nm,nmi->ni", w, e_a), jnp.einsum("nm,nmi->ni", w, e_eps)


def posterior_median_eps(x, alpha, sigma, iters=60):
  """Per-dimension median of ε | x (what an L1 ε-loss converges to), by bisection on the mixture's marginal CDF."""
  cs = alpha**2 * COVS + sigma**2 * jnp.eye(2)
  cinv = jnp.linalg.inv(cs)
  d = x[:, None, :] - alpha * MEANS[None]
  logw = (jnp.log(WEIGHTS) - 0.5 * jnp.einsum("nmi,mij,nmj->nm", d, cinv, d)
          - 0.5 * jnp.log(jnp.linalg.det(cs)))
  w = jax.nn.softmax(logw, axis=-1)[..., None]                                  # [N, M, 1]
  mu = sigma * jnp.einsum("mij,nmj->nmi", cinv, d)                              # E[ε | x, m]
  sd = jnp.sqrt(jnp.maximum(1 - sigma**2 * jnp.diagonal(cinv, axis1=1, axis2=2), 1e-12))[None]
  lo, hi = jnp.full(x.shape, -20.0), jnp.full(x.shape, 20.0)
  for _ in range(iters):
    mid = (lo + hi) / 2
    below = jnp.sum(w * jax.scipy.stats.norm.cdf((mid[:, None] - mu) / sd), axis=1) < 0.5
    lo, hi = jnp.where(below, mid, lo), jnp.where(below, hi, mid)
  return (lo + hi) / 2


def exact_denoiser(objective):
  """The optimal prediction of `objective` for the mixture, as a `denoise(x_t [N, 1, 2], net_time [N])`."""
  if isinstance(objective, objectives.Ddim):
    ac = jnp.asarray(objective.alphas_cumprod)

    def denoise(x, k):
      a = ac[k[0].astype(jnp.int32)]
      return posterior_means(x[:, 0], jnp.sqrt(a), jnp.sqrt(1 - a))[1][:, None]
  elif objective.convention == "pi0":
    def denoise(x, t):
      e_a, e_eps = posterior_means(x[:, 0], 1 - t[0], t[0])
      return (e_eps - e_a)[:, None]
  else:
    def denoise(x, bucket):
      t = bucket[0] / objective.num_buckets
      e_a, e_eps = posterior_means(x[:, 0], t, 1 - t)
      return (e_a - e_eps)[:, None]
  return denoise


def ddim_median_target_moments(num_samples=20000):
  """Mean and covariance of DDIM-20 samples driven by the L1-optimal (posterior-median) ε: what a head trained with
  the paper's L1 loss converges to."""
  d = objectives.Ddim(action_dim=2)
  ac = jnp.asarray(d.alphas_cumprod)

  def denoise(x, k):
    a = ac[k[0].astype(jnp.int32)]
    return posterior_median_eps(x[:, 0], jnp.sqrt(a), jnp.sqrt(1 - a))[:, None]

  noise = jax.random.normal(jax.random.key(0), (num_samples, 1, 2))
  s = np.asarray(jax.jit(lambda n: d.sample(denoise, n))(noise))[:, 0]
  return s.mean(0), np.cov(s.T)


def test_squaredcos_schedule_telescopes():
  """ᾱ_k = f((k+1)/T)/f(0), f(t) = cos²((t+0.008)/1.008·π/2), until the last β is capped at 0.999."""
  T = 100
  ac = objectives.squaredcos_cap_v2_alphas_cumprod(T)
  f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  np.testing.assert_allclose(ac[:-1], [f((k + 1) / T) / f(0) for k in range(T - 1)], rtol=1e-10)
  np.testing.assert_allclose(ac[-1], ac[-2] * 0.001, rtol=1e-10)
  assert np.all(np.diff(ac) < 0) and 0.999 < ac[0] < 1


def test_ddim_timesteps_are_diffusers_leading():
  d = objectives.Ddim(action_dim=2)
  np.testing.assert_array_equal(d.timesteps(), np.arange(95, -1, -5))
  np.testing.assert_array_equal(d.timesteps(10), np.arange(90, -1, -10))
  with pytest.raises(ValueError):
    d.timesteps(101)


def test_group_weighted_l1():
  """30·L1(pos) + 10·L1(rot6d) + 10·L1(gripper), padding dims ignored."""
  d = objectives.Ddim(action_dim=12, loss_weights=((3, 30.0), (6, 10.0), (1, 10.0)))
  err = np.random.default_rng(0).normal(size=(2, 5, 12)).astype(np.float32)
  want = (30 * np.abs(err[..., :3]).mean(-1) + 10 * np.abs(err[..., 3:9]).mean(-1) + 10 * np.abs(err[..., 9]))
  np.testing.assert_allclose(d.loss(err, np.zeros_like(err)), want, rtol=1e-5)
  np.testing.assert_allclose(objectives.Ddim(action_dim=12).loss(err, 0 * err), np.abs(err).mean(-1), rtol=1e-6)
  with pytest.raises(ValueError, match="cover"):
    objectives.Ddim(action_dim=12, loss_weights=((8, 1.0), (8, 1.0)))


def test_flow_conventions():
  a = np.ones((3, 2, 2), np.float32)
  e = -np.ones_like(a)
  pi0 = objectives.FlowMatching("pi0")
  x, _, target = pi0.training_inputs(a, e, jnp.array([1.0, 0.5, 0.0]))
  np.testing.assert_allclose(x[:, 0, 0], [-1, 0, 1])  # t=1 is noise
  np.testing.assert_allclose(target, e - a)
  gr = objectives.FlowMatching("gr00t")
  x, bucket, target = gr.training_inputs(a, e, jnp.array([1.0, 0.5, 0.0004]))
  np.testing.assert_allclose(x[:, 0, 0], [1, 0, -0.9992])  # t=1 is data
  np.testing.assert_array_equal(bucket, [1000, 500, 0])
  np.testing.assert_allclose(target, a - e)
  t = gr.sample_time(jax.random.key(1), (20000,))
  assert float(t.min()) >= -0.001 and float(t.max()) <= 1.0 and float(jnp.mean(t < 0.5)) > 0.6  # mass near noise
  t = pi0.sample_time(jax.random.key(1), (20000,))
  assert float(t.min()) >= 0.001 and float(jnp.mean(t > 0.5)) > 0.6
  assert pi0.default_steps == 10 and gr.default_steps == 4


def test_ddim_training_inputs():
  d = objectives.Ddim(action_dim=2)
  a, e = np.ones((2, 1, 2), np.float32), np.full((2, 1, 2), 2.0, np.float32)
  x, k, target = d.training_inputs(a, e, jnp.array([0, 99]))
  ac = d.alphas_cumprod
  np.testing.assert_allclose(x[:, 0, 0], np.sqrt(ac[[0, 99]]) + 2 * np.sqrt(1 - ac[[0, 99]]), rtol=1e-6)
  np.testing.assert_array_equal(k, [0.0, 99.0])
  np.testing.assert_array_equal(target, e)


def moments_error(samples):
  """-> (max |mean error|, ‖cov error‖_F / ‖cov‖_F) against the mixture."""
  mean, cov = mixture_moments()
  return np.abs(samples.mean(0) - mean).max(), np.linalg.norm(np.cov(samples.T) - cov) / np.linalg.norm(cov)


# Few-step samplers under-disperse this well-separated bimodal target (a discretisation bias, not a bug: every
# sampler converges with 100 steps), so the default-step tolerances are wider.
SAMPLER_CASES = {
    "ddim_20": (objectives.Ddim(action_dim=2), None, 0.03, 0.07),
    "ddim_100": (objectives.Ddim(action_dim=2), 100, 0.03, 0.035),
    "flow_pi0_10": (objectives.FlowMatching("pi0"), None, 0.06, 0.15),
    "flow_pi0_100": (objectives.FlowMatching("pi0"), 100, 0.03, 0.035),
    "flow_gr00t_4": (objectives.FlowMatching("gr00t"), None, 0.12, 0.35),
    "flow_gr00t_100": (objectives.FlowMatching("gr00t"), 100, 0.03, 0.035),
}


@pytest.mark.parametrize("case", SAMPLER_CASES)
def test_samplers_with_the_exact_denoiser_recover_the_mixture(case):
  objective, steps, mean_tol, cov_tol = SAMPLER_CASES[case]
  noise = jax.random.normal(jax.random.key(0), (20000, 1, 2))
  samples = np.asarray(jax.jit(lambda n: objective.sample(exact_denoiser(objective), n, steps))(noise))[:, 0]
  mean_err, cov_err = moments_error(samples)
  assert mean_err < mean_tol and cov_err < cov_tol, (mean_err, cov_err)


def test_l1_optimal_ddim_is_biased_toward_the_heavier_mode():
  """The paper trains ε with an L1 loss, whose optimum is the posterior median, but DDIM assumes the mean: on this
  mixture (weights 0.3 / 0.7) the L1-optimal sampler over-weights the heavier mode (a property of the objective)."""
  mean, cov = ddim_median_target_moments()
  true_mean, true_cov = mixture_moments()
  heavy = MEANS[1]
  assert np.linalg.norm(mean - heavy) < np.linalg.norm(true_mean - heavy) - 0.3
  assert np.trace(cov) < 0.85 * np.trace(true_cov)
