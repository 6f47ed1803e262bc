"""The AOT check compiles the train step from shapes on a fake CPU mesh (TPU topologies: tests/tools)."""

from apt_jax import configs
from apt_jax.tools import aot_check


def test_aot_check_compiles_from_shapes_and_fsdp_shrinks_per_device_params():
  config = configs.load(configs.REPO_ROOT / "experiments" / "debug.py", "joint")
  config.mesh.fsdp_devices = 4
  config.mesh.min_fsdp_mbytes = 0.0
  out = aot_check.aot_check(config, serving=False, memory_report=4)
  assert out["mesh"] == {"dcn": 1, "data": 2, "fsdp": 4}
  assert out["params"] == out["trainable_params"] > 0  # joint: nothing frozen
  assert out["train_step"]["per_chip_bytes"]["argument"] > 0 and "fits" not in out["train_step"]  # no HBM on a CPU
  # Under FSDP over 4 devices each device holds well under the replicated params (small arrays stay replicated).
  assert out["state_per_chip_bytes"]["trainable_params"] < 0.5 * 4 * out["params"]
  # What holds the memory, largest first: the biggest buffer is at most the whole, and some are the sharded params.
  buffers = out["train_step"]["largest_buffers"]
  assert len(buffers) == 4 and [b["bytes"] for b in buffers] == sorted((b["bytes"] for b in buffers), reverse=True)
  assert buffers[0]["bytes"] <= out["train_step"]["per_chip_bytes"]["total"]
