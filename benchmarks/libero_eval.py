"""LIBERO evaluation speed on this machine, as JSON: env creation / reset / step, and episodes with 1 and N workers.

    .venv-libero/bin/python benchmarks/libero_eval.py [--suite libero_spatial] [--steps 60] [--episodes 4]
        [--workers 2] [--out FILE]

Re-runs itself with .venv-libero's python when started from another venv. Runs `apt_jax.eval.libero` exactly as
an evaluation does (2 cameras at 256x256, `MUJOCO_GL` as set, default osmesa), against a server in this process
answering zero actions (so episodes never succeed and run `--steps` policy steps plus the 10 settle steps; the
policy costs ~nothing). Reported:
* `env`: seconds to create an env, reset + set the init state, and per `env.step` (median over the episode).
* `run[w]`: `--episodes` episodes of one task with w worker processes: wall seconds, seconds per episode, per env
  step and episodes per hour. The machine's load average at start and end is recorded: on a shared machine, read the
  ratio between the two runs rather than absolute times.
* `table1_estimate_hours`: 8 suites x 10 tasks x 50 trials, every episode failing (the upper bound: each runs its
  suite's step limit + 10 settle steps), at the measured seconds per step of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

from apt_jax import serve
from apt_jax.eval import libero as L


class ZeroPolicy:
  metadata = {"policy": "zeros"}

  def infer(self, obs):
    del obs
    return {"actions": np.zeros((10, 7), np.float32)}


def env_timings(suite: str, steps: int) -> dict:
  s = L.load_suite(suite)
  t0 = time.perf_counter()
  env, _ = L.make_env(s, 0)
  created = time.perf_counter() - t0
  t0 = time.perf_counter()
  env.seed(L.SEED)
  env.reset()
  env.set_init_state(s.get_task_init_states(0)[0])
  reset = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    env.step(L.DUMMY_ACTION)
    times.append(time.perf_counter() - t0)
  env.close()
  return {"create_s": round(created, 2), "reset_s": round(reset, 2), "step_s_median": round(float(np.median(times)), 4)}


def run_timings(suite: str, steps: int, episodes: int, workers: int, port: int) -> dict:
  with tempfile.TemporaryDirectory() as out:
    config = L.RunConfig(port=port, out=out, checkpoint=f"bench{workers}", max_steps=steps)
    plan = L.plan_episodes([suite], tasks=[0], trials=episodes)
    t0 = time.perf_counter()
    recs = L.run(config, plan, workers=workers, progress=False)
    wall = time.perf_counter() - t0
  env_steps = sum(r["steps"] + L.NUM_STEPS_WAIT for r in recs)
  return {"workers": workers, "episodes": len(recs), "wall_s": round(wall, 1),
          "s_per_episode": round(wall / len(recs), 2), "s_per_env_step": round(wall / env_steps, 4),
          "env_s_per_step_in_worker": round(sum(r["env_seconds"] for r in recs) / env_steps, 4),
          "episodes_per_hour": round(3600 * len(recs) / wall, 1)}


def table1_hours(s_per_step: float) -> float:
  steps = sum(10 * 50 * (L.max_steps(f"{b}_swap") + L.NUM_STEPS_WAIT) for b in L.PRO_BASES) * 2  # swap + task
  return round(steps * s_per_step / 3600, 1)


def main(argv=None) -> dict:
  try:
    import libero  # noqa: F401
  except ImportError:  # `make bench` runs every benchmark with the JAX venv: move over to the simulator's
    python = pathlib.Path(__file__).resolve().parents[1] / ".venv-libero" / "bin" / "python"
    os.execv(python, [str(python), __file__, *(sys.argv[1:] if argv is None else argv)])
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--suite", default="libero_spatial")
  p.add_argument("--steps", type=int, default=60, help="policy steps per episode")
  p.add_argument("--episodes", type=int, default=4)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  result = {"suite": args.suite, "mujoco_gl": os.environ["MUJOCO_GL"], "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg()[0], "env": env_timings(args.suite, args.steps)}
  with serve.PolicyServer(ZeroPolicy(), port=0) as server:
    result["run"] = [run_timings(args.suite, args.steps, args.episodes, w, server.port)
                     for w in sorted({1, args.workers})]
  result["loadavg_end"] = os.getloadavg()[0]
  result["table1_estimate_hours"] = {f"workers={r['workers']}": table1_hours(r["s_per_env_step"])
                                     for r in result["run"]}
  text = json.dumps(result)
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text + "\n")
  return result


if __name__ == "__main__":
  main()
