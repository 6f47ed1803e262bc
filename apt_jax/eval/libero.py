r"""LIBERO / LIBERO-PRO evaluation client for a policy server speaking openpi's websocket protocol.

  .venv-libero/bin/python -m apt_jax.eval.libero --port 8000 --suites libero_spatial_swap,libero_spatial_task \
      --out out/eval/my_ckpt --checkpoint my_ckpt [--trials 50] [--workers 2] [--video_every 50]

Runs in `.venv-libero` (`make libero`), never imports jax, and talks to `python -m apt_jax.serve` (or the scripted
expert, `apt_jax.eval.libero_expert`) through `openpi_client.WebsocketClientPolicy`. The protocol is openpi's
(examples/libero/main.py); per episode (suite s, task i, init state k):

  env.seed(seed); env.reset(); obs = env.set_init_state(init_states[k]); 10 x env.step([0]*6 + [-1])
  until success or MAX_STEPS[base(s)] policy steps: every `replan_steps` steps send
    observation/image        agentview rotated 180 deg, resize_with_pad to 224, uint8 [224, 224, 3]
    observation/wrist_image  eye-in-hand, same                                 uint8 [224, 224, 3]
    observation/state        eef pos (3) ++ axis-angle of the xyzw eef quat (3) ++ gripper qpos (2)  float32 [8]
    prompt                   the task instruction (below)
  and execute the first `replan_steps` actions of the returned chunk [H, 7] (OSC deltas, gripper -1 open, +1 close).

Instruction: `task.language` is built from the BDDL *file name*, so it is the same in a LIBERO-PRO suite and its
base; the perturbed text of `_lan` / `_task` is only in the BDDL's `(:language ...)`, i.e. `env.language_instruction`.
`--prompt auto` (default) sends `env.language_instruction` for `_lan` / `_task` and `task.language` elsewhere: the
BDDL text of every spatial and object task (and 5 goal tasks) is itself a rewording of the file-name text that
openvla's training data carries ("pick the akita black bowl ..." vs "pick up the black bowl ..."), so sending it on
base suites would evaluate paraphrases. `--prompt bddl` / `filename` force one source.

Beyond openpi: the env is seeded before every episode (results do not depend on which worker ran what before);
`--privileged` adds simulator state under the `privileged` key for the scripted positive control; episodes are
appended to `episodes.jsonl` as they finish (a rerun skips those recorded), `summary.{md,json,png}` at the end.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
from openpi_client import image_tools
from openpi_client import websocket_client_policy
from websockets.exceptions import ConnectionClosed

# Rendering must be chosen before mujoco is imported; never leave it unset (EGL or OSMesa, no display here).
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

_log = logging.getLogger(__name__)

# Policy steps per episode (the longest training demo + ~10%, openpi's examples/libero/main.py).
BASE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
# LIBERO-PRO perturbations shipped with resources (`_env` is registered without them). Each PRO suite keeps its base's
# tasks, init-state count and step limit.
PRO_PERTURBATIONS = ("lan", "object", "swap", "task")
PRO_BASES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
SUITES = tuple(BASE_MAX_STEPS) + tuple(f"{b}_{p}" for b in PRO_BASES for p in PRO_PERTURBATIONS)
# Perturbations whose instruction differs from the base suite's: sent from the BDDL (module docstring).
BDDL_PROMPT_PERTURBATIONS = ("lan", "task")

DUMMY_ACTION = [0.0] * 6 + [-1.0]
NUM_STEPS_WAIT = 10
RESOLUTION = 256  # render size (openvla's regenerated training data)
RESIZE = 224
SEED = 7
PRIVILEGED_KEY = "privileged"


def base_suite(suite: str) -> str:
  """libero_spatial_swap -> libero_spatial; a base suite -> itself; unknown names raise, listing the known ones."""
  if suite not in SUITES:
    raise ValueError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
  return next(b for b in sorted(BASE_MAX_STEPS, key=len, reverse=True) if suite.startswith(b))


def max_steps(suite: str) -> int:
  return BASE_MAX_STEPS[base_suite(suite)]


def perturbation(suite: str) -> str | None:
  """libero_goal_task -> "task"; a base suite -> None."""
  rest = suite[len(base_suite(suite)):]
  return rest[1:] if rest else None


def prompt_from_bddl(suite: str, source: str = "auto") -> bool:
  if source not in ("auto", "bddl", "filename"):
    raise ValueError(f"--prompt must be auto, bddl or filename, got {source!r}")
  return source == "bddl" or (source == "auto" and perturbation(suite) in BDDL_PROMPT_PERTURBATIONS)


# --- Observation -> request -----------------------------------------------------------------------------------------


def quat2axisangle(quat) -> np.ndarray:
  """xyzw quaternion -> axis * angle (3,), robosuite's convention (angle = 2 acos(w) in [0, 2 pi], no sign
  canonicalisation), which is what openpi's client and openvla's LIBERO data use."""
  x = np.asarray(quat, np.float64)
  w = np.clip(x[3], -1.0, 1.0)
  den = math.sqrt(1.0 - w * w)
  if math.isclose(den, 0.0):
    return np.zeros(3)
  return x[:3] * 2.0 * math.acos(w) / den


def upright(image: np.ndarray) -> np.ndarray:
  """LIBERO renders upside down: rotate 180 deg (openpi and openvla's training data do the same)."""
  return np.ascontiguousarray(image[::-1, ::-1])


def robot_state(obs) -> np.ndarray:
  """float32 [8]: eef pos (3), axis-angle (3), gripper qpos (2) (openvla's `observation/state`)."""
  return np.concatenate([obs["robot0_eef_pos"], quat2axisangle(obs["robot0_eef_quat"]),
                         obs["robot0_gripper_qpos"]]).astype(np.float32)


def make_request(obs, prompt: str, resize: int = RESIZE) -> dict:
  """One raw LIBERO observation -> openpi's LIBERO request (module docstring)."""
  img = lambda key: image_tools.convert_to_uint8(image_tools.resize_with_pad(upright(obs[key]), resize, resize))
  return {
      "observation/image": img("agentview_image"),
      "observation/wrist_image": img("robot0_eye_in_hand_image"),
      "observation/state": robot_state(obs),
      "prompt": prompt,
  }


def privileged_state(env) -> dict:
  """Simulator state for scripted policies (never sent unless asked for): the BDDL goal, every object's pose and
  extent, every site's position.

    goal:   list of predicates, e.g. [["in", "alphabet_soup_1", "basket_1_contain_region"]]
    bodies: name -> float64 [7] world position (3) ++ xyzw quaternion (4)
    aabb:   name -> float64 [6] world bounding box (min xyz, max xyz) of the body's collision geoms
    sites:  name -> float64 [3] world position
  """
  e = env.env
  model, data = e.sim.model, e.sim.data
  corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
  bodies, aabb = {}, {}
  for name, i in e.obj_body_id.items():
    wxyz = data.body_xquat[i]
    bodies[name] = np.concatenate([data.body_xpos[i], wxyz[1:], wxyz[:1]]).astype(np.float64)
    geoms = np.flatnonzero(model.geom_bodyid == i)
    collide = geoms[(model.geom_contype[geoms] | model.geom_conaffinity[geoms]) != 0]
    geoms = collide if len(collide) else geoms  # visual meshes' boxes are loose (a bowl's is ~1.6x too wide)
    if len(geoms):  # each geom's local box (center, half sizes) turned into world coordinates
      pts = np.concatenate([(corners * model.geom_aabb[g, 3:] + model.geom_aabb[g, :3])
                            @ data.geom_xmat[g].reshape(3, 3).T + data.geom_xpos[g] for g in geoms])
      aabb[name] = np.concatenate([pts.min(0), pts.max(0)])
  sites = {model.site_id2name(i): np.array(data.site_xpos[i], np.float64) for i in range(model.nsite)}
  return {"goal": [list(map(str, p)) for p in e.parsed_problem["goal_state"]], "bodies": bodies, "aabb": aabb,
          "sites": sites}


# --- Environments ---------------------------------------------------------------------------------------------------


def load_suite(suite: str):
  from libero.libero import benchmark
  base_suite(suite)  # clear error for unknown names
  return benchmark.get_benchmark_dict()[suite]()


def bddl_path(task) -> pathlib.Path:
  from libero.libero import get_libero_path
  return pathlib.Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file


def make_env(suite_obj, task_id: int, resolution: int = RESOLUTION):
  """-> (OffScreenRenderEnv, task). Cameras agentview + eye-in-hand at `resolution`^2."""
  from libero.libero.envs import OffScreenRenderEnv
  task = suite_obj.get_task(task_id)
  env = OffScreenRenderEnv(bddl_file_name=str(bddl_path(task)), camera_heights=resolution, camera_widths=resolution)
  return env, task


def bddl_language(task) -> str:
  """The BDDL's `(:language ...)`, parsed as the env does for `env.language_instruction`."""
  from libero.libero.envs import bddl_utils
  return str(bddl_utils.get_problem_info(str(bddl_path(task)))["language_instruction"])


def instruction(task, suite: str, source: str = "auto") -> str:
  """The prompt sent for `task` of `suite` (module docstring)."""
  return (bddl_language(task) if prompt_from_bddl(suite, source) else str(task.language)).strip()


@dataclasses.dataclass
class EpisodeTrace:
  """What an episode leaves besides its record: video frames and, when recording, the demonstration."""

  frames: list = dataclasses.field(default_factory=list)
  steps: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))


