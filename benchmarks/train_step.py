"""Training throughput and memory. Prints JSON.

  python benchmarks/train_step.py [--steps 30]

1. Steps/s and peak RSS of the debug config (fake data) on 1 and on 8 fake CPU devices (FSDP 4 × data 2), each in
   its own process (the device count is fixed at JAX start-up).
2. Per-device parameter and optimizer bytes of the full-size pi0_apt_libero Stage 1 / joint configs under FSDP over
   8 devices vs replicated (from shapes: nothing is allocated).
"""

import argparse
import json
import os
import subprocess
import sys


def _child(devices: int, steps: int):
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import resource
  import time

  import jax

  from apt_jax import configs
  from apt_jax import sharding as _sharding
  from apt_jax import train
  from apt_jax.data import batch as _batch

  config = configs.load(configs.REPO_ROOT / "experiments" / "debug.py", "stage1")
  config.data = dict(kind="fake")
  if devices > 1:
    config.mesh.fsdp_devices = 4
    config.mesh.min_fsdp_mbytes = 0.0
  model_config = configs.model_config(config)
  mesh = _sharding.make_mesh(config.mesh.fsdp_devices)
  setup = train.make_setup(config, model_config, mesh)
  state = train.init_train_state(setup, jax.random.key(0))
  data = _batch.FakeData(model_config, config.batch_size, 0)
  step = setup.jit_train_step()
  spec = _batch.abstract_batch(model_config, config.batch_size, _sharding.data_sharding(mesh))
  batches = [_batch.to_global_batch(next(data), spec) for _ in range(4)]
  t = time.perf_counter()
  state, m = step(jax.random.key(1), state, batches[0])
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for i in range(steps):
    state, m = step(jax.random.key(1), state, batches[i % 4])
  jax.block_until_ready(m)
  dt = time.perf_counter() - t
  print(json.dumps({"devices": devices, "batch": config.batch_size, "steps_per_s": round(steps / dt, 2),
                    "samples_per_s": round(steps * config.batch_size / dt, 1), "first_step_s": round(compile_s, 2),
                    "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def _fsdp_bytes():
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax

  from apt_jax import configs
  from apt_jax import sharding as _sharding
  from apt_jax import train

  out = {}
  experiments = configs.REPO_ROOT / "experiments"
  for name, config in [("pi0_apt_libero:stage1", configs.load(experiments / "pi0_apt_libero.py", "stage1")),
                       ("pi0_libero (joint)", configs.load(experiments / "pi0_libero.py"))]:
    row = {}
    for fsdp in (8, 1):
      config.mesh.fsdp_devices = fsdp
      setup = train.make_setup(config, configs.model_config(config), _sharding.make_mesh(fsdp))
      spec = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), setup.abstract_state,
                          setup.state_shardings)
      b = lambda t: _sharding.per_device_bytes(t) if jax.tree.leaves(t) else 0
      row["fsdp8" if fsdp == 8 else "replicated"] = {
          "params_GiB": round((b(spec.params) + b(spec.frozen)) / 2**30, 3),
          "optimizer_GiB": round(b(spec.opt_state) / 2**30, 3), "ema_GiB": round(b(spec.ema_params) / 2**30, 3)}
    out[name] = row
  print(json.dumps(out))


def main():
  if len(sys.argv) > 1 and sys.argv[1] == "--child":
    return _child(int(sys.argv[2]), int(sys.argv[3]))
  if len(sys.argv) > 1 and sys.argv[1] == "--fsdp-bytes":
    return _fsdp_bytes()
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=30)
  args = p.parse_args()
  run = lambda *a: json.loads(subprocess.run([sys.executable, __file__, *a], check=True, capture_output=True,
                                             text=True).stdout.strip().splitlines()[-1])
  steps = [run("--child", str(d), str(args.steps)) for d in (1, 8)]
  print(json.dumps({"debug_train_step": steps, "per_device_memory_full_size": run("--fsdp-bytes"),
                    "cpu_count": os.cpu_count()}, indent=1))
  return None


if __name__ == "__main__":
  main()
