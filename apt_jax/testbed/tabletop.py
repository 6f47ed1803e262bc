"""A small, fast, deterministic 2-D tabletop simulator (NumPy), vectorised over a batch of scenes.

Scene: a gripper, `NUM_OBJECTS` distinct objects (colour x shape, `OBJECTS`) and `NUM_CONTAINER_SLOTS` distinct
containers (`CONTAINERS`), each at the centre of a distinct cell of a GRID x GRID board over the unit square.
Layouts (`LAYOUTS`): "random" (every entity on a random distinct cell) or "fixed" (LIBERO-like: objects on
FIXED_OBJECT_CELLS, containers on FIXED_CONTAINER_CELLS, which kind sits where random). Environments
(`ENVIRONMENTS`): the table's colour/texture and the lighting. The last colour and the last container are the
testbed's held-out kinds (never in the robot task data; language.py).
Rendered top-down to uint8 RGB [B, S, S, 3] (S = IMAGE_SIZE = 16 px per cell): a cell is one 16-px SigLIP patch.

State (3): gripper x, y in [0, 1] and closure (0 open, 1 closed). Action (3): dx, dy in [-1, 1] (x MAX_STEP) and
a gripper command (> 0 close). Closing within GRASP_RADIUS of a free object grasps the nearest one; opening releases
it. Success: the target object rests (not held) within CONTAINER_RADIUS of the target container's centre.
Letters: B batch, N objects per scene, C container slots per scene.
"""

from __future__ import annotations

import dataclasses

import numpy as np

COLOURS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("block", "ball")
CONTAINERS = ("bowl", "box", "plate", "basket")
OBJECTS = tuple((c, s) for c in COLOURS for s in SHAPES)   # 10 kinds; v1's 8 keep their indices 0..7
NUM_OBJECTS = 3
NUM_CONTAINER_SLOTS = 3
RGB = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 70, 230), "yellow": (235, 215, 20),
       "purple": (150, 40, 200)}
CONTAINER_RGB = {"bowl": (250, 250, 250), "box": (120, 70, 30), "plate": (40, 40, 40), "basket": (240, 140, 20)}
# Environment 0 is the training table; 1 another texture (stripes) and dimmer light (Table 2's UE).
ENVIRONMENTS = (dict(table=(150, 150, 160), stripes=None, light=1.0),
                dict(table=(120, 140, 105), stripes=(95, 110, 85), light=0.8))
MAX_STEP = 0.15
GRASP_RADIUS = 0.09
CONTAINER_RADIUS = 0.1
OBJECT_RADIUS = 0.05
MAX_EPISODE_STEPS = 20
GRID = 5
IMAGE_SIZE = 16 * GRID
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
  cont_pos: np.ndarray       # [B, C, 2] float
  target_obj: np.ndarray     # [B] int, object slot 0..N-1
  target_cont: np.ndarray    # [B] int, container slot 0..C-1
  cont_kind: np.ndarray = None   # [B, C] int into CONTAINERS; default: slot c holds CONTAINERS[c]
  env: np.ndarray = None         # [B] int into ENVIRONMENTS; default 0

  def __post_init__(self):
    b, c = self.cont_pos.shape[:2]
    if self.cont_kind is None:
      self.cont_kind = np.tile(np.arange(c), (b, 1))
    if self.env is None:
      self.env = np.zeros(b, int)

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


def cells_of(pos) -> np.ndarray:
  """[..., 2] positions -> row-major cell indices."""
  ij = np.clip(np.floor(np.asarray(pos) * GRID).astype(int), 0, GRID - 1)
  return ij[..., 1] * GRID + ij[..., 0]


def layout_cells(rng, layout: str) -> tuple[np.ndarray, np.ndarray]:
  """-> (object cells [N], container cells [C]), distinct, for one scene."""
  if layout == "random":
    cells = rng.choice(GRID * GRID, NUM_OBJECTS + NUM_CONTAINER_SLOTS, replace=False)
    return cells[:NUM_OBJECTS], cells[NUM_OBJECTS:]
  if layout != "fixed":
    raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}")
  return rng.permutation(FIXED_OBJECT_CELLS), rng.permutation(FIXED_CONTAINER_CELLS)


