"""The largest buffers, read back from XLA's dump of a program whose buffers are known by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apt_jax.tools import memory_report


def sin_gram(x):
  return jnp.sin(x) @ x.T


def test_buffers_of_a_hand_sized_program(tmp_path):
  x = np.ones((512, 256), np.float32)
  compiled = jax.jit(sin_gram).lower(x).compile(compiler_options=memory_report.compiler_options(tmp_path))
  rows = memory_report.largest_buffers(tmp_path, top=3)
  # f32: the [512, 512] output, the [512, 256] input, and sin(x) [512, 256], the one temporary the matmul reads.
  assert [(r["bytes"], r["kind"], r["shapes"]) for r in rows] == [
      (512 * 512 * 4, "output", ["f32[512,512]"]),
      (512 * 256 * 4, "parameter 0", ["f32[512,256]"]),
      (512 * 256 * 4, "temp", ["f32[512,256]"])]
  assert rows[2]["bytes"] == compiled.memory_analysis().temp_size_in_bytes
  assert rows[2]["ops"] == ["sin"] and rows[0]["ops"] == ["dot_general"]
  assert memory_report.largest_buffers(tmp_path, top=3, module="sin_gram") == rows


def test_a_directory_without_the_dump_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="buffer-assignment"):
    memory_report.largest_buffers(tmp_path)
