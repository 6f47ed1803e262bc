"""apt_jax's π0 against openpi's own JAX π0, side by side, and against the analytic FLOP count. Prints JSON.

  python benchmarks/vs_reference.py [--sizes small,medium] [--batches 2,8] [--reps 5] \
      [--reference "/tmp/openpi_venv/bin/python benchmarks/openpi_reference.py /tmp/openpi/src"]

Sizes are `apt_jax.testing.SIZES` ("small" is the openpi parity fixture's, the issue's "tiny"). Per size and batch:
the gradient step (value_and_grad of the mean `compute_loss(train=True)`: augmentation on, as
openpi's training) of plain π0 (joint), APT Stage 1 and Stage 2, and `sample_actions` (10 Euler steps), bf16, the
same random inputs for both implementations. Times are medians of `--reps` calls after a warm-up, taken in
interleaved rounds (apt_jax joint, openpi, Stage 1, Stage 2, ...) so that a load change on the machine hits every
variant alike. FLOPs: matmul FLOPs of the compiled program (`hlo_flops`, loops unrolled), XLA's `cost_analysis()`
("flops" and "bytes accessed"; XLA counts a loop body once) and the analytic count (`pi0_flops`). The reference
worker (`openpi_reference.py`, run by `--reference` in an openpi venv) reports openpi's compiled FLOPs too.
Targets (issue 20): grad step and sample_actions at or below openpi's time; FLOPs within 5% of the analytic count;
Stage 1 grad step <= 0.45x joint.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np

from apt_jax import optimizer as _optimizer
from apt_jax import testing
from apt_jax.models import model as _model
from apt_jax.models import pi0
from apt_jax.tools import hlo_flops
from apt_jax.tools import pi0_flops

NUM_STEPS = 10
STAGES = ("none", "stage1", "stage2")


def make_inputs(config: pi0.Pi0Config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch in openpi's layout (images float in [-1, 1]), flat keys `image/<camera>` for an .npz."""
  rng = np.random.default_rng(seed)
  obs, act = config.inputs_spec(batch_size=batch)
  x = {f"image/{k}": rng.uniform(-1, 1, v.shape).astype(np.float32) for k, v in obs.images.items()}
  x.update({f"image_mask/{k}": np.ones(v.shape, bool) for k, v in obs.image_masks.items()})
  x["state"] = rng.normal(size=obs.state.shape).astype(np.float32)
  x["tokenized_prompt"] = rng.integers(1, config.vocab_size, obs.tokenized_prompt.shape).astype(np.int32)
  x["tokenized_prompt_mask"] = np.ones(obs.tokenized_prompt_mask.shape, bool)
  x["actions"] = rng.normal(size=act.shape).astype(np.float32)
  return x


def _observation(x) -> _model.Observation:
  nested = {"image": {}, "image_mask": {}}
  for k, v in x.items():
    group, _, camera = k.partition("/")
    if camera:
      nested[group][camera] = v
    elif k != "actions":
      nested[k] = v
  return _model.Observation.from_dict(nested)


class AptJax:
  """One APT stage's compiled grad step and sample_actions, with their FLOPs."""

  def __init__(self, size, stage, x, *, with_sample: bool):
    self.config = pi0.Pi0Config(apt_stage=stage, dtype="bfloat16", **testing.SIZES[size])
    params = self.config.create(jax.random.key(0)).params
    trainable, frozen = _optimizer.partition(params, self.config.freeze_filter)
    if frozen:  # frozen params are stored in bf16, as in training (config.frozen_dtype)
      frozen = jax.tree.map(lambda a: a.astype(jnp.bfloat16), frozen)
    obs, actions = _observation(x), jnp.asarray(x["actions"])
    config = self.config

    def grad(trainable, frozen, obs, actions):
      def loss(p):
        model = pi0.Pi0(config=config, params=_optimizer.combine(p, frozen))
        return jnp.mean(model.compute_loss(jax.random.key(1), obs, actions, train=True))
      return jax.value_and_grad(loss)(trainable)

    def sample(params, obs):
      return pi0.Pi0(config=config, params=params).sample_actions(jax.random.key(2), obs, num_steps=NUM_STEPS)

    self.calls, self.flops = {}, {}
    programs = [("grad", grad, (trainable, frozen, obs, actions), 1)]
    if with_sample:
      programs.append(("sample", sample, (_optimizer.combine(trainable, frozen), obs), NUM_STEPS))
    for name, fn, args, trips in programs:
      t = time.perf_counter()
      compiled = jax.jit(fn).lower(*args).compile()
      cost = compiled.cost_analysis() or {}
      self.flops[name] = {"compile_s": round(time.perf_counter() - t, 2),
                          "flops": hlo_flops.count(compiled.as_text(), default_trip_count=trips).flops,
                          "cost_analysis_flops": cost.get("flops"), "cost_analysis_bytes": cost.get("bytes accessed")}
      self.calls[name] = (compiled, args)
      jax.block_until_ready(compiled(*args))  # warm-up
    batch = actions.shape[0]
    analytic = {"grad": pi0_flops.train_step_flops(config, batch)["total"]}
    if with_sample:
      analytic["sample"] = pi0_flops.sample_actions_flops(config, batch, NUM_STEPS)["total"]
    for name, f in self.flops.items():
      f["analytic_flops"] = analytic[name]
      f["flops_vs_analytic"] = round(f["flops"] / analytic[name], 4)

  def time(self, name) -> float:
    fn, args = self.calls[name]
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


