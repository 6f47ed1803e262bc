"""Websocket policy server that speaks openpi's protocol, so openpi clients (`openpi-client`) work unchanged.

    python -m apt_jax.serve --checkpoint CKPT/STEP [--port 8000] [--host 127.0.0.1]
        [--config experiments/pi0_libero.py]            # settings of the training run (tokenizer, delta actions...)
        [--env libero|droid|aloha] [--tokenizer PATH] [--asset_id ID] [--delta_action_dims 6] [--default_prompt TEXT]
        [--model_config FILE | --head pi0]              # openpi checkpoints (no assets/model_config.json)
        [--dtype bfloat16|float32|stored] [--api_key_file FILE] [--max_frame_mb 16] [--infer_threads 1]
        [--infer_timeout_s 60] [--allow_unnormalized]

Protocol (openpi's `serving/websocket_policy_server.py`): on connect, one binary frame with the metadata; then per
request one msgpack_numpy frame in, one out (the policy output plus `server_timing`: `infer_ms`, `queue_ms`, and from
the 2nd request on `prev_total_ms`, the previous cycle as openpi measures it). Errors: one text frame with the
message, then close code 1007 (bad request, naming the field) or 1011 (unexpected, traceback in the server log; or
an inference that ran past `--infer_timeout_s`). `GET /healthz` answers 200. Beyond openpi: binds 127.0.0.1 by
default; optional `Authorization: Api-Key <key>` (compared in constant time, else HTTP 401); frames above
`--max_frame_mb` closed with 1009 before buffering; `--infer_threads` inferences at a time (default 1: arrival
order), each in its own thread, so one that hangs past its timeout is abandoned and the others are still served;
`--max_connections` (HTTP 503 beyond).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import http
import logging
import os
import pathlib
import threading
import time
from collections.abc import Mapping

import jax.numpy as jnp
import websockets
import websockets.asyncio.server as _server
from websockets.frames import CloseCode

from apt_jax import configs
from apt_jax import envs as _envs
from apt_jax import policy as _policy
from apt_jax.msgpack_numpy import RequestError
from apt_jax.msgpack_numpy import packb
from apt_jax.msgpack_numpy import unpackb

_log = logging.getLogger(__name__)

DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
DEFAULT_INFER_TIMEOUT_S = 60.0
API_KEY_ENV = "APT_JAX_API_KEY"


# --- Server -------------------------------------------------------------------------------------------------------


def _reason(text: str) -> str:
  """A close reason fits in 123 UTF-8 bytes."""
  b = text.encode("utf-8")[:120]
  return b.decode("utf-8", errors="ignore")


class PolicyServer:
  """Serves `policy.infer` over openpi's websocket protocol (see the module docstring)."""

  def __init__(self, policy, *, host: str = "127.0.0.1", port: int = 8000, metadata: Mapping | None = None,
               api_key: str | None = None, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
               max_connections: int = 64, infer_threads: int = 1,
               infer_timeout_s: float | None = DEFAULT_INFER_TIMEOUT_S):
    self._policy = policy
    self.host = host
    self.port = port
    meta = metadata if metadata is not None else getattr(policy, "metadata", {})
    self._metadata_frame = packb(dict(meta))
    self._api_key = api_key.encode("utf-8") if api_key else None
    self.max_frame_bytes = int(max_frame_bytes)
    self.max_connections = int(max_connections)
    self._infer_threads = int(infer_threads)
    self.infer_timeout_s = infer_timeout_s
    self._slots: asyncio.Semaphore | None = None
    self._active = 0
    self._loop: asyncio.AbstractEventLoop | None = None
    self._server = None
    self._thread: threading.Thread | None = None
    self._ready = threading.Event()
    self._stopped: asyncio.Event | None = None
    self._error: BaseException | None = None
    self.stats = {"connections": 0, "requests": 0, "errors": 0, "rejected": 0, "timeouts": 0}

  # HTTP stage: health check, token, connection limit.
  def _process_request(self, connection, request):
    if request.path == "/healthz":
      return connection.respond(http.HTTPStatus.OK, "OK\n")
    if self._api_key is not None:
      got = request.headers.get("Authorization", "").encode("utf-8", errors="replace")
      if not hmac.compare_digest(got, b"Api-Key " + self._api_key):
        self.stats["rejected"] += 1
        _log.warning("Rejected %s: missing or wrong API key", connection.remote_address)
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized: send 'Authorization: Api-Key <key>'\n")
    if self._active >= self.max_connections:
      self.stats["rejected"] += 1
      return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections\n")
    return None

  @property
  def address(self) -> tuple[str, int]:
    """(host, port) of the listening socket, as bound."""
    return self._server.sockets[0].getsockname()[:2]

  async def _infer(self, obs) -> tuple[dict, float, float]:
    """policy.infer in a thread of its own, at most `infer_threads` at a time (FIFO) -> (result, start, end).

    A daemon thread per request rather than a pool: an inference that overruns its timeout keeps its thread, which
    is abandoned, and the slot goes to the next request.
    """
    loop = asyncio.get_running_loop()
    async with self._slots:
      done = loop.create_future()

      def settle(fn, value):
        if not done.done():  # cancelled by the timeout
          fn(value)

      def work():
        t = time.monotonic()
        try:
          outcome = (done.set_result, (self._policy.infer(obs), t, time.monotonic()))
        except BaseException as e:  # handed to the handler, which answers with an error frame
          outcome = (done.set_exception, e)
        with contextlib.suppress(RuntimeError):  # the server stopped while this thread was abandoned
          loop.call_soon_threadsafe(settle, *outcome)

      threading.Thread(target=work, name="infer", daemon=True).start()
      return await asyncio.wait_for(done, self.infer_timeout_s)

  async def _fail(self, ws, message: str, code: CloseCode) -> None:
    self.stats["errors"] += 1
    try:
      await ws.send(message)
      await ws.close(code=code, reason=_reason(message.splitlines()[0]))
    except websockets.ConnectionClosed:
      pass

  async def _handler(self, ws) -> None:
    self._active += 1
    self.stats["connections"] += 1
    peer = ws.remote_address
    _log.info("Connection from %s opened", peer)
    try:
      await ws.send(self._metadata_frame)
      prev_total = None
      while True:
        start = time.monotonic()
        try:
          msg = await ws.recv()
        except websockets.ConnectionClosed as e:
          if e.rcvd is None and e.sent is not None and e.sent.code == CloseCode.MESSAGE_TOO_BIG:
            self.stats["errors"] += 1
            _log.warning("Closed %s: frame larger than %d bytes", peer, self.max_frame_bytes)
          return
        try:
          if isinstance(msg, str):
            raise RequestError("expected a binary msgpack frame, got a text frame")
          obs = unpackb(msg)
          queued = time.monotonic()
          result, t_infer, t_done = await self._infer(obs)
          result = dict(result)
          result["server_timing"] = {"infer_ms": (t_done - t_infer) * 1e3, "queue_ms": (t_infer - queued) * 1e3}
          if prev_total is not None:
            result["server_timing"]["prev_total_ms"] = prev_total * 1e3
          reply = packb(result)
        except (RequestError, _envs.InputError) as e:
          _log.info("Bad request from %s: %s", peer, e)
          await self._fail(ws, f"Invalid request: {e}", CloseCode.INVALID_DATA)
          return
        except TimeoutError:
          self.stats["timeouts"] += 1
          _log.error("Inference for %s ran past %s s: its thread is abandoned", peer, self.infer_timeout_s)
          await self._fail(ws, f"Inference timed out after {self.infer_timeout_s} s", CloseCode.INTERNAL_ERROR)
          return
        except Exception as e:
          _log.exception("Inference failed for %s", peer)
          await self._fail(ws, f"Internal server error: {type(e).__name__}: {e}", CloseCode.INTERNAL_ERROR)
          return
        await ws.send(reply)
        self.stats["requests"] += 1
        prev_total = time.monotonic() - start
    except websockets.ConnectionClosed:
      pass
    finally:
      self._active -= 1
      _log.info("Connection from %s closed", peer)

  async def run(self) -> None:
    """Serves until `stop()` (or cancellation)."""
    self._loop = asyncio.get_running_loop()
    self._stopped = asyncio.Event()
    self._slots = asyncio.Semaphore(self._infer_threads)
    try:
      async with _server.serve(self._handler, self.host, self.port, compression=None,
                               max_size=self.max_frame_bytes, process_request=self._process_request) as server:
        self._server = server
        self.port = self.address[1]
        _log.info("Serving on ws://%s:%d (max frame %d bytes, inference timeout %s s, token %s)", *self.address,
                  self.max_frame_bytes, self.infer_timeout_s, "required" if self._api_key else "off")
        self._ready.set()
        await self._stopped.wait()
    finally:
      self._ready.set()

  def serve_forever(self) -> None:
    asyncio.run(self.run())

  # Background-thread use (tests, benchmarks, embedding).
  def start(self, timeout: float = 30.0) -> PolicyServer:
    def target():
      try:
        asyncio.run(self.run())
      except BaseException as e:
        self._error = e
        self._ready.set()

    self._thread = threading.Thread(target=target, name="policy-server", daemon=True)
    self._thread.start()
    if not self._ready.wait(timeout):
      raise TimeoutError(f"Server did not start within {timeout} s")
    if self._error is not None:
      raise RuntimeError(f"Server failed to start: {self._error}") from self._error
    return self

  def stop(self, timeout: float = 10.0) -> None:
    if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
      with contextlib.suppress(RuntimeError):  # the loop closed in between
        self._loop.call_soon_threadsafe(self._stopped.set)
    if self._thread is not None:
      self._thread.join(timeout)

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()