def run_episode(env, policy, init_state, *, prompt: str, max_policy_steps: int, replan_steps: int = 5,
                seed: int = SEED, privileged: bool = False, episode_id: str = "", trace: EpisodeTrace | None = None,
                video: bool = False, record: bool = False, on_request=None) -> dict:
  """One closed-loop episode (openpi's loop). Returns {success, steps, queries, env_seconds, infer_seconds}.

  With `privileged`, requests carry `privileged_state(env)` plus `episode` (`episode_id`) and `step` (policy steps
  so far) under PRIVILEGED_KEY. `trace.frames` gets upright agentview | wrist frames when `video`; `trace.steps` the
  demonstration (images at the render size, upright; state, joint_state, action) when `record`.
  `on_request(request)` sees every request sent.
  """
  trace = trace if trace is not None else EpisodeTrace()
  env.seed(seed)
  env.reset()
  obs = env.set_init_state(init_state)
  plan = collections.deque()
  env_s = infer_s = 0.0
  queries = steps = 0
  success = False
  for t in range(NUM_STEPS_WAIT + max_policy_steps):
    if t < NUM_STEPS_WAIT:
      action = np.asarray(DUMMY_ACTION)
    else:
      if not plan:
        request = make_request(obs, prompt)
        if privileged:
          request[PRIVILEGED_KEY] = dict(privileged_state(env), episode=episode_id, step=steps)
        if on_request is not None:
          on_request(request)
        t0 = time.perf_counter()
        chunk = np.asarray(policy.infer(request)["actions"])
        infer_s += time.perf_counter() - t0
        queries += 1
        if chunk.ndim != 2 or chunk.shape[0] < replan_steps or chunk.shape[1] < 7 or not np.all(np.isfinite(chunk)):
          raise ValueError(f"server reply 'actions' must be finite [H >= replan_steps={replan_steps}, >= 7], got "
                           f"shape {chunk.shape}")
        plan.extend(chunk[:replan_steps, :7])
      action = plan.popleft()
      if record:
        for key, value in (("image", upright(obs["agentview_image"])),
                           ("wrist_image", upright(obs["robot0_eye_in_hand_image"])),
                           ("state", robot_state(obs)), ("joint_state", obs["robot0_joint_pos"].astype(np.float32)),
                           ("action", np.asarray(action, np.float32))):
          trace.steps[key].append(value)
      steps += 1
    t0 = time.perf_counter()
    obs, _, done, _ = env.step(np.asarray(action, np.float64).tolist())
    env_s += time.perf_counter() - t0
    if video:
      trace.frames.append(np.concatenate([upright(obs["agentview_image"]),
                                          upright(obs["robot0_eye_in_hand_image"])], axis=1))
    if done and t >= NUM_STEPS_WAIT:
      success = True
      break
  return {"success": success, "steps": steps, "queries": queries, "env_seconds": round(env_s, 3),
          "infer_seconds": round(infer_s, 3)}


