"""Compile the train step from shapes alone, on a fake multi-device CPU mesh, and report memory per device.

  python -m apt_jax.tools.aot_check --config experiments/pi0_apt_libero.py:stage1 [--devices 8] [--config.x=y]

Lowers and compiles the full-size train step (params, optimizer state and batch as sharded ShapeDtypeStructs:
no weights are allocated), then prints JSON with per-device param / optimizer / EMA bytes from the shardings and
XLA's `compiled.memory_analysis()`. On a CPU mesh the latter describes the CPU compilation (buffer sizes are the
same on TPU/GPU; temp sizes differ by backend).
"""

from __future__ import annotations

import os
import sys


def _set_device_count(argv):
  n = 8
  for i, a in enumerate(argv):
    if a.startswith("--devices="):
      n = int(a.split("=", 1)[1])
    elif a == "--devices" and i + 1 < len(argv):
      n = int(argv[i + 1])
  if "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def aot_check(config) -> dict:
  import time

  import jax

  from apt_jax import configs
  from apt_jax import sharding as _sharding
  from apt_jax import train
  from apt_jax import tree as tree_lib
  from apt_jax.data import batch as _batch

  model_config = configs.model_config(config)
  mesh = _sharding.make_mesh(config.mesh.get("fsdp_devices", 1))
  setup = train.make_setup(config, model_config, mesh)
  spec = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
  state = jax.tree.map(spec, setup.abstract_state, setup.state_shardings)
  batch = _batch.abstract_batch(model_config, config.batch_size, _sharding.data_sharding(mesh))
  t = time.time()
  lowered = setup.jit_train_step().lower(jax.random.key(0), state, batch)
  t_lower = time.time() - t
  compiled = lowered.compile()
  t_compile = time.time() - t - t_lower
  mem = compiled.memory_analysis()
  mem_fields = {k: int(getattr(mem, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                                   "temp_size_in_bytes", "alias_size_in_bytes",
                                                   "generated_code_size_in_bytes") if hasattr(mem, k)}
  gib = lambda b: round(b / 2**30, 3)
  per_dev = lambda tree: _sharding.per_device_bytes(tree) if jax.tree.leaves(tree) else 0
  replicated = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  return {
      "config": config.get("name"), "devices": jax.device_count(), "mesh": dict(mesh.shape),
      "params": tree_lib.tree_size(state.params) + tree_lib.tree_size(state.frozen),
      "trainable_params": tree_lib.tree_size(state.params),
      "per_device_GiB": {"trainable_params": gib(per_dev(state.params)), "frozen_params": gib(per_dev(state.frozen)),
                         "optimizer": gib(per_dev(state.opt_state)), "ema": gib(per_dev(state.ema_params))},
      "replicated_GiB": {"params": gib(replicated(state.params) + replicated(state.frozen)),
                         "optimizer": gib(replicated(state.opt_state))},
      "memory_analysis_GiB": {k: gib(v) for k, v in mem_fields.items()},
      "per_device_bytes": {"params": per_dev(state.params) + per_dev(state.frozen),
                           "optimizer": per_dev(state.opt_state)},
      "replicated_bytes": {"params": replicated(state.params) + replicated(state.frozen),
                           "optimizer": replicated(state.opt_state)},
      "lower_s": round(t_lower, 1), "compile_s": round(t_compile, 1),
  }


def main(argv=None):
  argv = sys.argv if argv is None else argv
  _set_device_count(argv)
  import json

  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Experiment config, e.g. experiments/pi0_apt_libero.py:stage1.",
                                  lock_config=True)
  flags.DEFINE_integer("devices", 8, "Fake CPU devices for the mesh.")
  flags.mark_flags_as_required(["config"])

  def run(_):
    print(json.dumps(aot_check(flags.FLAGS.config), indent=1))

  app.run(run, argv=argv)


if __name__ == "__main__":
  main()
