"""A small, fast, deterministic 2-D tabletop simulator (NumPy), vectorised over a batch of scenes.

Scene: a gripper, `NUM_OBJECTS` distinct objects (colour x shape) and the 3 containers (bowl, box, plate), each at
the centre of a distinct cell of a GRID x GRID board over the unit square, rendered top-down to uint8 RGB
[B, S, S, 3] (S = IMAGE_SIZE). State (3): gripper x, y in [0, 1] and closure (0 open, 1 closed). Action (3): dx, dy
in [-1, 1] (scaled by MAX_STEP) and a gripper command (> 0 close, <= 0 open). Success: the target object rests (not
held) inside the target container (centre within CONTAINER_RADIUS of the container's centre).
Letters: B scenes, N objects per scene, S image side.
"""

from __future__ import annotations

import dataclasses

import numpy as np

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("block", "ball")
CONTAINERS = ("bowl", "box", "plate")
OBJECTS = tuple((c, s) for c in COLOURS for s in SHAPES)   # 8 object kinds
NUM_OBJECTS = 3
RGB = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 70, 230), "yellow": (235, 215, 20)}
CONTAINER_RGB = {"bowl": (250, 250, 250), "box": (120, 70, 30), "plate": (40, 40, 40)}
TABLE_RGB = (150, 150, 160)
MAX_STEP = 0.15
GRASP_RADIUS = 0.09
CONTAINER_RADIUS = 0.1
OBJECT_RADIUS = 0.05
MAX_EPISODE_STEPS = 20
GRID = 5
# One 16-px cell is one patch of the testbed's SigLIP, so "where is the red block" is "which image token": a question
# a tiny model learns on a CPU budget (with free positions, sub-patch localisation took >10k steps and the policies
# never used the image).
IMAGE_SIZE = 16 * GRID
# "random": every entity on a random distinct cell (the VLM corpus: diverse scenes). "fixed": LIBERO-like, the objects
# always on FIXED_OBJECT_CELLS and the containers on FIXED_CONTAINER_CELLS (which kind sits where is random; the
# gripper starts on a random free cell): vision alone still cannot tell which object is meant (the robot data).
LAYOUTS = ("random", "fixed")
# Upper row, columns 0, 2, 4 and lower row, same columns (row-major cell indices).
FIXED_OBJECT_CELLS, FIXED_CONTAINER_CELLS = (5, 7, 9), (15, 17, 19)


@dataclasses.dataclass
class State:
  """Batched simulator state (numpy arrays, leading axis B)."""

  gripper: np.ndarray        # [B, 2] float
  closed: np.ndarray         # [B] bool
  held: np.ndarray           # [B] int, index of the held object or -1
  obj_pos: np.ndarray        # [B, N, 2] float
  obj_kind: np.ndarray       # [B, N] int into OBJECTS
  cont_pos: np.ndarray       # [B, 3, 2] float, containers in CONTAINERS order
  target_obj: np.ndarray     # [B] int, object slot 0..N-1
  target_cont: np.ndarray    # [B] int into CONTAINERS

  @property
  def batch_size(self):
    return self.gripper.shape[0]

  def copy(self):
    return State(**{f.name: getattr(self, f.name).copy() for f in dataclasses.fields(self)})

  def index(self, idx):
    return State(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})

  @staticmethod
  def concat(states):
    return State(**{f.name: np.concatenate([getattr(s, f.name) for s in states]) for f in dataclasses.fields(State)})


