"""Soak test of the policy server: many requests, some malformed, from concurrent clients; latency, errors, RSS.

    .venv/bin/python benchmarks/serving_soak.py [--requests 10000] [--clients 8] [--malformed 0.05] [--out FILE]

The server (`python -m apt_jax.serve`, a subprocess) serves benchmarks/serving.py's tiny π0 (the debug model).
Each client is a thread with its own websocket connection speaking openpi's protocol (msgpack_numpy frames). A
request is malformed with probability `--malformed` (seeded), cycling through the kinds in `MALFORMED`; the server
must answer each with an error frame and close code 1007, and the client reconnects. Every other reply must hold
actions of the right shape.

Reported (JSON): round-trip latency p50 / p99 of the well-formed requests, error counts (expected: 1007 for each
malformed request; unexpected: anything else, which must be 0), throughput, and the server's resident memory (VmRSS)
after a warm-up (the first 5% of requests) and at the end, sampled along the way; `rss_flat` says the end is within
5% (and 20 MB) of the start.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from benchmarks.serving import _free_port  # noqa: E402
from benchmarks.serving import build_tiny_checkpoint  # noqa: E402
from benchmarks.serving import emit  # noqa: E402
from benchmarks.serving import server_subprocess  # noqa: E402

PROMPT = "pick up the black bowl and place it on the plate"


def _bad_image(obs):
  obs["observation/image"] = obs["observation/image"].astype(np.float32)  # 0..255 as float
  return obs


# Malformed requests, each a kind of mistake a client makes; the server must answer every one with close code 1007.
MALFORMED = {
    "float image in 0..255": _bad_image,
    "missing state": lambda obs: {k: v for k, v in obs.items() if k != "observation/state"},
    "state of the wrong size": lambda obs: dict(obs, **{"observation/state": np.zeros(3, np.float32)}),
    "NaN state": lambda obs: dict(obs, **{"observation/state": np.full(8, np.nan, np.float32)}),
    "over-long prompt": lambda obs: dict(obs, prompt=" ".join([PROMPT] * 20)),
    "image of the wrong rank": lambda obs: dict(obs, **{"observation/wrist_image": np.zeros((8, 8), np.uint8)}),
}


def _rss_mb(pid: int) -> float:
  for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 1024
  raise RuntimeError(f"no VmRSS for pid {pid}")


class Client:
  """One openpi-protocol connection that reconnects after the server closes it (as it does after an error)."""

  def __init__(self, port: int):
    self.port, self.ws = port, None

  def _connect(self):
    from openpi_client import msgpack_numpy as openpi_msgpack
    from websockets.sync.client import connect

    self.ws = connect(f"ws://127.0.0.1:{self.port}", compression=None, max_size=None, open_timeout=30,
                      close_timeout=10)
    openpi_msgpack.unpackb(self.ws.recv(timeout=30))  # the metadata frame

  def request(self, obs) -> tuple[str, object]:
    """-> ("ok", reply) | ("closed", close code) after an error frame | ("unexpected", description)."""
    import websockets
    from openpi_client import msgpack_numpy as openpi_msgpack

    if self.ws is None:
      self._connect()
    self.ws.send(openpi_msgpack.packb(obs))
    reply = self.ws.recv(timeout=120)
    if isinstance(reply, bytes):
      return "ok", openpi_msgpack.unpackb(reply)
    try:  # an error frame: the server closes the connection next
      extra = self.ws.recv(timeout=30)
      return "unexpected", f"a frame after the error {reply!r}: {extra!r:.80}"
    except websockets.ConnectionClosed as e:
      self.ws = None
      return "closed", (e.rcvd.code if e.rcvd is not None else None, reply)

  def close(self):
    if self.ws is not None:
      self.ws.close()


def soak(port: int, pid: int, n_requests: int, n_clients: int, malformed: float, seed: int, make_obs,
         action_shape) -> dict:
  kinds = list(MALFORMED)
  rng = np.random.default_rng(seed)
  bad = rng.random(n_requests) < malformed
  nth_bad = np.cumsum(bad) - 1
  plan = [kinds[nth_bad[i] % len(kinds)] if bad[i] else None for i in range(n_requests)]  # None: well-formed
  warmup = max(1, n_requests // 20)
  lock = threading.Lock()
  state = {"next": 0, "done": 0}
  latencies, expected, unexpected, rss = [], dict.fromkeys(kinds, 0), [], []

  def take() -> int | None:
    with lock:
      i = state["next"]
      state["next"] += 1
      return i if i < n_requests else None

  def finish():
    with lock:  # samples in order
      state["done"] += 1
      done = state["done"]
      if done in (warmup, n_requests) or done % max(1, n_requests // 10) == 0:
        rss.append((done, round(_rss_mb(pid), 1)))

  def work(c: int):
    client = Client(port)
    obs0 = make_obs(c)
    try:
      while (i := take()) is not None:
        kind = plan[i]
        obs = dict(obs0) if kind is None else MALFORMED[kind](dict(obs0))
        t = time.perf_counter()
        outcome, value = client.request(obs)
        ms = (time.perf_counter() - t) * 1e3
        if kind is None and outcome == "ok" and np.shape(value.get("actions")) == action_shape:
          if i >= warmup:
            latencies.append(ms)
        elif kind is not None and outcome == "closed" and value[0] == 1007:
          expected[kind] += 1
        else:
          unexpected.append(f"request {i} ({kind or 'well-formed'}): {outcome} {value!r:.200}")
        finish()
    finally:
      client.close()

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(n_clients) as pool:
    list(pool.map(work, range(n_clients)))
  wall = time.perf_counter() - t0
  lat = sorted(latencies)
  start_mb, end_mb = rss[0][1], rss[-1][1]
  return {
      "requests": n_requests, "clients": n_clients, "malformed_sent": sum(k is not None for k in plan),
      "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2), "p99": round(float(np.percentile(lat, 99)), 2),
                     "mean": round(statistics.fmean(lat), 2), "n": len(lat)},
      "throughput_rps": round(n_requests / wall, 1), "wall_s": round(wall, 1),
      "errors": {"expected_1007": sum(expected.values()), "by_kind": expected, "unexpected": len(unexpected),
                 "unexpected_examples": unexpected[:5]},
      "rss_mb": {"after_warmup": start_mb, "end": end_mb, "samples": rss},
      "rss_flat": end_mb - start_mb <= max(0.05 * start_mb, 20.0),
  }


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--requests", type=int, default=10_000)
  p.add_argument("--clients", type=int, default=8)
  p.add_argument("--malformed", type=float, default=0.05, help="fraction of requests that are malformed")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="also write the JSON here")
  args = p.parse_args(argv)

  from apt_jax import policy as _policy

  with tempfile.TemporaryDirectory(prefix="serving_soak_") as tmp:
    ckpt = build_tiny_checkpoint(pathlib.Path(tmp) / "1000")
    pol = _policy.create_trained_policy(ckpt)
    env = pol.transforms.env
    action_shape = (pol.model.config.action_horizon, env.action_dim)
    make_obs = lambda seed: env.example(np.random.default_rng(seed), prompt=PROMPT)
    port = _free_port()
    with open(pathlib.Path(tmp) / "server.log", "w") as log, server_subprocess(ckpt, port, log) as proc:
      result = soak(port, proc.pid, args.requests, args.clients, args.malformed, args.seed, make_obs, action_shape)
  result = {"benchmark": "serving_soak", "model": "tiny pi0 (test sizes)", **result,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}}
  return emit(result, args.out)


if __name__ == "__main__":
  main()