class Reference:
  """openpi's π0 in its own venv (`openpi_reference.py`), one timed call per request."""

  def __init__(self, command: str, size: str, inputs_path: str):
    spec = {"sizes": testing.SIZES[size], "dtype": "bfloat16", "inputs": inputs_path, "num_steps": NUM_STEPS,
            "hlo_flops_path": str(pathlib.Path(hlo_flops.__file__).resolve())}
    self.proc = subprocess.Popen(shlex.split(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
    self.ready = self._ask(json.dumps(spec))

  def _ask(self, line: str) -> dict:
    self.proc.stdin.write(line + "\n")
    self.proc.stdin.flush()
    answer = self.proc.stdout.readline()
    if not answer:
      raise RuntimeError(f"The reference worker exited (rc={self.proc.wait()}); its stderr is above")
    return json.loads(answer)

  def time(self, name) -> float:
    return self._ask(name)["s"]

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def bench(size: str, batch: int, reps: int, reference: str | None) -> dict:
  x = make_inputs(pi0.Pi0Config(**testing.SIZES[size]), batch)
  apt = {stage: AptJax(size, stage, x, with_sample=stage == "none") for stage in STAGES}
  runners = {f"apt_jax/{s}": a for s, a in apt.items()}
  out = {"size": size, "batch": batch, "flops": {s: a.flops for s, a in apt.items()}}
  with tempfile.TemporaryDirectory() as tmp:
    if reference:
      np.savez(pathlib.Path(tmp) / "inputs.npz", **x)
      ref = Reference(reference, size, str(pathlib.Path(tmp) / "inputs.npz"))
      runners["openpi"] = ref
      out["openpi"] = ref.ready
    times = {(r, call): [] for r in runners for call in ("grad", "sample")}
    for _ in range(reps):  # interleaved rounds
      for call in ("grad", "sample"):
        for r, runner in runners.items():
          if call == "grad" or r in ("apt_jax/none", "openpi"):
            times[r, call].append(runner.time(call))
    if reference:
      ref.close()
  med = {f"{r}/{call}_s": round(float(np.median(v)), 4) for (r, call), v in times.items() if v}
  out["median_s"] = med
  ratios = {"stage1_vs_joint_grad": med["apt_jax/stage1/grad_s"] / med["apt_jax/none/grad_s"],
            "stage2_vs_joint_grad": med["apt_jax/stage2/grad_s"] / med["apt_jax/none/grad_s"]}
  if reference:
    ratios["grad_apt_jax_vs_openpi"] = med["apt_jax/none/grad_s"] / med["openpi/grad_s"]
    ratios["sample_apt_jax_vs_openpi"] = med["apt_jax/none/sample_s"] / med["openpi/sample_s"]
    for call in ("grad", "sample"):
      ratios[f"{call}_flops_apt_jax_vs_openpi"] = out["flops"]["none"][call]["flops"] / out["openpi"]["flops"][call]
  out["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes", default="small,medium")
  p.add_argument("--batches", default="2,8")
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--reference", default=None, help="command starting benchmarks/openpi_reference.py in an openpi venv")
  p.add_argument("--reference_sizes", default="small", help="sizes to run the reference at (compiles are slow)")
  args = p.parse_args()
  rows = [bench(size, batch, args.reps, args.reference if size in args.reference_sizes.split(",") else None)
          for size in args.sizes.split(",") for batch in map(int, args.batches.split(","))]
  print(json.dumps({"device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(), "jax": jax.__version__,
                    "dtype": "bfloat16", "rows": rows,
                    "targets": {"grad_apt_jax_vs_openpi": "<= 1", "sample_apt_jax_vs_openpi": "<= 1",
                                "flops_vs_analytic": "within 5%", "stage1_vs_joint_grad": "<= 0.45"}}, indent=1))


if __name__ == "__main__":
  main()