def cell_centres(cells) -> np.ndarray:
  """Cell indices (row-major in the GRID x GRID board) -> [..., 2] (x, y) centres in the unit square."""
  cells = np.asarray(cells)
  return (np.stack([cells % GRID, cells // GRID], axis=-1) + 0.5) / GRID


def sample_positions(rng, n, layout="random"):
  """Centres [n, 2] of n distinct board cells: NUM_OBJECTS objects, the containers, then the gripper (deterministic
  given rng; neighbours are 1 / GRID = 0.2 apart)."""
  if n > GRID * GRID:
    raise ValueError(f"cannot place {n} entities on a {GRID}x{GRID} board")
  if layout == "random":
    return cell_centres(rng.choice(GRID * GRID, n, replace=False))
  if layout != "fixed":
    raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}")
  n_obj = n - len(CONTAINERS) - 1
  if n_obj > len(FIXED_OBJECT_CELLS):
    raise ValueError(f"the fixed layout has {len(FIXED_OBJECT_CELLS)} object cells, not {n_obj}")
  fixed = FIXED_OBJECT_CELLS + FIXED_CONTAINER_CELLS
  free = np.setdiff1d(np.arange(GRID * GRID), fixed)
  objects = rng.permutation(FIXED_OBJECT_CELLS)
  cells = np.concatenate([objects[:n_obj], rng.permutation(FIXED_CONTAINER_CELLS), rng.choice(free, 1, replace=False)])
  return cell_centres(cells)


def reset_one(seed: int, kinds=None, target=None, layout: str = "random") -> State:
  """One scene from an integer seed. kinds: optional 3 object kinds; target: optional (kind, container index)
  forcing the target (its kind is placed in the scene); layout: one of LAYOUTS. Deterministic given the arguments;
  the object kinds do not depend on the layout."""
  rng = np.random.default_rng(seed)
  if kinds is None:
    kinds = rng.choice(len(OBJECTS), NUM_OBJECTS, replace=False)
    if target is not None and target[0] not in kinds:
      kinds[rng.integers(NUM_OBJECTS)] = target[0]
  kinds = np.asarray(kinds)
  pos = sample_positions(rng, NUM_OBJECTS + len(CONTAINERS) + 1, layout)
  if target is None:
    t_obj, t_cont = int(rng.integers(NUM_OBJECTS)), int(rng.integers(len(CONTAINERS)))
  else:
    t_obj, t_cont = int(np.flatnonzero(kinds == target[0])[0]), int(target[1])
  return State(gripper=pos[None, -1], closed=np.zeros(1, bool), held=-np.ones(1, int),
               obj_pos=pos[None, :NUM_OBJECTS], obj_kind=kinds[None].astype(int),
               cont_pos=pos[None, NUM_OBJECTS:NUM_OBJECTS + len(CONTAINERS)],
               target_obj=np.array([t_obj]), target_cont=np.array([t_cont]))


def reset(seeds, targets=None, layout: str = "random") -> State:
  """Batched reset: one scene per seed (targets: optional list of (kind, container) or None per seed)."""
  targets = targets if targets is not None else [None] * len(seeds)
  return State.concat([reset_one(int(s), target=t, layout=layout) for s, t in zip(seeds, targets)])


def target_pair(state: State) -> np.ndarray:
  """[B, 2] (object kind, container index) of each scene's task."""
  b = np.arange(state.batch_size)
  return np.stack([state.obj_kind[b, state.target_obj], state.target_cont], axis=-1)


def in_container(state: State) -> np.ndarray:
  """[B, N, 3] bool: object n rests (not held) inside container c."""
  d = np.linalg.norm(state.obj_pos[:, :, None] - state.cont_pos[:, None], axis=-1)
  free = np.arange(state.obj_pos.shape[1])[None] != state.held[:, None]
  return (d < CONTAINER_RADIUS) & free[:, :, None]


def success(state: State) -> np.ndarray:
  """[B] bool: the target object rests inside the target container."""
  b = np.arange(state.batch_size)
  return in_container(state)[b, state.target_obj, state.target_cont]


def observe_state(state: State) -> np.ndarray:
  """[B, 3] float32 proprioception: gripper x, y, closure."""
  return np.concatenate([state.gripper, state.closed[:, None]], axis=-1).astype(np.float32)


def step(state: State, action) -> State:
  """Applies actions [B, 3] (clipped to [-1, 1]); returns a new state (the input is not modified).

  Closing the gripper within GRASP_RADIUS of a free object grasps the nearest one; the held object moves with the
  gripper; opening releases it where it is.
  """
  s = state.copy()
  a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
  b = np.arange(s.batch_size)
  s.gripper = np.clip(s.gripper + a[:, :2] * MAX_STEP, 0.0, 1.0)
  close = a[:, 2] > 0
  # Grasp: closing now (was open), nearest free object within reach.
  d = np.linalg.norm(s.obj_pos - s.gripper[:, None], axis=-1)
  nearest = np.argmin(d, axis=1)
  grasp = close & ~s.closed & (d[b, nearest] < GRASP_RADIUS)
  s.held = np.where(grasp, nearest, s.held)
  s.held = np.where(~close, -1, s.held)
  s.closed = close
  holding = s.held >= 0
  s.obj_pos[b[holding], s.held[holding]] = s.gripper[holding]
  return s


def render(state: State, size: int = IMAGE_SIZE) -> np.ndarray:
  """Top-down RGB [B, size, size, 3] uint8. Containers: bowl = white ring, box = brown square outline, plate = dark
  disc. Objects: block = filled square, ball = filled disc. Gripper: black (closed) / white (open) cross."""
  bsz = state.batch_size
  img = np.empty((bsz, size, size, 3), np.uint8)
  img[:] = TABLE_RGB
  ys, xs = (np.mgrid[0:size, 0:size] + 0.5) / size        # pixel centres in [0, 1]; y down
  def paint(mask, rgb):  # mask [B, S, S]
    img[mask] = rgb
  for c, name in enumerate(CONTAINERS):
    cx, cy = state.cont_pos[:, c, 0, None, None], state.cont_pos[:, c, 1, None, None]
    r = CONTAINER_RADIUS + 0.02
    if name == "bowl":
      d = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
      paint((d < r) & (d > r - 0.035), CONTAINER_RGB[name])
    elif name == "box":
      m = np.maximum(np.abs(xs - cx), np.abs(ys - cy))
      paint((m < r) & (m > r - 0.035), CONTAINER_RGB[name])
    else:
      paint((xs - cx) ** 2 + (ys - cy) ** 2 < r ** 2, CONTAINER_RGB[name])
  for n in range(state.obj_pos.shape[1]):
    cx, cy = state.obj_pos[:, n, 0, None, None], state.obj_pos[:, n, 1, None, None]
    kind = state.obj_kind[:, n]
    r = OBJECT_RADIUS
    square = np.maximum(np.abs(xs - cx), np.abs(ys - cy)) < r * 0.9
    disc = (xs - cx) ** 2 + (ys - cy) ** 2 < r ** 2
    for k, (colour, shape) in enumerate(OBJECTS):
      sel = (kind == k)[:, None, None]
      paint(sel & (square if shape == "block" else disc), RGB[colour])
  gx, gy = state.gripper[:, 0, None, None], state.gripper[:, 1, None, None]
  arm = 0.06
  cross = (((np.abs(xs - gx) < 0.012) & (np.abs(ys - gy) < arm))
           | ((np.abs(ys - gy) < 0.012) & (np.abs(xs - gx) < arm)))
  closed = state.closed[:, None, None]
  paint(cross & closed, (0, 0, 0))
  paint(cross & ~closed, (255, 255, 255))
  return img


def goal(state: State) -> np.ndarray:
  """[B, 2] where the expert heads: the target object, or once it is held the target container."""
  b = np.arange(state.batch_size)
  return np.where((state.held == state.target_obj)[:, None], state.cont_pos[b, state.target_cont],
                  state.obj_pos[b, state.target_obj])


def expert_action(state: State, rng=None, noise: float = 0.0) -> np.ndarray:
  """Scripted expert [B, 3]: go to the target object, close, carry it to the target container, open."""
  b = np.arange(state.batch_size)
  obj = state.obj_pos[b, state.target_obj]
  cont = state.cont_pos[b, state.target_cont]
  holding_target = state.held == state.target_obj
  delta = goal(state) - state.gripper
  dist = np.linalg.norm(delta, axis=-1)
  move = delta / MAX_STEP
  norm = np.maximum(np.abs(move).max(-1, keepdims=True), 1.0)
  move = move / norm
  if rng is not None and noise > 0:
    move = np.clip(move + rng.normal(0, noise, move.shape) * (dist[:, None] > 0.1), -1, 1)
  # Gripper: close when at the object (or holding it), open when at the container or holding something else.
  at_obj = np.linalg.norm(obj - state.gripper, axis=-1) < GRASP_RADIUS * 0.5
  at_cont = np.linalg.norm(cont - state.gripper, axis=-1) < CONTAINER_RADIUS * 0.5
  wrong = (state.held >= 0) & ~holding_target
  grip = np.where(holding_target, np.where(at_cont, -1.0, 1.0), np.where(at_obj & ~wrong, 1.0, -1.0))
  # While opening at the container (or after success) stay still.
  done = success(state)
  move = np.where(done[:, None], 0.0, move)
  grip = np.where(done, -1.0, grip)
  return np.concatenate([move, grip[:, None]], axis=-1).astype(np.float32)


def rollout_expert(state: State, steps: int = MAX_EPISODE_STEPS, rng=None, noise: float = 0.0,
                   size: int = IMAGE_SIZE, clean_labels: bool = False):
  """Runs the expert; returns (images [T, B, S, S, 3], states [T, B, 3], actions [T, B, 3], success [B], final).

  clean_labels: the recorded action is the noise-free expert action at each visited state while the noisy one is
  executed (DART, Laskey et al. 2017); the visited states are the same as without it."""
  imgs, sts, acts = [], [], []
  for _ in range(steps):
    a = expert_action(state, rng, noise)
    imgs.append(render(state, size))
    sts.append(observe_state(state))
    acts.append(expert_action(state) if clean_labels else a)
    state = step(state, a)
  return np.stack(imgs), np.stack(sts), np.stack(acts), success(state), state