def make_scene(rng, obj_kind, obj_cells, cont_kind, cont_cells, target_obj: int, target_cont: int,
               env: int = 0) -> State:
  """One scene (B = 1) from its parts; the gripper starts open on a random free cell drawn from rng."""
  used = np.concatenate([obj_cells, cont_cells])
  if len(set(used.tolist())) != len(used):
    raise ValueError(f"entities must sit on distinct cells, got objects {list(obj_cells)} containers "
                     f"{list(cont_cells)}")
  gripper = rng.choice(np.setdiff1d(np.arange(GRID * GRID), used))
  return State(gripper=cell_centres([gripper]), closed=np.zeros(1, bool), held=-np.ones(1, int),
               obj_pos=cell_centres(obj_cells)[None], obj_kind=np.asarray(obj_kind, int)[None],
               cont_pos=cell_centres(cont_cells)[None], target_obj=np.array([target_obj]),
               target_cont=np.array([target_cont]), cont_kind=np.asarray(cont_kind, int)[None],
               env=np.array([env]))


def sample_scene(rng, pair, *, layout: str = "fixed", kinds=range(8), containers=(0, 1, 2), env: int = 0) -> State:
  """A scene whose task is `pair` = (object kind, container kind): the target kind plus NUM_OBJECTS - 1 distractor
  kinds from `kinds`; the target container plus others from `containers`; placement by `layout`."""
  k, c = int(pair[0]), int(pair[1])
  others = [x for x in kinds if x != k]
  obj_kind = np.concatenate([[k], rng.choice(others, NUM_OBJECTS - 1, replace=False)])
  cont_others = [x for x in containers if x != c]
  cont_kind = np.concatenate([[c], rng.choice(cont_others, NUM_CONTAINER_SLOTS - 1, replace=False)])
  obj_kind, cont_kind = rng.permutation(obj_kind), rng.permutation(cont_kind)
  obj_cells, cont_cells = layout_cells(rng, layout)
  return make_scene(rng, obj_kind, obj_cells, cont_kind, cont_cells, int(np.flatnonzero(obj_kind == k)[0]),
                    int(np.flatnonzero(cont_kind == c)[0]), env)


def reset_one(seed: int, target=None, layout: str = "random") -> State:
  """One scene from an integer seed, with the 8 seen kinds and the 3 seen containers; target: optional
  (object kind, container kind), else drawn."""
  rng = np.random.default_rng(seed)
  if target is None:
    target = (int(rng.integers(8)), int(rng.integers(3)))
  return sample_scene(rng, target, layout=layout)


def reset(seeds, targets=None, layout: str = "random") -> State:
  """Batched reset: one scene per seed (targets: optional list of (kind, container) or None per seed)."""
  targets = targets if targets is not None else [None] * len(seeds)
  return State.concat([reset_one(int(s), target=t, layout=layout) for s, t in zip(seeds, targets)])


def target_pair(state: State) -> np.ndarray:
  """[B, 2] (object kind, container kind) of each scene's task."""
  b = np.arange(state.batch_size)
  return np.stack([state.obj_kind[b, state.target_obj], state.cont_kind[b, state.target_cont]], axis=-1)


def retarget(state: State, pairs) -> State:
  """A copy with each scene's task set to pairs[i] = (object kind, container kind), both present in the scene."""
  s = state.copy()
  for i, (k, c) in enumerate(pairs):
    obj, cont = np.flatnonzero(s.obj_kind[i] == k), np.flatnonzero(s.cont_kind[i] == c)
    if not len(obj) or not len(cont):
      raise ValueError(f"scene {i} has no object kind {k} or no container kind {c}")
    s.target_obj[i], s.target_cont[i] = obj[0], cont[0]
  return s


