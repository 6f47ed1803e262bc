"""Task data arms, instructions and the evaluation splits (docs/testbed_v2_protocol.md §2-3).

Task data: ONE template, canonical words ("put the red block in the bowl"), TRAIN_PAIRS only, SEEN_KINDS and
SEEN_CONTAINERS only, environment 0, the fixed layout. Arms (ARMS):
  shortcut  LAYOUTS_PER_TASK layouts per training pair, drawn once per seed; a layout always comes with its task,
            so the scene predicts the instruction (LIBERO: one task per scene layout).
  balanced  kinds, placement and target pair drawn independently per episode: vision alone cannot tell the task.
Splits (SPLITS): see `eval_episodes`. "Neutral" scenes are balanced-arm scenes: the scene does not give the task.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from apt_jax.testbed import tabletop as T

SYNONYMS = {
    "red": ("crimson", "scarlet"), "green": ("emerald", "lime"), "blue": ("navy", "azure"),
    "yellow": ("golden", "lemon"), "purple": ("violet", "mauve"), "block": ("cube",), "ball": ("sphere", "orb"),
    "bowl": ("dish",), "box": ("crate", "bin"), "plate": ("tray",), "basket": ("hamper",),
}
TRAIN_TEMPLATE = "put the {colour} {shape} in the {container}"
PARAPHRASE_TEMPLATES = ("place the {colour} {shape} into the {container}",
                        "drop the {colour} {shape} into the {container}",
                        "move the {colour} {shape} onto the {container}")
PARAPHRASE_WORDS = frozenset(w for v in SYNONYMS.values() for w in v) | {"place", "into", "drop", "onto", "move"}
SEEN_KINDS = tuple(k for k, (colour, _) in enumerate(T.OBJECTS) if colour != "purple")
HELDOUT_KINDS = tuple(k for k in range(len(T.OBJECTS)) if k not in SEEN_KINDS)
SEEN_CONTAINERS = (0, 1, 2)
HELDOUT_CONTAINER = T.CONTAINERS.index("basket")
UNSEEN_ENV = 1
# Held-out pairs (compositional): each seen kind and each seen container keeps at least one training pair.
HELDOUT_PAIRS = frozenset({(0, 2), (1, 0), (2, 1), (3, 2), (4, 0), (5, 1), (6, 2), (7, 0)})
SEEN_PAIRS = tuple((k, c) for k in SEEN_KINDS for c in SEEN_CONTAINERS)
TRAIN_PAIRS = tuple(p for p in SEEN_PAIRS if p not in HELDOUT_PAIRS)
ALL_PAIRS = tuple((k, c) for k in range(len(T.OBJECTS)) for c in range(len(T.CONTAINERS)))
ARMS = ("shortcut", "balanced")
LAYOUTS_PER_TASK = 2
SPLITS = ("seen", "paraphrase", "compositional", "task_perturb", "position_swap", "unseen_object",
          "unseen_container", "unseen_environment")


def instruction(pair, rng=None, paraphrase: bool = False, template: str | None = None) -> str:
  """The instruction for pair = (object kind, container kind): the training template, a random paraphrase (synonym
  for every word and a paraphrase template), or `template` with {colour}, {shape}, {container} slots."""
  colour, shape = T.OBJECTS[pair[0]]
  container = T.CONTAINERS[pair[1]]
  if not paraphrase:
    return (template or TRAIN_TEMPLATE).format(colour=colour, shape=shape, container=container)
  rng = rng or np.random.default_rng(0)
  pick = lambda w: str(rng.choice(SYNONYMS[w]))
  template = PARAPHRASE_TEMPLATES[int(rng.integers(len(PARAPHRASE_TEMPLATES)))]
  return template.format(colour=pick(colour), shape=pick(shape), container=pick(container))


@dataclasses.dataclass
class Episodes:
  """Initial scenes with their tasks: state (B scenes), pairs [(kind, container kind)] * B, instructions [str] * B,
  layout [B] (shortcut arm: index of the scene layout; -1 otherwise)."""

  state: T.State
  pairs: list
  instructions: list
  layout: np.ndarray

  def __len__(self):
    return self.state.batch_size


def _episodes(scenes, instructions, layout=None) -> Episodes:
  state = T.State.concat(scenes)
  return Episodes(state, [tuple(int(x) for x in p) for p in T.target_pair(state)], list(instructions),
                  np.asarray(layout if layout is not None else [-1] * len(scenes)))


def shortcut_layouts(seed: int) -> list[T.State]:
  """The shortcut arm's LAYOUTS_PER_TASK scene layouts per training pair (each a B = 1 scene with its task)."""
  rng = np.random.default_rng([seed, 10])
  return [T.sample_scene(rng, p, layout="fixed", kinds=SEEN_KINDS) for p in TRAIN_PAIRS
          for _ in range(LAYOUTS_PER_TASK)]