# --- CLI ----------------------------------------------------------------------------------------------------------


def _delta_dims(text: str):
  """"6" -> 6; "1,1,1,0" -> mask; "none" / "0" -> 0 (no delta, overriding a policy_config.json)."""
  if text.lower() in ("none", "", "0"):
    return 0
  if "," in text:
    return tuple(bool(int(x)) for x in text.split(","))
  return int(text)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m apt_jax.serve", description=__doc__.split("\n\n")[0])
  _policy.add_checkpoint_args(p)
  p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 exposes it)")
  p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
  p.add_argument("--env", default=None, choices=sorted(_envs.ENVS), help="robot request layout (default libero)")
  p.add_argument("--asset_id", default=None, help="norm stats under assets/<asset_id>/ (needed if several)")
  p.add_argument("--tokenizer", default=None, help="PaliGemma SentencePiece model (default assets/tokenizer.model)")
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "stored"],
                 help="params dtype at inference (openpi: bfloat16)")
  p.add_argument("--delta_action_dims", type=_delta_dims, default=None,
                 help="action dims predicted relative to the state: k (first k) or a 0/1 list; openpi LIBERO: 6")
  p.add_argument("--use_quantile_norm", action=argparse.BooleanOptionalAction, default=None)
  p.add_argument("--default_prompt", default=None)
  p.add_argument("--num_steps", type=int, default=None, help="flow integration steps (default 10)")
  p.add_argument("--seed", type=int, default=None)
  p.add_argument("--api_key_file", default=None,
                 help=f"file holding the API key clients must send (or set ${API_KEY_ENV}); default: no token")
  p.add_argument("--max_frame_mb", type=float, default=DEFAULT_MAX_FRAME_BYTES / 2**20)
  p.add_argument("--max_connections", type=int, default=64)
  p.add_argument("--infer_threads", type=int, default=1, help="inferences run at a time")
  p.add_argument("--infer_timeout_s", type=float, default=DEFAULT_INFER_TIMEOUT_S,
                 help="per-request inference timeout: the client gets an error (close code 1011)")
  p.add_argument("--allow_unnormalized", action="store_true",
                 help="serve even if the checkpoint has no norm stats for the asset its model was trained with")
  p.add_argument("--no_warmup", action="store_true", help="skip compiling the model before accepting clients")
  return p


