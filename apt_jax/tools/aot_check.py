"""Compile the full-size train step and the serving `sample_actions` from shapes alone; memory and FLOPs per chip.

  python -m apt_jax.tools.aot_check --config experiments/pi0_apt_libero.py:stage1 --topology v5e:4x4 [--num_slices 2]
  python -m apt_jax.tools.aot_check --config experiments/pi0_apt_libero.py:stage1 [--devices 8]    # no libtpu

Params, optimizer state and batch are sharded ShapeDtypeStructs (nothing is allocated), laid out by the config's
mesh (FSDP), remat policy, global batch and gradient accumulation, exactly as `apt_jax.train` runs them.
With `--topology` (needs libtpu: `make venv-tpu`) XLA compiles for that TPU slice: `memory_analysis()` is the chip's
HBM use, checked against its capacity (the TPU compiler itself refuses programs that do not fit), and the FLOPs per
step (`hlo_flops`: XLA's cost analysis counts a loop body once) give a lower bound on the step time at the chip's
peak bf16 rate, and an upper bound on MFU (analytic model FLOPs / compiled FLOPs; π0 heads only). Without it, a
fake CPU mesh of `--devices` devices: buffer sizes are the same, temporaries are the CPU compiler's.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time

from apt_jax.tools import memory_report as _memory_report

GiB = 2**30


def _set_device_count(argv):
  n = 8
  for i, a in enumerate(argv):
    if a.startswith("--devices="):
      n = int(a.split("=", 1)[1])
    elif a == "--devices" and i + 1 < len(argv):
      n = int(argv[i + 1])
  if "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}")
    # Even with libtpu installed, the default backend stays the CPU: TPU topologies compile through libtpu only.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _memory(compiled) -> dict:
  mem = compiled.memory_analysis()
  out = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp", "generated_code")}
  # Donated arguments alias their outputs: count those buffers once.
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["generated_code"]
  return out


def _oom(error: Exception) -> dict | None:
  """The TPU compiler's out-of-memory verdict: required and available HBM per chip, or None for other errors."""
  m = re.search(r"RESOURCE_EXHAUSTED.*?\(([\d.]+)([GM])\).*?available HBM \(([\d.]+)([GM])\)", str(error), re.DOTALL)
  if not m:
    return None
  gib = lambda v, u: round(float(v) / (1024 if u == "M" else 1), 3)
  return {"required_GiB": gib(m.group(1), m.group(2)), "available_GiB": gib(m.group(3), m.group(4))}


def compile_report(fn, args, *, chip=None, chips: int = 1, analytic_flops: float | None = None,
                   default_trip_count: int = 1, memory_report: int = 0) -> dict:
  """Lowers and compiles `fn(*args)`; -> memory per chip, FLOPs, and on a TPU chip the fit and speed bounds.
  memory_report: also list that many of the program's largest buffers per chip (`largest_buffers`; also when the
  TPU compiler refuses the program as too large)."""
  from apt_jax.tools import hlo_flops

  t = time.time()
  lowered = fn.lower(*args)
  report = {"lower_s": round(time.time() - t, 1)}
  with tempfile.TemporaryDirectory(prefix="aot_check_dump_") as dump_dir:
    options = _memory_report.compiler_options(dump_dir) if memory_report else None
    t = time.time()
    try:
      compiled = lowered.compile(compiler_options=options)
      error = None
    except Exception as e:
      compiled, error = None, e
    report["compile_s"] = round(time.time() - t, 1)
    if memory_report:
      report["largest_buffers"] = _memory_report.largest_buffers(dump_dir, memory_report)
  if error is not None:
    oom = _oom(error)
    if oom is None or chip is None:
      raise error
    return {**report, "fits": False, "hbm_GiB": chip.hbm_gib, **oom}
  mem = _memory(compiled)
  report["per_chip_bytes"] = mem
  report["per_chip_GiB"] = {k: round(v / GiB, 3) for k, v in mem.items()}
  if chip is not None:
    report.update(hbm_GiB=chip.hbm_gib, fits=mem["total"] <= chip.hbm_gib * GiB)
  flops = hlo_flops.count(compiled.as_text(), default_trip_count=default_trip_count)
  cost = compiled.cost_analysis() or {}
  report.update(flops_per_chip=flops.flops, flops=flops.flops * chips,
                cost_analysis_per_chip={k: cost.get(k) for k in ("flops", "bytes accessed")},
                unresolved_loops=flops.unresolved_loops)
  if analytic_flops is not None:
    report["analytic_flops"] = analytic_flops
    report["flops_vs_analytic"] = round(flops.flops * chips / analytic_flops, 4)
  if chip is not None:
    seconds = flops.flops / (chip.peak_bf16_tflops * 1e12)
    report["step_time_lower_bound_s"] = float(f"{seconds:.4g}")
    if analytic_flops is not None:
      # At the peak rate the step would take `seconds`; useful (model) FLOPs over what that time allows.
      report["mfu_upper_bound"] = round(analytic_flops / (flops.flops * chips), 4)
  return report


