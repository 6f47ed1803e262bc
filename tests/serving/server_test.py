"""The websocket server against the real openpi-client: round trip, malformed requests, big frames, token, health."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
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
from apt_jax import policy as _policy
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


def test_100mb_frame_is_closed_with_1009_and_the_server_keeps_serving(server, tiny_policy, rng):
  good = wcp.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
  ws, _ = _raw(server.port)
  ws.send(b"\0" * (100 * 2**20))  # the server reads the header, refuses, and discards the rest until we close
  with pytest.raises(websockets.ConnectionClosed) as closed:
    ws.recv(timeout=30)
  assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
  ws.close()
  assert good.infer(tiny_policy.transforms.env.example(rng))["actions"].shape == (4, 7)


def test_float_images_outside_minus_one_one_are_refused_naming_the_field_and_range(server, tiny_policy, rng):
  """A float image in 0..255 would have become all white (clipped to [0, 1])."""
  obs = dict(tiny_policy.transforms.env.example(rng),
             **{"observation/wrist_image": rng.uniform(0, 255, (64, 64, 3)).astype(np.float32)})
  obs["observation/wrist_image"][0, 0, 0], obs["observation/wrist_image"][0, 0, 1] = 0.0, 255.0
  msg, code = _expect_error(server.port, openpi_msgpack.packb(obs))
  assert code == 1007
  assert "'observation/wrist_image'" in msg and "observed range [0, 255]" in msg, msg


def test_over_long_prompt_is_an_error_unless_the_policy_config_truncates(server, tiny_policy, rng):
  long_prompt = " ".join(["pick up the red block and place it in the basket"] * 20)  # > max_token_len tokens
  obs = tiny_policy.transforms.env.example(rng, prompt=long_prompt)
  msg, code = _expect_error(server.port, openpi_msgpack.packb(obs))
  assert code == 1007 and "field 'prompt'" in msg and "exceeds max_token_len=48" in msg, msg
  truncating = dataclasses.replace(tiny_policy.transforms, truncate_prompt=True)
  pol = _policy.Policy(tiny_policy.model, truncating, tiny_policy.norm_stats)
  with running_server(pol) as s:
    client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=s.port)
    assert client.infer(obs)["actions"].shape == (4, 7)
    client._ws.close()


class _HangsOnPrompt:
  """A policy whose inference blocks until released when the prompt is "hang"; otherwise the tiny policy."""

  def __init__(self, policy):
    self.policy, self.release, self.metadata = policy, threading.Event(), policy.metadata

  def infer(self, obs):
    if obs.get("prompt") == "hang":
      self.release.wait(60)
    if obs.get("prompt") == "crash":
      raise RuntimeError("the model fell over")
    return self.policy.infer(obs)


def test_hung_inference_times_out_with_1011_while_other_clients_are_served(tiny_policy, rng):
  pol = _HangsOnPrompt(clone(tiny_policy, 4))
  env = tiny_policy.transforms.env
  try:
    with running_server(pol, infer_timeout_s=2.0) as s:  # one inference thread: the hung one holds it
      other = wcp.WebsocketClientPolicy(host="127.0.0.1", port=s.port)
      with concurrent.futures.ThreadPoolExecutor(1) as pool:
        hung = pool.submit(_expect_error, s.port, openpi_msgpack.packb(env.example(rng, prompt="hang")))
        time.sleep(0.5)
        t0 = time.monotonic()
        assert other.infer(env.example(rng))["actions"].shape == (4, 7)  # served after at most the timeout
        assert time.monotonic() - t0 < 10
        msg, code = hung.result(timeout=30)
      assert code == 1011 and msg == "Inference timed out after 2.0 s", msg
      assert other.infer(env.example(rng))["actions"].shape == (4, 7)
      assert s.stats["timeouts"] == 1
      other._ws.close()
  finally:
    pol.release.set()


def test_inference_error_is_closed_with_1011(tiny_policy, rng):
  with running_server(_HangsOnPrompt(clone(tiny_policy, 4))) as s:
    msg, code = _expect_error(s.port, openpi_msgpack.packb(tiny_policy.transforms.env.example(rng, prompt="crash")))
  assert code == 1011 and msg == "Internal server error: RuntimeError: the model fell over", msg


def test_mixed_load_answers_every_malformed_request_with_1007_and_every_other_with_actions(server, tiny_policy):
  """benchmarks/serving_soak.py at a small size: 4 clients, a quarter of the requests malformed (each kind)."""
  from benchmarks import serving_soak

  env = tiny_policy.transforms.env
  out = serving_soak.soak(server.port, os.getpid(), 120, 4, 0.25, 0,
                          lambda seed: env.example(np.random.default_rng(seed), prompt=serving_soak.PROMPT), (4, 7))
  assert out["errors"]["unexpected"] == 0, out["errors"]["unexpected_examples"]
  assert out["errors"]["expected_1007"] == out["malformed_sent"]
  assert all(n > 0 for n in out["errors"]["by_kind"].values()), out["errors"]["by_kind"]
  assert out["latency_ms"]["n"] + out["malformed_sent"] >= 120 - 120 // 20  # all but the warm-up are timed


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


def test_binds_localhost_by_default(tiny_ckpt, monkeypatch):
  """The socket `python -m apt_jax.serve` listens on, without --host, is bound to 127.0.0.1."""
  bound = []

  def serve_once(self):
    with self:
      bound.append(self.address)

  monkeypatch.setattr(serve.PolicyServer, "serve_forever", serve_once)
  serve.main(["--checkpoint", str(tiny_ckpt), "--port", "0", "--no_warmup"])
  assert len(bound) == 1 and bound[0][0] == "127.0.0.1" and bound[0][1] > 0


def _listening_addresses(port: int) -> set[str]:
  """IPv4 addresses with a socket listening on `port`, from the kernel's table (/proc/net/tcp, state 0A)."""
  out = set()
  for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
    local, state = line.split()[1], line.split()[3]
    ip_hex, port_hex = local.split(":")
    if state == "0A" and int(port_hex, 16) == port:
      out.add(socket.inet_ntoa(bytes.fromhex(ip_hex)[::-1]))
  return out


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
      assert _listening_addresses(port) == {"127.0.0.1"}  # the default bind, as the kernel sees it
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