def _api_key(args) -> str | None:
  if args.api_key_file:
    key = pathlib.Path(args.api_key_file).read_text(encoding="utf-8").strip()
    if not key:
      raise ValueError(f"{args.api_key_file} is empty")
    return key
  return os.environ.get(API_KEY_ENV) or None


def main(argv=None) -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  args = build_parser().parse_args(argv)
  dtype = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "stored": None}[args.dtype]
  pol = _policy.create_trained_policy(
      args.checkpoint, model_config=args.model_config, head=args.head, dtype=dtype,
      experiment_config=configs.load(args.experiment) if args.experiment else None, env=args.env,
      asset_id=args.asset_id, tokenizer_path=args.tokenizer, delta_action_dims=args.delta_action_dims,
      use_quantile_norm=args.use_quantile_norm, default_prompt=args.default_prompt, num_steps=args.num_steps,
      seed=args.seed, allow_unnormalized=args.allow_unnormalized)
  if not args.no_warmup:
    _log.info("Compiling the model (warm-up)...")
    _log.info("Warm-up took %.1f s", pol.warmup())
  server = PolicyServer(pol, host=args.host, port=args.port, api_key=_api_key(args),
                        max_frame_bytes=int(args.max_frame_mb * 2**20), max_connections=args.max_connections,
                        infer_threads=args.infer_threads, infer_timeout_s=args.infer_timeout_s)
  with contextlib.suppress(KeyboardInterrupt):
    server.serve_forever()


if __name__ == "__main__":
  main()