def in_container(state: State) -> np.ndarray:
  """[B, N, C] bool: object n rests (not held) inside container slot c."""
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
  """Applies actions [B, 3] (clipped to [-1, 1]); returns a new state (the input is not modified)."""
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
  disc, basket = orange diamond outline. Objects: block = filled square, ball = filled disc. Gripper: black (closed)
  / white (open) cross. The table and the lighting follow each scene's environment."""
  bsz = state.batch_size
  img = np.empty((bsz, size, size, 3), np.uint8)
  ys, xs = (np.mgrid[0:size, 0:size] + 0.5) / size        # pixel centres in [0, 1]; y down
  stripes = (np.mgrid[0:size, 0:size].sum(0) // 4) % 2 == 1
  for e, env in enumerate(ENVIRONMENTS):
    sel = state.env == e
    img[sel] = env["table"]
    if env["stripes"] is not None:
      img[sel[:, None, None] & stripes[None]] = env["stripes"]
  def paint(mask, rgb):  # mask [B, S, S]
    img[mask] = rgb
  r = CONTAINER_RADIUS + 0.02
  for c in range(state.cont_pos.shape[1]):
    cx, cy = state.cont_pos[:, c, 0, None, None], state.cont_pos[:, c, 1, None, None]
    d = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
    m = np.maximum(np.abs(xs - cx), np.abs(ys - cy))
    l1 = np.abs(xs - cx) + np.abs(ys - cy)
    shapes = {"bowl": (d < r) & (d > r - 0.035), "box": (m < r) & (m > r - 0.035), "plate": d < r,
              "basket": (l1 < r * 1.3) & (l1 > r * 1.3 - 0.045)}
    for k, name in enumerate(CONTAINERS):
      paint((state.cont_kind[:, c] == k)[:, None, None] & shapes[name], CONTAINER_RGB[name])
  for n in range(state.obj_pos.shape[1]):
    cx, cy = state.obj_pos[:, n, 0, None, None], state.obj_pos[:, n, 1, None, None]
    square = np.maximum(np.abs(xs - cx), np.abs(ys - cy)) < OBJECT_RADIUS * 0.9
    disc = (xs - cx) ** 2 + (ys - cy) ** 2 < OBJECT_RADIUS ** 2
    for k, (colour, shape) in enumerate(OBJECTS):
      paint((state.obj_kind[:, n] == k)[:, None, None] & (square if shape == "block" else disc), RGB[colour])
  gx, gy = state.gripper[:, 0, None, None], state.gripper[:, 1, None, None]
  arm = 0.06
  cross = (((np.abs(xs - gx) < 0.012) & (np.abs(ys - gy) < arm))
           | ((np.abs(ys - gy) < 0.012) & (np.abs(xs - gx) < arm)))
  closed = state.closed[:, None, None]
  paint(cross & closed, (0, 0, 0))
  paint(cross & ~closed, (255, 255, 255))
  light = np.array([ENVIRONMENTS[e]["light"] for e in state.env])
  if (light != 1.0).any():
    img = np.clip(img * light[:, None, None, None], 0, 255).astype(np.uint8)
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
                   size: int = IMAGE_SIZE, clean_labels: bool = False, render_images: bool = True):
  """Runs the expert; returns (images [T, B, S, S, 3] or None, states [T, B, 3], actions [T, B, 3], success [B],
  scene states [T] (State per step), final State).

  clean_labels: the recorded action is the noise-free expert action at each visited state while the noisy one is
  executed (DART, Laskey et al. 2017); the visited states are the same as without it."""
  imgs, sts, acts, scenes = [], [], [], []
  for _ in range(steps):
    a = expert_action(state, rng, noise)
    if render_images:
      imgs.append(render(state, size))
    scenes.append(state)
    sts.append(observe_state(state))
    acts.append(expert_action(state) if clean_labels else a)
    state = step(state, a)
  return (np.stack(imgs) if render_images else None), np.stack(sts), np.stack(acts), success(state), scenes, state
