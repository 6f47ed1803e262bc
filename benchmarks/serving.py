"""Latency and throughput of the websocket policy server with the real openpi-client, as JSON.

    .venv/bin/python benchmarks/serving.py [--requests 50] [--clients 1,4] [--infer_threads 1] [--in_process]
        [--checkpoint STEP_DIR --tokenizer PATH] [--out FILE]

Without --checkpoint it builds the tiny π0 the serving tests use (apt_jax.testing: SigLIP 32 wide / 56 px patches,
Gemma 48 + 32 wide, 2 layers, action horizon 4, float32 compute, bfloat16 params as openpi's inference), with the
shipped sample tokenizer, LIBERO layout, delta actions and z-score norm stats. The server runs as
`python -m apt_jax.serve` in a subprocess (`--in_process`: a thread of this process); clients are openpi-client
`WebsocketClientPolicy` objects in threads of this process, each sending LIBERO requests (two 224x224x3 uint8
images, state (8,), a prompt; ~300 KB).

Reported:
* `direct`: `Policy.infer` called in this process (same checkpoint, same settings), ms per call.
* `server[n]` for n concurrent clients: round-trip ms per request as each client sees it (median / p90 / mean),
  throughput (requests/s over all clients), and the server's own `server_timing.infer_ms` (median).
* `paired`: 1 client, each request preceded by a direct `Policy.infer` of the same observation in this process, so
  both see the same machine load (the machine may be shared); `overhead_ms` = median round trip - median direct
  infer of that paired run (msgpack, websocket, executor hop; server and client in different processes).
Each client's first request is a warm-up and not counted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import pathlib
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402


def build_tiny_checkpoint(step_dir: pathlib.Path) -> pathlib.Path:
  """apt_jax.testing's tiny π0 with the sample tokenizer, LIBERO layout and openpi's pi0_libero delta actions."""
  import jax

  from apt_jax import configs
  from apt_jax import policy_config as _policy_config
  from apt_jax import testing
  from apt_jax.models import tokenizer

  vocab = tokenizer.PaligemmaTokenizer(configs.SAMPLE_TOKENIZER).vocab_size
  model = testing.tiny_pi0_config(vocab).create(jax.random.key(0))
  return testing.write_tiny_checkpoint(step_dir, model, configs.SAMPLE_TOKENIZER,
                                       policy_config=_policy_config.PolicyConfig(env="libero", delta_action_dims=6))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_healthy(port: int, proc, timeout: float = 300.0) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc is not None and proc.poll() is not None:
      raise RuntimeError(f"server exited with {proc.returncode}")
    try:
      with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
        if r.status == 200:
          return
    except OSError:
      pass
    time.sleep(0.25)
  raise TimeoutError("server did not come up")


@contextlib.contextmanager
def server_subprocess(ckpt: pathlib.Path, port: int, log, *flags: str) -> Iterator[subprocess.Popen]:
  """`python -m apt_jax.serve --checkpoint CKPT --port PORT FLAGS...` (output to `log`): healthy on entry,
  terminated on exit."""
  cmd = [sys.executable, "-m", "apt_jax.serve", "--checkpoint", str(ckpt), "--port", str(port), *flags]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
  try:
    _wait_healthy(port, proc)
    yield proc
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
      proc.kill()


def emit(result: dict, out: str | None) -> dict:
  """Prints the result as JSON (and writes it to `out`)."""
  text = json.dumps(result, indent=1)
  print(text)
  if out:
    pathlib.Path(out).write_text(text)
  return result


def _stats_ms(xs) -> dict:
  xs = sorted(xs)
  return {"median": round(statistics.median(xs), 3), "p90": round(xs[int(0.9 * (len(xs) - 1))], 3),
          "mean": round(statistics.fmean(xs), 3), "min": round(xs[0], 3), "n": len(xs)}


def run_clients(port: int, n_clients: int, n_requests: int, make_obs, direct=None) -> dict:
  """n_clients openpi clients in threads, n_requests timed requests each. With `direct` (1 client only), every
  request is paired with a direct `direct.infer` of the same observation just before it, so the two are measured
  under the same machine load (this machine is shared)."""
  from openpi_client import websocket_client_policy as wcp

  clients = [wcp.WebsocketClientPolicy(host="127.0.0.1", port=port) for _ in range(n_clients)]
  for i, c in enumerate(clients):  # warm-up (first request of each connection)
    c.infer(make_obs(i))
  barrier = threading.Barrier(n_clients)

  def work(i):
    obs = make_obs(100 + i)
    lat, server_ms, direct_ms = [], [], []
    barrier.wait()
    for _ in range(n_requests):
      if direct is not None:
        t = time.perf_counter()
        direct.infer(obs)
        direct_ms.append((time.perf_counter() - t) * 1e3)
      t = time.perf_counter()
      out = clients[i].infer(obs)
      lat.append((time.perf_counter() - t) * 1e3)
      server_ms.append(out["server_timing"]["infer_ms"])
    return lat, server_ms, time.perf_counter(), direct_ms

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(n_clients) as pool:
    results = list(pool.map(work, range(n_clients)))
  wall = max(r[2] for r in results) - t0
  for c in clients:
    c._ws.close()  # noqa: SLF001  (openpi-client has no public close)
  lat = [x for r in results for x in r[0]]
  out = {"clients": n_clients, "requests": len(lat), "round_trip_ms": _stats_ms(lat),
         "server_infer_ms_median": round(statistics.median(x for r in results for x in r[1]), 3)}
  if direct is None:
    out["throughput_rps"] = round(len(lat) / wall, 1)
  else:
    out["paired_direct_infer_ms"] = _stats_ms(results[0][3])
  return out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--requests", type=int, default=50, help="timed requests per client")
  p.add_argument("--clients", default="1,4")
  p.add_argument("--infer_threads", type=int, default=1)
  p.add_argument("--in_process", action="store_true", help="run the server in a thread of this process")
  p.add_argument("--checkpoint", default=None, help="a checkpoint step dir (default: a tiny π0 built here)")
  p.add_argument("--tokenizer", default=None)
  p.add_argument("--out", default=None, help="also write the JSON here")
  args = p.parse_args(argv)

  from apt_jax import policy as _policy
  from apt_jax import serve

  tmp = tempfile.TemporaryDirectory(prefix="serving_bench_")
  if args.checkpoint:
    ckpt = pathlib.Path(args.checkpoint)
  else:
    ckpt = build_tiny_checkpoint(pathlib.Path(tmp.name) / "1000")

  pol = _policy.create_trained_policy(ckpt, tokenizer_path=args.tokenizer)
  t = time.perf_counter()
  pol.warmup()
  compile_s = time.perf_counter() - t
  env = pol.transforms.env

  def make_obs(seed):
    return env.example(np.random.default_rng(seed), prompt="pick up the black bowl and place it on the plate")

  obs = make_obs(0)
  for _ in range(3):
    pol.infer(obs)
  direct, model_ms = [], []
  for _ in range(args.requests):
    t = time.perf_counter()
    out = pol.infer(obs)
    direct.append((time.perf_counter() - t) * 1e3)
    model_ms.append(out["policy_timing"]["infer_ms"])
  from apt_jax.msgpack_numpy import packb
  request_bytes = len(packb(obs))

  port = _free_port()
  with open(pathlib.Path(tmp.name) / "server.log", "w") as log, contextlib.ExitStack() as stack:
    if args.in_process:
      stack.callback(serve.PolicyServer(pol, port=port, infer_threads=args.infer_threads).start().stop)
      _wait_healthy(port, None)
    else:
      tokenizer = ["--tokenizer", args.tokenizer] if args.tokenizer else []
      stack.enter_context(server_subprocess(ckpt, port, log, "--infer_threads", str(args.infer_threads), *tokenizer))
    runs = [run_clients(port, int(n), args.requests, make_obs) for n in args.clients.split(",")]
    paired = run_clients(port, 1, args.requests, make_obs, direct=pol)

  direct_stats = _stats_ms(direct)
  pd, pr = paired["paired_direct_infer_ms"]["median"], paired["round_trip_ms"]["median"]
  result = {
      "benchmark": "serving",
      "model": "tiny pi0 (test sizes)" if not args.checkpoint else str(ckpt),
      "metadata": {k: pol.metadata[k] for k in ("head", "apt_stage", "env", "action_horizon", "action_dim",
                                                 "compute_dtype", "param_dtype", "num_steps")},
      "server": "subprocess" if not args.in_process else "in-process thread",
      "infer_threads": args.infer_threads,
      "request_bytes": request_bytes,
      "compile_s": round(compile_s, 2),
      "direct": {"infer_ms": direct_stats, "model_ms_median": round(statistics.median(model_ms), 3),
                 "calls_per_s": round(1e3 / direct_stats["mean"], 1)},
      "server_runs": runs,
      "paired": {"direct_infer_ms": paired["paired_direct_infer_ms"], "round_trip_ms": paired["round_trip_ms"]},
      "overhead_ms": round(pr - pd, 3),
      "overhead_pct": round(100 * (pr / pd - 1), 1),
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
  }
  tmp.cleanup()
  return emit(result, args.out)


if __name__ == "__main__":
  main()
