r"""Scripted pick-and-place expert for LIBERO, served over the same websocket protocol: the positive control.

  python -m apt_jax.eval.libero_expert --port 8001        # then, in .venv-libero:
  python -m apt_jax.eval.libero --port 8001 --privileged --suites libero_object --out out/expert [--record DIR]

If this policy does not succeed through the evaluation client, the harness is broken, not the policy. It reads the
simulator state that the client adds under `privileged` (`apt_jax.eval.libero.privileged_state`: the BDDL goal,
object poses and bounding boxes, site positions, an episode id and the step) and solves goals of the form
`(In obj region)` / `(On obj target)` by a phase machine per episode:

  approach (above the object) -> descend -> close -> lift -> carry (above the target) -> lower -> release -> retreat

Each phase moves the end effector with a proportional controller in world coordinates (OSC deltas: 1.0 moves about
1 cm per 20 Hz step once the controller has caught up), holds the gripper pointing down with the yaw of the start of
the episode, and returns a chunk of `horizon` actions rolled out on that first-order model. Phases advance on
measured state (tolerances below); a dropped object sends it back to `approach`.

Grasps: mid-height, or just below the top for tall objects (bottles, cartons), no lower than the fingertips reach
above the table (a stalled descent closes where it is); bowls by the rim on the side facing the gripper.

Known limits: objects wider than the open gripper (libero_object_object's bigger cans), flat boxes now and then
(cream cheese), and goals other than In / On (opening drawers, turning knobs: most of libero_goal / libero_10); a
goal with no In / On predicate at all is answered with an error naming `privileged/goal`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import threading

import numpy as np

from apt_jax.envs import base as _envs

STEP_M = 0.01  # eef displacement per step at action 1.0 (measured in LIBERO's OSC_POSE, steady state)
ROT_RAD = 0.1  # rotation per step at action 1.0 (world frame, steady state)
TOL_XY, TOL_Z = 0.01, 0.012
CLOSE_STEPS, RELEASE_STEPS = 14, 10
CLEARANCE = 0.10  # above the grasp point before descending
CARRY = 0.05  # the object's bottom this far above the target's top while carrying
PLACE = 0.02  # ... and above the target (region site or object top) when released
TALL, TOP_GRASP = 0.08, 0.035  # objects taller than TALL are grasped TOP_GRASP below their top
HOLLOW, RIM, RIM_DEPTH = ("bowl", "ramekin"), 0.012, 0.02  # grasped at the rim: RIM inside the edge, RIM_DEPTH down
FINGERTIPS = 0.015  # lowest grasp point above an object's bottom (lower, the fingertips meet the table)
PHASES = ("approach", "descend", "close", "lift", "carry", "lower", "release", "retreat")


def _rotvec_from_matrix(r: np.ndarray) -> np.ndarray:
  """Rotation matrix -> rotation vector with angle in [0, pi] (quaternion via Shepperd's method)."""
  t = np.trace(r)
  i = int(np.argmax([t, r[0, 0], r[1, 1], r[2, 2]]))
  if i == 0:
    w = math.sqrt(1 + t) / 2
    xyz = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (4 * w)
  else:
    a = i - 1
    b, c = (a + 1) % 3, (a + 2) % 3
    q = math.sqrt(1 + 2 * r[a, a] - t) / 2
    xyz = np.zeros(3)
    xyz[a], xyz[b], xyz[c] = q, (r[b, a] + r[a, b]) / (4 * q), (r[c, a] + r[a, c]) / (4 * q)
    w = (r[c, b] - r[b, c]) / (4 * q)
  if w < 0:
    w, xyz = -w, -xyz
  s = np.linalg.norm(xyz)
  return np.zeros(3) if s < 1e-12 else xyz / s * 2 * math.atan2(s, w)


def _yaw_down(yaw: float) -> np.ndarray:
  """Gripper pointing down (180 deg about x, LIBERO's start pose) turned by `yaw` about the world z axis."""
  c, s = math.cos(yaw), math.sin(yaw)
  return np.array([[c, s, 0], [s, -c, 0], [0, 0, -1.0]])


@dataclasses.dataclass
class _Episode:
  phase: str = "approach"
  since: int = 0  # step at which the phase started
  orientation: np.ndarray | None = None  # held orientation (matrix)
  grasp_xy: np.ndarray | None = None  # where the object was lifted
  last_eef: np.ndarray | None = None  # eef position at the previous query (stall detection)
  offset: np.ndarray | None = None  # object center - eef when grasped
  hold: np.ndarray | None = None  # where the gripper closes


def _field(priv: dict, key: str):
  if key not in priv:
    raise _envs.InputError(f"privileged/{key}", f"missing (the client sent {sorted(map(str, priv))})")
  return priv[key]


def _parse_goal(goal, bodies, sites) -> tuple[str, str]:
  """The first (In obj region) / (On obj target) predicate -> (obj, target)."""
  for pred in goal:
    if len(pred) == 3 and pred[0].lower() in ("in", "on") and pred[1] in bodies and (pred[2] in bodies
                                                                                       or pred[2] in sites):
      return pred[1], pred[2]
  raise _envs.InputError("privileged/goal", f"no (In obj region) / (On obj target) predicate the expert can solve "
                         f"in {goal}")


class ExpertPolicy:
  """`infer(request)` -> {"actions": float32 [horizon, 7]} from `request["privileged"]` (see the module docstring)."""

  def __init__(self, horizon: int = 10):
    self.horizon = horizon
    self.metadata = {"policy": "libero_expert", "privileged": True, "action_horizon": horizon, "env": "libero"}
    self._episodes: dict[str, _Episode] = {}
    self._lock = threading.Lock()

  def infer(self, obs) -> dict:
    priv = _envs.get_field(obs, "privileged")
    if not isinstance(priv, dict):
      raise _envs.InputError("privileged", "expected a map (run the client with --privileged)")
    state = _envs.parse_vector(_envs.get_field(obs, "observation/state"), "observation/state", 8)
    bodies, sites = _field(priv, "bodies"), _field(priv, "sites")
    obj, target = _parse_goal(_field(priv, "goal"), bodies, sites)
    step = int(_field(priv, "step"))
    with self._lock:
      ep = self._episodes.setdefault(str(_field(priv, "episode")), _Episode())
      if len(self._episodes) > 4096:  # finished episodes are never announced: forget the oldest
        self._episodes.pop(next(iter(self._episodes)))
    eef = state[:3].astype(np.float64)
    width = float(state[6] - state[7])
    rotation = _rotation_of_state(state)
    if ep.orientation is None:
      ep.orientation = _yaw_down(math.atan2(rotation[1, 0], rotation[0, 0]))

    pose = np.asarray(bodies[obj], np.float64)
    lo, hi = _extent(priv, obj, pose)
    center = np.array([pose[0], pose[1], (lo[2] + hi[2]) / 2])
    # Tall objects (bottles, cartons) are taken below their top, the rest at mid-height, never lower than the
    # fingertips reach above the table.
    grasp_z = hi[2] - TOP_GRASP if hi[2] - lo[2] > TALL else center[2]
    grasp = np.array([pose[0], pose[1], max(grasp_z, lo[2] + FINGERTIPS)])
    if any(k in obj for k in HOLLOW):  # bowls: pinch the rim on the side facing the gripper (fingers close along y)
      side = 1.0 if eef[1] >= pose[1] else -1.0
      grasp = np.array([pose[0], pose[1] + side * ((hi[1] - lo[1]) / 2 - RIM), hi[2] - RIM_DEPTH])
    if target in sites:  # a region: put the object's bottom just above the site, clear its body's top on the way
      goal = np.asarray(sites[target], np.float64)
      owner = next((b for b in bodies if target.startswith(b + "_")), None)
      goal_top = _extent(priv, owner, np.asarray(bodies[owner]))[1][2] if owner else goal[2] + 0.1
    else:  # an object: on its top
      tpose = np.asarray(bodies[target], np.float64)
      goal_top = _extent(priv, target, tpose)[1][2]
      goal = np.array([tpose[0], tpose[1], goal_top])
    hang = (eef[2] if ep.offset is not None else grasp[2]) - lo[2]  # eef above the object's bottom
    carry_z = goal_top + hang + CARRY
    # The object's center (not the gripper) goes over the goal.
    shift = -ep.offset[:2] if ep.offset is not None else np.zeros(2)
    place = np.array([goal[0] + shift[0], goal[1] + shift[1], goal[2] + hang + PLACE])
    # Held: the object kept its offset from the gripper since the grasp, and the fingers did not close on nothing.
    holding = (ep.offset is not None and width > 0.002
               and np.linalg.norm(center - eef - ep.offset) < 0.02)
    in_phase = lambda: step - ep.since

    def go(phase):
      ep.phase, ep.since = phase, step

    # Phase transitions on the measured state.
    # Blocked on the way down (fingertips on the table, or the palm on a tall object): grasp where it is.
    moved = np.inf if ep.last_eef is None else np.linalg.norm(ep.last_eef - eef)
    ep.last_eef = eef
    # Descend only once the arm has stopped over the object (the OSC lags: it would carry on sideways).
    if ep.phase == "approach" and moved < 0.01 and _near(eef, grasp + [0, 0, CLEARANCE], TOL_XY, 2 * TOL_Z):
      go("descend")
    if ep.phase == "descend" and (_near(eef, grasp, TOL_XY, TOL_Z)
                                  or (moved < 0.003 and in_phase() >= 10 and _near(eef, grasp, 3 * TOL_XY, 0.08))):
      ep.hold = eef.copy()  # close where the fingers are (pulling back to `grasp` could lift them off a flat object)
      go("close")
    if ep.phase == "close" and in_phase() >= CLOSE_STEPS:
      ep.grasp_xy, ep.offset = eef[:2].copy(), center - eef
      holding = width > 0.002
      go("lift")
    if ep.phase in ("lift", "carry", "lower") and not holding:
      ep.offset = None
      go("approach")  # dropped (or missed): start over
    if ep.phase == "lift" and eef[2] > carry_z - 2 * TOL_Z:
      go("carry")
    if ep.phase == "carry" and _near(eef[:2], place[:2], 1.5 * TOL_XY, None):
      go("lower")
    if ep.phase == "lower" and eef[2] < place[2] + TOL_Z:
      go("release")
    if ep.phase == "release" and in_phase() >= RELEASE_STEPS:
      go("retreat")

    gripper = -1.0 if ep.phase in ("approach", "descend", "release", "retreat") else 1.0
    waypoint = {
        "approach": grasp + [0, 0, CLEARANCE],
        "descend": grasp,
        "close": ep.hold if ep.hold is not None else eef,
        "lift": np.array([*(ep.grasp_xy if ep.grasp_xy is not None else eef[:2]), carry_z]),
        "carry": np.array([place[0], place[1], carry_z]),
        "lower": place,
        "release": place,
        "retreat": np.array([place[0], place[1], carry_z]),
    }[ep.phase]
    speed = 0.6 if ep.phase in ("descend", "lower") else 1.0
    rot_err = _rotvec_from_matrix(ep.orientation @ rotation.T)
    actions = np.zeros((self.horizon, 7), np.float32)
    p = eef.copy()
    for k in range(self.horizon):  # roll the first-order model out over the chunk
      move = (waypoint - p) / STEP_M * 0.5
      norm = np.linalg.norm(move)
      if norm > speed:
        move *= speed / norm
      turn = np.clip(rot_err / ROT_RAD * 0.15, -0.3, 0.3)
      actions[k] = [*move, *turn, gripper]
      p = p + move * STEP_M
      rot_err = rot_err - turn * ROT_RAD
    return {"actions": actions, "phase": np.asarray(PHASES.index(ep.phase), np.int32)}


def _extent(priv, name, pose) -> tuple[np.ndarray, np.ndarray]:
  """World bounding box (lo, hi) of a body: the client's `aabb`, else 2 cm around its origin."""
  box = priv.get("aabb", {}).get(name)
  if box is None:
    return pose[:3] - 0.02, pose[:3] + 0.02
  box = np.asarray(box, np.float64)
  return box[:3], box[3:]


def _near(a, b, tol_xy, tol_z) -> bool:
  a, b = np.asarray(a), np.asarray(b)
  if np.linalg.norm(a[:2] - b[:2]) > tol_xy:
    return False
  return tol_z is None or abs(a[2] - b[2]) <= tol_z


def _rotation_of_state(state) -> np.ndarray:
  """Rotation matrix of the state's axis-angle (robosuite convention: any angle in [0, 2 pi])."""
  v = np.asarray(state[3:6], np.float64)
  angle = np.linalg.norm(v)
  if angle < 1e-9:
    return np.eye(3)
  x, y, z = v / angle
  k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
  return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m apt_jax.eval.libero_expert", description=__doc__.split("\n\n")[0])
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8001)
  p.add_argument("--horizon", type=int, default=10, help="actions per chunk (>= the client's replan_steps)")
  return p


def main(argv=None) -> None:
  from apt_jax import serve
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  args = build_parser().parse_args(argv)
  server = serve.PolicyServer(ExpertPolicy(args.horizon), host=args.host, port=args.port)
  with contextlib.suppress(KeyboardInterrupt):
    server.serve_forever()


if __name__ == "__main__":
  main()
