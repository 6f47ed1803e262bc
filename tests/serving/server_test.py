"""The websocket server against the real openpi-client: round trip, malformed requests, big frames, token, health."""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
import websockets
from openpi_client import action_chunk_broker
from openpi_client import msgpack_numpy as openpi_msgpack
from openpi_client import websocket_client_policy as wcp
from websockets.sync.client import connect

from apt_jax import msgpack_numpy
from apt_jax import serve
from apt_jax import testing
from tests.serving.conftest import clone
from tests.serving.conftest import running_server

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tiny_policy):
  with running_server(clone(tiny_policy, 11)) as s:
    yield s


def _raw(port, **kw):
  ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=10, close_timeout=5, **kw)
  meta = openpi_msgpack.unpackb(ws.recv(timeout=10))
  return ws, meta


def _expect_error(port, frame) -> tuple[str, int]:
  """Sends one frame on a fresh raw connection; returns (error text, close code)."""
  ws, _ = _raw(port)
  try:
    ws.send(frame)
    msg = ws.recv(timeout=30)
    assert isinstance(msg, str), f"expected a text error frame, got {type(msg)}"
    with pytest.raises(websockets.ConnectionClosed) as closed:
      ws.recv(timeout=10)
    return msg, closed.value.rcvd.code
  finally:
    ws.close()


def test_wire_format_is_openpi_msgpack_numpy(rng):
  obj = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": {"c": np.arange(5, dtype=np.int64)},
         "s": "text", "g": np.float32(1.5), "img": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "l": [1, 2.0]}
  assert msgpack_numpy.packb(obj) == openpi_msgpack.packb(obj)
  back = msgpack_numpy.unpackb(openpi_msgpack.packb(obj))
  np.testing.assert_array_equal(back["a"], obj["a"])
  assert back["g"] == np.float32(1.5) and back["g"].dtype == np.float32 and back["l"] == [1, 2.0]
  with pytest.raises(ValueError, match="Unsupported dtype"):
    msgpack_numpy.packb({"x": np.array([1 + 2j])})


@pytest.mark.parametrize("frame, needle", [
    (msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "<U0", b"shape": [10**12]}}),
     "unsupported array dtype"),
    (msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [2**40, 2**40, 0]}}),
     "array is too big"),
    (msgpack.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 4, b"dtype": 7, b"shape": [1]}}), "dtype"),
    (msgpack.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 4, b"dtype": "<f4", b"shape": [-4]}}), "shape"),
    (msgpack.packb({"x": {b"__npgeneric__": True, b"data": "abc", b"dtype": "<f4"}}), "numpy scalar"),
    (b"\x91" * 100_000 + b"\x00", "malformed msgpack"),
    (b"\xdf\xff\xff\xff\xff", "malformed msgpack"),
])
def test_decoder_rejects_hostile_frames(frame, needle):
  with pytest.raises(msgpack_numpy.RequestError, match=needle):
    msgpack_numpy.unpackb(frame)


def test_openpi_client_round_trip_equals_direct_policy(tiny_policy, rng):
  direct = clone(tiny_policy, 21)
  with running_server(clone(tiny_policy, 21)) as s:
    client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=s.port)
    meta = client.get_server_metadata()
    assert meta == dict(tiny_policy.metadata)
    assert (meta["action_horizon"], meta["action_dim"], meta["apt_stage"]) == (4, 7, "none")
    env = tiny_policy.transforms.env
    requests = [env.example(rng, prompt="pick up the red block"),
                env.example(rng, image_shape=(256, 256, 3), prompt="open the drawer"),
                dict(env.example(rng), **{"observation/image": rng.random((3, 224, 224), dtype=np.float32)})]
    for i, obs in enumerate(requests):
      got = client.infer(obs)
      want = direct.infer(obs)
      assert got["actions"].shape == (4, 7) and got["actions"].dtype == np.float32
      np.testing.assert_array_equal(got["actions"], want["actions"])
      assert set(got) == {"actions", "policy_timing", "server_timing"}
      assert got["server_timing"]["infer_ms"] >= got["policy_timing"]["infer_ms"] > 0
      assert ("prev_total_ms" in got["server_timing"]) == (i > 0)
    # openpi's ActionChunkBroker replays the chunk one step at a time.
    broker = action_chunk_broker.ActionChunkBroker(client, action_horizon=4)
    steps = [broker.infer(requests[0])["actions"] for _ in range(4)]
    assert all(a.shape == (7,) for a in steps)
    client._ws.close()


def test_malformed_requests_error_while_another_client_is_served(server, tiny_policy, rng):
  env = tiny_policy.transforms.env
  good = wcp.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
  assert good.infer(env.example(rng))["actions"].shape == (4, 7)

  def bad(**changes):
    obs = env.example(rng)
    for k, v in changes.items():
      if v is None:
        del obs[k]
      else:
        obs[k] = v
    return openpi_msgpack.packb(obs)

  bad_array = msgpack.packb({"observation/state": {b"__ndarray__": True, b"data": b"\0" * 7, b"dtype": "<f4",
                                                   b"shape": [8]}})
  object_array = msgpack.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}})
  cases = [
      (b"\xc1\x00garbage\xff", "malformed msgpack"),
      (bad(prompt=None), "'prompt'"),
      (bad(**{"observation/image": np.zeros((224, 224, 4), np.uint8)}), "'observation/image'"),
      (bad(**{"observation/wrist_image": np.zeros((224, 224, 3), np.float64) + np.inf}), "'observation/wrist_image'"),
      (bad(**{"observation/state": np.zeros(9, np.float32)}), "'observation/state'"),
      (bad(**{"observation/state": None}), "'observation/state'"),
      (bad_array, "needs 32 bytes, got 7"),
      (object_array, "unsupported array dtype"),
      (openpi_msgpack.packb([1, 2, 3]), "'<request>'"),
      ("a text frame", "text frame"),
  ]
  for frame, needle in cases:
    msg, code = _expect_error(server.port, frame)
    assert msg.startswith("Invalid request") and needle in msg, (needle, msg)
    assert code == 1007
    assert good.infer(env.example(rng))["actions"].shape == (4, 7)

  # The real client surfaces the error frame as openpi does.
  other = wcp.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
  with pytest.raises(RuntimeError, match=r"Error in inference server:\nInvalid request: field 'prompt'"):
    other.infer({k: v for k, v in env.example(rng).items() if k != "prompt"})
  assert good.infer(env.example(rng))["actions"].shape == (4, 7)