@pytest.mark.parametrize("env", ["libero", "droid"])
def test_serves_an_openpi_pi05_checkpoint_with_the_state_in_the_prompt(openpi_pi05_fixture_dir, tiny_tokenizer_path,
                                                                       tmp_path, rng, env):
  """openpi's π0.5 checkpoint behind the server, with openpi's pi05 transforms (pi05_libero / pi05_droid: quantile
  norm, the normalized state discretized into the prompt): the prompt tokens are those of the text built by hand."""
  from apt_jax import policy as _policy
  from apt_jax.data import normalize as _normalize
  from apt_jax.models import tokenizer as _tokenizer
  model_kwargs = testing.fixture_model_kwargs(openpi_pi05_fixture_dir)
  assert model_kwargs["pi05"] and model_kwargs["discrete_state_input"]
  cfg = tmp_path / "model.json"
  cfg.write_text(json.dumps(dict(model_kwargs, dtype="bfloat16")))
  step = openpi_pi05_fixture_dir / "checkpoint"
  stats = _normalize.load(step / "assets/physical-intelligence/libero/norm_stats.json")
  if env == "droid":  # DROID acts in 8 dims, the fixture's LIBERO stats have 7: repeat the gripper's (a width check)
    a = stats["actions"]
    stats["actions"] = _normalize.NormStats(*(None if x is None else np.append(x, x[-1:]) for x in
                                              (a.mean, a.std, a.q01, a.q99)))
    step = tmp_path / "step"
    (step / "params").parent.mkdir()
    (step / "params").symlink_to(openpi_pi05_fixture_dir / "checkpoint" / "params")
    _normalize.save(step / "assets/physical-intelligence/libero", stats)
  pol = _policy.create_trained_policy(step, model_config=cfg, head="pi0", env=env,
                                      asset_id="physical-intelligence/libero", tokenizer_path=tiny_tokenizer_path,
                                      use_quantile_norm=True)
  obs = pol.transforms.env.example(rng, prompt="put the bowl on the plate")
  state = np.concatenate([obs[k] for k, _ in pol.transforms.env.state_fields])
  assert state.shape == (8,)
  q01, q99 = np.asarray(stats["state"].q01, np.float32), np.asarray(stats["state"].q99, np.float32)
  bins = np.digitize((state - q01) / (q99 - q01 + 1e-6) * 2 - 1, np.linspace(-1, 1, 257)[:-1]) - 1
  text = f"Task: put the bowl on the plate, State: {' '.join(map(str, bins))};\nAction: "
  sp = _tokenizer.PaligemmaTokenizer(tiny_tokenizer_path, max_len=200)
  want = [sp.bos_id] + sp.encode(text)
  data, _ = pol.prepare(obs)
  np.testing.assert_array_equal(data["tokenized_prompt"][0, :len(want)], want)
  assert not data["tokenized_prompt_mask"][0, len(want):].any()
  with running_server(pol) as s:
    client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=s.port)
    out = client.infer(obs)
    assert out["actions"].shape == (model_kwargs["action_horizon"], pol.transforms.env.action_dim)
    assert np.all(np.isfinite(out["actions"]))
    client._ws.close()