def aot_check(config, *, topology: str | None = None, num_slices: int = 1, serving: bool = True,
              serving_batch: int = 1, memory_report: int = 0) -> dict:
  """Compiles `config`'s train step (and `sample_actions`) for a TPU topology, or a fake CPU mesh without one."""
  import jax
  import jax.numpy as jnp

  from apt_jax import configs
  from apt_jax import optimizer as _optimizer
  from apt_jax import sharding as _sharding
  from apt_jax import train
  from apt_jax import tree as tree_lib
  from apt_jax.data.batch import abstract_batch
  from apt_jax.models import model as _model
  from apt_jax.models import pi0 as _pi0
  from apt_jax.tools import pi0_flops
  from apt_jax.tools import tpu

  topo = tpu.parse_topology(topology) if topology else None
  devices = tpu.topology_devices(topo, num_slices) if topo else jax.devices()
  chip = topo.chip if topo else None
  model_config = configs.model_config(config)
  mesh = _sharding.make_mesh(config.mesh.get("fsdp_devices", 1), devices, num_slices=num_slices)
  train.validate_config(config, model_config, num_devices=len(devices))
  setup = train.make_setup(config, model_config, mesh)
  spec = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
  state = jax.tree.map(spec, setup.abstract_state, setup.state_shardings)
  data = _sharding.data_sharding(mesh)
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=_sharding.replicated(mesh))
  is_pi0 = isinstance(model_config, _pi0.Pi0Config)
  analytic = pi0_flops.train_step_flops(model_config, config.batch_size) if is_pi0 else None

  batch = abstract_batch(model_config, config.batch_size, data)
  report = {
      "config": config.get("name"), "topology": topo.name if topo else None,
      "accelerator_type": topo.accelerator_type if topo else None, "num_slices": num_slices,
      "devices": len(devices), "device_kind": devices[0].device_kind, "mesh": dict(mesh.shape),
      "batch_size": config.batch_size, "grad_accum_steps": config.get("grad_accum_steps", 1),
      "remat_policy": getattr(model_config, "remat_policy", None),
      "params": tree_lib.tree_size(state.params) + tree_lib.tree_size(state.frozen),
      "trainable_params": tree_lib.tree_size(state.params),
      "state_per_chip_bytes": {k: _sharding.per_device_bytes(v) if jax.tree.leaves(v) else 0 for k, v in (
          ("trainable_params", state.params), ("frozen_params", state.frozen), ("optimizer", state.opt_state),
          ("ema", state.ema_params))},
      "train_step": compile_report(setup.jit_train_step(), (rng, state, batch), chip=chip, chips=len(devices),
                                   analytic_flops=analytic and analytic["model"], memory_report=memory_report),
  }
  if analytic:
    report["analytic_train_flops"] = analytic

  if serving:
    # As the policy server runs it: on one chip, params (EMA if any) restored in bf16, `serving_batch` requests.
    one = _sharding.replicated(_sharding.make_mesh(1, devices[:1]))
    params_tree = _optimizer.combine(setup.abstract_state.ema_params if state.ema_params is not None
                                     else setup.abstract_state.params, setup.abstract_state.frozen)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16, sharding=one), params_tree)
    obs = {k: v for k, v in abstract_batch(model_config, serving_batch, one).items() if k != "actions"}
    num_steps = getattr(model_config, "num_steps", None) or 10

    def sample(params, rng, obs):
      model = model_config.model_class()(config=model_config, params=params)
      return model.sample_actions(rng, _model.Observation.from_dict(obs))

    analytic_sample = (pi0_flops.sample_actions_flops(model_config, serving_batch, num_steps)["total"]
                       if is_pi0 and model_config.objective == "flow" else None)
    rng_one = jax.ShapeDtypeStruct((), rng.dtype, sharding=one)
    report["sample_actions"] = {"batch_size": serving_batch, "num_steps": num_steps, **compile_report(
        jax.jit(sample), (params, rng_one, obs), chip=chip, analytic_flops=analytic_sample,
        default_trip_count=num_steps)}
  return report


def main(argv=None):
  argv = sys.argv if argv is None else argv
  _set_device_count(argv)
  import json

  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Experiment config, e.g. experiments/pi0_apt_libero.py:stage1.",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, "TPU slice to compile for: v5e:4x4 (libtpu) or v5e-16 (Cloud TPU name).")
  flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN (the mesh's `dcn` axis).")
  flags.DEFINE_integer("devices", 8, "Fake CPU devices for the mesh when no --topology is given.")
  flags.DEFINE_bool("serving", True, "Also compile sample_actions on one chip (bf16 params, as the policy server).")
  flags.DEFINE_integer("serving_batch", 1, "Requests per sample_actions call.")
  flags.DEFINE_integer("memory_report", 0, "List the train step's N largest buffers per chip (shapes and the jax ops "
                       "that write them, from XLA's buffer assignment): what to shrink when a config does not fit.")
  flags.mark_flags_as_required(["config"])

  def run(_):
    f = flags.FLAGS
    print(json.dumps(aot_check(f.config, topology=f.topology, num_slices=f.num_slices, serving=f.serving,
                               serving_batch=f.serving_batch, memory_report=f.memory_report), indent=1,
                     ensure_ascii=False))

  app.run(run, argv=argv)


if __name__ == "__main__":
  main()