def test_100mb_frame_is_refused_and_the_server_keeps_serving(server, tiny_policy, rng):
  good = wcp.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
  ws, _ = _raw(server.port)
  with pytest.raises(websockets.ConnectionClosed) as closed:
    try:
      ws.send(b"\0" * (100 * 2**20))
    except websockets.ConnectionClosed:
      raise
    except OSError:  # the server may drop the socket while the frame is still being written
      ws.recv(timeout=10)
    ws.recv(timeout=10)
  assert closed.value.rcvd is None or closed.value.rcvd.code == 1009
  assert closed.value.sent is None or closed.value.sent.code == 1009
  ws.close()
  assert good.infer(tiny_policy.transforms.env.example(rng))["actions"].shape == (4, 7)


def test_concurrent_clients(server, tiny_policy):
  env = tiny_policy.transforms.env

  def run(i):
    client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    r = np.random.default_rng(i)
    outs = [client.infer(env.example(r))["actions"] for _ in range(3)]
    client._ws.close()
    return outs

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(run, range(4), timeout=120))
  assert all(a.shape == (4, 7) and np.all(np.isfinite(a)) for outs in results for a in outs)


def test_healthz(server):
  with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as r:
    assert r.status == 200 and r.read().strip() == b"OK"


def test_api_key(tiny_policy, rng):
  with running_server(tiny_policy, api_key="s3cret-key") as s:
    for key in ("wrong-key", None):
      with pytest.raises(websockets.InvalidStatus) as e:
        wcp.WebsocketClientPolicy(host="127.0.0.1", port=s.port, api_key=key)
      assert e.value.response.status_code == 401
    client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=s.port, api_key="s3cret-key")
    assert client.infer(tiny_policy.transforms.env.example(rng))["actions"].shape == (4, 7)
    with urllib.request.urlopen(f"http://127.0.0.1:{s.port}/healthz", timeout=10) as r:
      assert r.status == 200
    assert s.stats["rejected"] == 2
    client._ws.close()


def test_binds_localhost_by_default():
  args = serve.build_parser().parse_args(["--checkpoint", "x"])
  assert args.host == "127.0.0.1" and args.port == 8000 and args.max_frame_mb == 16


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_cli_serves_a_checkpoint(tiny_ckpt, tmp_path, rng):
  """`python -m apt_jax.serve --checkpoint DIR` in a subprocess, with a token from a file."""
  port = _free_port()
  key_file = tmp_path / "key"
  key_file.write_text("cli-key\n")
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env.pop(serve.API_KEY_ENV, None)
  with open(tmp_path / "server.log", "w") as log:
    proc = subprocess.Popen([sys.executable, "-m", "apt_jax.serve", "--checkpoint", str(tiny_ckpt), "--port",
                             str(port), "--api_key_file", str(key_file)], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
      deadline = time.monotonic() + 120
      while True:
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        try:
          with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            if r.status == 200:
              break
        except (urllib.error.URLError, ConnectionError, OSError):
          pass
        assert time.monotonic() < deadline, "server did not come up: " + (tmp_path / "server.log").read_text()
        time.sleep(0.5)
      client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=port, api_key="cli-key")
      assert client.get_server_metadata()["env"] == "libero"
      out = client.infer(client_obs := {"observation/image": np.zeros((224, 224, 3), np.uint8),
                                        "observation/wrist_image": np.zeros((224, 224, 3), np.uint8),
                                        "observation/state": np.zeros(8, np.float32), "prompt": "pick up the cup"})
      assert out["actions"].shape == (4, 7) and client_obs
      client._ws.close()
    finally:
      proc.terminate()
      try:
        proc.wait(timeout=20)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def test_serves_an_openpi_checkpoint(openpi_fixture_dir, tiny_tokenizer_path, tmp_path, rng):
  """openpi's own checkpoint (params + assets/<asset_id>/norm_stats.json, no model config) behind the server."""
  from apt_jax import policy as _policy
  model_kwargs = testing.fixture_model_kwargs(openpi_fixture_dir)
  cfg = tmp_path / "model.json"
  cfg.write_text(json.dumps(dict(model_kwargs, dtype="bfloat16")))
  pol = _policy.create_trained_policy(openpi_fixture_dir / "checkpoint", model_config=cfg, head="pi0",
                                      tokenizer_path=tiny_tokenizer_path, delta_action_dims=6)
  assert pol.metadata["norm_stats"] == "physical-intelligence/libero" and pol.metadata["param_dtype"] == "bfloat16"
  with running_server(pol) as s:
    client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=s.port)
    out = client.infer(pol.transforms.env.example(rng, prompt="put the bowl on the plate"))
    assert out["actions"].shape == (model_kwargs["action_horizon"], 7) and np.all(np.isfinite(out["actions"]))
    client._ws.close()