# --- Runs: episode plan, JSONL resume, workers ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunConfig:
  host: str = "127.0.0.1"
  port: int = 8000
  api_key: str | None = None
  checkpoint: str = "policy"
  out: str = "out/eval"
  replan_steps: int = 5
  seed: int = SEED
  max_steps: int | None = None  # overrides the suite's limit (smoke tests)
  prompt: str = "auto"
  privileged: bool = False
  video_every: int = 0
  save_requests: bool = False  # the first request of each episode -> <out>/requests/<episode>.npz
  record: str | None = None
  resolution: int = RESOLUTION


def episode_key(rec: dict) -> tuple:
  return (rec["checkpoint"], rec["suite"], int(rec["task_id"]), int(rec["init_index"]), int(rec["seed"]))


def read_records(path) -> list[dict]:
  """Episodes recorded in a JSONL file; a line cut short by a crash (the last one) is dropped with a warning."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  records = []
  lines = path.read_text().splitlines()
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if n == len(lines):
        _log.warning("%s:%d: incomplete last line dropped (%s)", path, n, e)
        continue
      raise ValueError(f"{path}:{n}: not a JSON record ({e})") from None
  return records


def _drop_partial_line(path: pathlib.Path) -> None:
  """Cuts a last line without its newline (a crash mid-write) so that appended records start on a line of their own."""
  if not path.exists() or path.stat().st_size == 0:
    return
  data = path.read_bytes()
  if not data.endswith(b"\n"):
    path.write_bytes(data[:data.rfind(b"\n") + 1])


def plan_episodes(suites, *, tasks=None, trials: int = 50, n_tasks=None) -> list[dict]:
  """Episodes in run order (suite, task, init index). `n_tasks`: suite -> task count (default: from the benchmark)."""
  out = []
  for suite in suites:
    count = n_tasks[suite] if n_tasks is not None else load_suite(suite).n_tasks
    task_ids = range(count) if tasks is None else tasks
    for task_id in task_ids:
      if not 0 <= task_id < count:
        raise ValueError(f"{suite}: task {task_id} out of range 0..{count - 1}")
      out.extend({"suite": suite, "task_id": task_id, "init_index": k} for k in range(trials))
  return out


class Worker:
  """One simulator process: keeps the env of the current task and one connection to the server."""

  def __init__(self, config: RunConfig):
    self.config = config
    self._connect()
    if self._policy.get_server_metadata().get("privileged") and not config.privileged:
      raise ValueError(f"the server at {config.host}:{config.port} reads simulator state: run with --privileged")
    self._suites = {}
    self._env = self._env_key = self._task = None

  def _connect(self) -> None:
    cfg = self.config
    self._policy = websocket_client_policy.WebsocketClientPolicy(cfg.host, cfg.port, api_key=cfg.api_key)

  def infer(self, request: dict) -> dict:
    """The server's reply; reconnects once if the connection was dropped (a keepalive ping left unanswered while a
    slow machine built an env closes it: seen at load 45 on 2 cores). Server errors are not retried."""
    try:
      return self._policy.infer(request)
    except ConnectionClosed as e:
      _log.warning("connection to %s:%d lost (%s); reconnecting", self.config.host, self.config.port, e)
      self._connect()
      return self._policy.infer(request)

  def _env_for(self, suite: str, task_id: int):
    if self._env_key != (suite, task_id):
      if self._env is not None:
        self._env.close()
      if suite not in self._suites:
        self._suites[suite] = load_suite(suite)
      self._env, self._task = make_env(self._suites[suite], task_id, self.config.resolution)
      self._env_key = (suite, task_id)
    return self._env, self._task

  def __call__(self, ep: dict) -> dict:
    cfg = self.config
    t0 = time.perf_counter()
    suite, task_id, k = ep["suite"], ep["task_id"], ep["init_index"]
    env, task = self._env_for(suite, task_id)
    init_states = self._suites[suite].get_task_init_states(task_id)
    if not 0 <= k < len(init_states):
      raise ValueError(f"{suite} task {task_id}: init state {k} out of range 0..{len(init_states) - 1}")
    prompt = instruction(task, suite, cfg.prompt)
    trace = EpisodeTrace()
    first = []
    video = bool(cfg.video_every) and ep.get("index", 0) % cfg.video_every == 0
    result = run_episode(env, self, init_states[k], prompt=prompt,
                         max_policy_steps=cfg.max_steps or max_steps(suite), replan_steps=cfg.replan_steps,
                         seed=cfg.seed, privileged=cfg.privileged, trace=trace, video=video,
                         episode_id=f"{suite}/{task_id}/{k}/{cfg.seed}/{os.getpid()}/{time.time_ns()}",
                         record=cfg.record is not None, on_request=first.append if cfg.save_requests else None)
    rec = {"checkpoint": cfg.checkpoint, "suite": suite, "task_id": task_id, "init_index": k,
           "instruction": prompt, "filename_instruction": str(task.language), "success": result.pop("success"),
           **result, "seconds": round(time.perf_counter() - t0, 3), "seed": cfg.seed}
    stem = f"{suite}_t{task_id:02d}_i{k:02d}"
    if first:
      rec["request"] = save_request(pathlib.Path(cfg.out) / "requests" / f"{stem}.npz", first[0])
    if video:
      outcome = "success" if rec["success"] else "failure"
      rec["video"] = write_video(pathlib.Path(cfg.out) / "videos" / f"{stem}_{outcome}.mp4", trace.frames)
    if cfg.record is not None and rec["success"]:
      rec["demo"] = write_demo(pathlib.Path(cfg.record) / "raw" / suite / f"{stem}.npz", trace.steps, prompt,
                               file_path=f"{suite}/{task.bddl_file}#init{k}")
    return rec


def save_request(path: pathlib.Path, request: dict) -> str:
  """The request's observation fields and prompt as npz ("observation/image" -> "observation.image")."""
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, **{k.replace("/", "."): np.asarray(v) for k, v in request.items() if k != PRIVILEGED_KEY})
  return str(path)