def _from_layout(rng, layout: T.State) -> T.State:
  """The layout's scene with a fresh gripper start cell."""
  return T.make_scene(rng, layout.obj_kind[0], T.cells_of(layout.obj_pos[0]), layout.cont_kind[0],
                      T.cells_of(layout.cont_pos[0]), int(layout.target_obj[0]), int(layout.target_cont[0]))


def neutral_scene(rng, pair, env: int = 0, containers=SEEN_CONTAINERS) -> T.State:
  return T.sample_scene(rng, pair, layout="fixed", kinds=SEEN_KINDS, containers=containers, env=env)


def training_episodes(arm: str, num_episodes: int, seed: int) -> Episodes:
  """The arm's task demonstrations' initial scenes (training pairs, one template)."""
  if arm not in ARMS:
    raise ValueError(f"arm={arm!r}; expected one of {ARMS}")
  layouts = shortcut_layouts(seed) if arm == "shortcut" else None
  scenes, ids = [], []
  for i in range(num_episodes):
    rng = np.random.default_rng([seed, 1, i])
    if arm == "shortcut":
      j = int(rng.integers(len(layouts)))
      scenes.append(_from_layout(rng, layouts[j]))
      ids.append(j)
    else:
      scenes.append(neutral_scene(rng, TRAIN_PAIRS[int(rng.integers(len(TRAIN_PAIRS)))]))
      ids.append(-1)
  state = T.State.concat(scenes)
  return _episodes(scenes, [instruction(p) for p in T.target_pair(state)], ids)


def _swap_cells(rng, pos, target: int) -> np.ndarray:
  """pos [K, 2] permuted among themselves so that slot `target` moves to another slot's position."""
  while True:
    perm = rng.permutation(len(pos))
    if perm[target] != target:
      return pos[perm]


def eval_episodes(arm: str, split: str, num_episodes: int, seed: int, train: Episodes) -> Episodes:
  """One split's episodes (docs/testbed_v2_protocol.md §3). New scenes come from seeds disjoint from the training
  episodes'; task_perturb and position_swap start from training episodes' scenes (`train`)."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  rng = np.random.default_rng([seed, 2, SPLITS.index(split), ARMS.index(arm)])
  pick = lambda xs: xs[int(rng.integers(len(xs)))]
  scenes, instr = [], []
  if split == "seen" and arm == "shortcut":
    layouts = shortcut_layouts(seed)
    scenes = [_from_layout(rng, pick(layouts)) for _ in range(num_episodes)]
  elif split in ("seen", "paraphrase", "unseen_environment"):
    env = UNSEEN_ENV if split == "unseen_environment" else 0
    scenes = [neutral_scene(rng, pick(TRAIN_PAIRS), env=env) for _ in range(num_episodes)]
  elif split == "compositional":
    scenes = [neutral_scene(rng, pick(sorted(HELDOUT_PAIRS))) for _ in range(num_episodes)]
  elif split == "unseen_object":
    scenes = [neutral_scene(rng, (pick(HELDOUT_KINDS), pick(SEEN_CONTAINERS))) for _ in range(num_episodes)]
  elif split == "unseen_container":
    others = lambda: tuple(rng.choice(SEEN_CONTAINERS, 2, replace=False))
    scenes = [neutral_scene(rng, (pick(SEEN_KINDS), HELDOUT_CONTAINER), containers=(HELDOUT_CONTAINER, *others()))
              for _ in range(num_episodes)]
  else:   # task_perturb, position_swap: training episodes' scenes
    for j in rng.permutation(len(train))[:num_episodes]:
      s = train.state.index([j])
      if split == "task_perturb":
        k0 = train.pairs[j][0]
        options = [(int(k), int(c)) for k in s.obj_kind[0] for c in s.cont_kind[0]
                   if (int(k), int(c)) in TRAIN_PAIRS and int(k) != k0]
        if not options:
          continue
        s = T.retarget(s, [pick(options)])
      else:
        s.obj_pos[0] = _swap_cells(rng, s.obj_pos[0], int(s.target_obj[0]))
        s.cont_pos[0] = _swap_cells(rng, s.cont_pos[0], int(s.target_cont[0]))
      scenes.append(s)
  if len(scenes) < num_episodes:
    raise ValueError(f"split {split!r}: only {len(scenes)} of {num_episodes} episodes could be built from "
                     f"{len(train)} training episodes")
  pairs = [tuple(T.target_pair(s)[0]) for s in scenes]
  instr = [instruction(p, rng, paraphrase=split == "paraphrase") for p in pairs]
  return _episodes(scenes, instr)

