"""The AOT check compiles the train step from shapes and reports per-device memory."""

from apt_jax import configs
from apt_jax.tools import aot_check


def test_aot_check_compiles_from_shapes_and_fsdp_shrinks_per_device_params():
  config = configs.load(configs.REPO_ROOT / "experiments" / "debug.py", "joint")
  config.mesh.fsdp_devices = 4
  config.mesh.min_fsdp_mbytes = 0.0
  out = aot_check.aot_check(config)
  assert out["mesh"] == {"data": 2, "fsdp": 4}
  assert out["params"] == out["trainable_params"] > 0  # joint: nothing frozen
  assert out["memory_analysis_GiB"]["argument_size_in_bytes"] >= 0
  # Under FSDP over 4 devices each device holds well under the replicated total (small arrays stay replicated).
  for k in ("params", "optimizer"):
    assert out["per_device_bytes"][k] < 0.5 * out["replicated_bytes"][k], k