def write_video(path: pathlib.Path, frames, fps: int = 20) -> str:
  import imageio
  path.parent.mkdir(parents=True, exist_ok=True)
  imageio.mimwrite(str(path), frames, fps=fps)
  return str(path)


def write_demo(path: pathlib.Path, steps: dict, prompt: str, *, file_path: str) -> str:
  """A successful episode as arrays [T, ...] (written atomically), converted to RLDS by `apt_jax.eval.record`."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.npz")
  np.savez_compressed(tmp, **{k: np.stack(v) for k, v in steps.items()}, language_instruction=np.array(prompt),
                      file_path=np.array(file_path))
  os.replace(tmp, path)
  return str(path)


_WORKER: Worker | None = None


def _init_worker(config: RunConfig) -> None:
  global _WORKER
  logging.basicConfig(level=logging.WARNING)
  _WORKER = Worker(config)


def _run_in_worker(ep: dict) -> dict:
  return _WORKER(ep)


def run(config: RunConfig, episodes: list[dict], *, workers: int = 1, progress: bool = True) -> list[dict]:
  """Runs the episodes not yet in `<out>/episodes.jsonl`, appending each record as it finishes; returns all records
  of this checkpoint and seed in the file (old and new)."""
  from tqdm import tqdm
  out = pathlib.Path(config.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / "episodes.jsonl"
  done = {episode_key(r) for r in read_records(path)}
  _drop_partial_line(path)
  key = lambda ep: (config.checkpoint, ep["suite"], ep["task_id"], ep["init_index"], config.seed)
  todo = [dict(ep, index=i) for i, ep in enumerate(episodes) if key(ep) not in done]
  _log.info("%d episodes planned, %d already recorded in %s, %d to run", len(episodes), len(episodes) - len(todo),
            path, len(todo))
  bar = tqdm(total=len(todo), disable=not progress or not todo, desc=config.checkpoint, unit="ep", dynamic_ncols=True)
  successes = 0
  with open(path, "a", encoding="utf-8") as f:
    def write(rec):
      nonlocal successes
      f.write(json.dumps(rec) + "\n")
      f.flush()
      successes += rec["success"]
      bar.update(1)
      bar.set_postfix(success=f"{successes}/{bar.n}", suite=rec["suite"], refresh=False)

    if workers <= 1 or len(todo) <= 1:
      worker = Worker(config) if todo else None
      for ep in todo:
        write(worker(ep))
    else:
      ctx = multiprocessing.get_context("spawn")  # no forked GL / mujoco state
      with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(config,)) as pool:
        for rec in pool.imap_unordered(_run_in_worker, todo, chunksize=1):
          write(rec)
  bar.close()
  mine = {key(ep) for ep in episodes}
  return [r for r in read_records(path) if episode_key(r) in mine]


def export_demos(record_dir: str, python: str | None = None) -> None:
  """Converts the raw demonstrations to RLDS with the JAX venv's python (TensorFlow lives there, not here)."""
  repo = pathlib.Path(__file__).resolve().parents[2]
  python = python or str(repo / ".venv" / "bin" / "python")
  cmd = [python, "-m", "apt_jax.eval.record", "--dir", record_dir]
  if not pathlib.Path(python).exists():
    _log.warning("No %s: convert the recorded demonstrations with `%s`", python, " ".join(cmd))
    return
  subprocess.run(cmd, check=True, cwd=repo)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m apt_jax.eval.libero", description=__doc__.split("\n\n")[0])
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--api_key_file", default=None)
  p.add_argument("--suites", default="libero_spatial", help=f"comma-separated, from: {', '.join(SUITES)}")
  p.add_argument("--tasks", default=None, help="comma-separated task ids (default: all of each suite)")
  p.add_argument("--trials", type=int, default=50, help="init states per task, 0..trials-1 (LIBERO: 50)")
  p.add_argument("--out", required=True, help="output directory (episodes.jsonl, summary.*, videos/)")
  p.add_argument("--checkpoint", default="policy", help="name recorded with each episode (resume key)")
  p.add_argument("--replan_steps", type=int, default=5)
  p.add_argument("--seed", type=int, default=SEED)
  p.add_argument("--max_steps", type=int, default=None, help="policy steps per episode (default: the suite's)")
  p.add_argument("--prompt", default="auto", choices=["auto", "bddl", "filename"])
  p.add_argument("--privileged", action="store_true", help=f"add simulator state under '{PRIVILEGED_KEY}' (expert)")
  p.add_argument("--workers", type=int, default=1, help="simulator processes in parallel")
  p.add_argument("--video_every", type=int, default=0, help="write an MP4 of every k-th episode (0: none)")
  p.add_argument("--save_requests", action="store_true", help="save each episode's first request (npz)")
  p.add_argument("--record", default=None, help="write successful episodes as demonstrations under DIR")
  p.add_argument("--rlds_python", default=None, help="python with TensorFlow for --record (default .venv/bin/python)")
  p.add_argument("--no_progress", action="store_true")
  return p


def main(argv=None) -> list[dict]:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  args = build_parser().parse_args(argv)
  suites = [s.strip() for s in args.suites.split(",") if s.strip()]
  for s in suites:
    base_suite(s)
  tasks = None if args.tasks is None else [int(t) for t in args.tasks.split(",")]
  api_key = pathlib.Path(args.api_key_file).read_text(encoding="utf-8").strip() if args.api_key_file else None
  config = RunConfig(host=args.host, port=args.port, api_key=api_key, checkpoint=args.checkpoint, out=args.out,
                     replan_steps=args.replan_steps, seed=args.seed, max_steps=args.max_steps, prompt=args.prompt,
                     privileged=args.privileged, video_every=args.video_every, record=args.record,
                     save_requests=args.save_requests)
  records = run(config, plan_episodes(suites, tasks=tasks, trials=args.trials), workers=args.workers,
                progress=not args.no_progress)
  from apt_jax.eval import summary
  print(summary.write(args.out, records))
  if args.record:
    export_demos(args.record, args.rlds_python)
  return records


if __name__ == "__main__":
  sys.exit(main() and 0)
