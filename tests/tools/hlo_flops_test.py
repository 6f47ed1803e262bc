"""hlo_flops counts matmul FLOPs of compiled programs, loops unrolled by their trip counts."""

import jax
import jax.numpy as jnp

from apt_jax.tools import hlo_flops

L, M, K = 6, 32, 48


def _compile(fn, *shapes):
  return jax.jit(fn).lower(*(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes)).compile()


def _scan_matmuls(w, x):
  """L layers of tanh(x @ w_l), x [M, K], w [L, K, K]: L · 2·M·K·K FLOPs."""
  return jax.lax.scan(lambda x, w: (jnp.tanh(x @ w), None), x, w)[0].sum()


def test_scanned_matmuls_count_every_iteration():
  compiled = _compile(_scan_matmuls, (L, K, K), (M, K))
  result = hlo_flops.count(compiled.as_text())
  assert result.flops == L * 2 * M * K * K
  assert [loop["trip_count"] for loop in result.loops] == [L]
  # XLA's own cost analysis counts the loop body once: the reason this module exists.
  assert compiled.cost_analysis()["flops"] < L * 2 * M * K * K / (L - 1)


def test_gradient_of_scanned_matmuls_is_three_times_the_forward():
  # Per layer: forward x@w, backward dW = xᵀ·g and dX = g·wᵀ (dX also for layer 0: the loop body is uniform).
  compiled = _compile(jax.grad(_scan_matmuls), (L, K, K), (M, K))
  assert hlo_flops.count(compiled.as_text()).flops == 3 * L * 2 * M * K * K


def test_loop_free_program_matches_xla_cost_analysis():
  """Without loops XLA's count is the truth: a batched einsum and a strided, padded, grouped convolution."""
  def f(a, b, img, kernel):
    return (jnp.einsum("bts,bsh->bth", a, b),
            jax.lax.conv_general_dilated(img, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=2))
  compiled = _compile(f, (3, 7, 5), (3, 5, 9), (2, 15, 15, 4), (3, 3, 2, 6))
  assert hlo_flops.count(compiled.as_text()).flops == compiled.cost_analysis()["flops"]


def test_a_loop_with_a_float_condition_is_reported_and_takes_the_default_count():
  def f(w, x, t0):  # t0 is an input, so XLA cannot work the trip count out
    def body(carry):
      x, t = carry
      return jnp.tanh(x @ w), t - 0.25
    return jax.lax.while_loop(lambda c: c[1] > 0.1, body, (x, t0))[0]
  text = _compile(f, (K, K), (M, K), ()).as_text()
  once, four = hlo_flops.count(text), hlo_flops.count(text, default_trip_count=4)
  assert once.flops == 2 * M * K * K and four.flops == 4 * 2 * M * K * K
  assert len(four.unresolved_loops) == 1 and four.loops[0]["from"] == "unresolved"


def test_tpu_windowed_einsum_loop_and_batched_matmul_convolutions(libtpu):
  """On TPU an FSDP matmul becomes a collective-matmul loop stepping by 2, and batched matmuls become convolutions
  whose spatial labels are out of order (dim_labels=1b0f_0io1->1bf0): both counted exactly."""
  import numpy as np
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  from apt_jax.tools import tpu

  mesh = Mesh(np.array(tpu.topology_devices(tpu.parse_topology("v5e:2x4"))).reshape(1, 8), ("data", "fsdp"))
  b, t, d, f = 64, 256, 2048, 4096
  x = jax.ShapeDtypeStruct((b, t, d), jnp.bfloat16, sharding=NamedSharding(mesh, P(("data", "fsdp"))))
  w = jax.ShapeDtypeStruct((d, f), jnp.bfloat16, sharding=NamedSharding(mesh, P("fsdp", None)))
  result = hlo_flops.count(jax.jit(lambda x, w: x @ w).lower(x, w).compile().as_text())
  assert result.flops * 8 == 2 * b * t * d * f
  assert [(loop["trip_count"], loop["from"]) for loop in result.loops] == [(2, "condition i < N")]
