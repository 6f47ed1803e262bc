"""Instructions, paraphrases and evaluation splits that reproduce the paper's language imbalance.

VLA demonstrations use ONE template with canonical words ("put the red block in the bowl") and only TRAIN_PAIRS
(object kind, container). Evaluation splits:
  seen           new scenes, training pairs, the training template;
  paraphrase     new scenes, training pairs, synonyms + other templates never in the VLA data;
  compositional  new scenes, object-container pairs never seen together in the VLA data (training template);
  task_perturb   the exact scenes of training episodes with a different target (another object of the scene and/or
                 another container; a training pair; LIBERO-PRO's `_task` idea).
The VLM corpus (corpus.py) uses canonical words AND synonyms; the VLA data never sees a synonym.
"""

from __future__ import annotations

import numpy as np

from apt_jax.testbed import tabletop as T

SYNONYMS = {
    "red": ("crimson", "scarlet"), "green": ("emerald", "lime"), "blue": ("navy", "azure"),
    "yellow": ("golden", "lemon"), "block": ("cube",), "ball": ("sphere", "orb"),
    "bowl": ("dish",), "box": ("crate", "bin"), "plate": ("tray",),
}
PARAPHRASE_WORDS = frozenset(w for v in SYNONYMS.values() for w in v) | {"place", "into", "drop", "onto", "move"}
TRAIN_TEMPLATE = "put the {colour} {shape} in the {container}"
PARAPHRASE_TEMPLATES = ("place the {colour} {shape} into the {container}",
                        "drop the {colour} {shape} into the {container}",
                        "move the {colour} {shape} onto the {container}")
# Held-out pairs: each object kind and each container keeps at least one training pair.
HELDOUT_PAIRS = frozenset({(0, 2), (1, 0), (2, 1), (3, 2), (4, 0), (5, 1), (6, 2), (7, 0)})
ALL_PAIRS = tuple((k, c) for k in range(len(T.OBJECTS)) for c in range(len(T.CONTAINERS)))
TRAIN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELDOUT_PAIRS)
SPLITS = ("seen", "paraphrase", "compositional", "task_perturb")


def instruction(pair, rng=None, paraphrase: bool = False) -> str:
  colour, shape = T.OBJECTS[pair[0]]
  container = T.CONTAINERS[pair[1]]
  if not paraphrase:
    return TRAIN_TEMPLATE.format(colour=colour, shape=shape, container=container)
  rng = rng or np.random.default_rng(0)
  pick = lambda w: str(rng.choice(SYNONYMS[w]))
  template = PARAPHRASE_TEMPLATES[int(rng.integers(len(PARAPHRASE_TEMPLATES)))]
  return template.format(colour=pick(colour), shape=pick(shape), container=pick(container))


def training_tasks(num_episodes: int, seed: int = 0):
  """-> (scene seeds, target pairs, instructions) of the VLA demonstrations (training pairs, one template)."""
  rng = np.random.default_rng([seed, 1])
  pairs = [TRAIN_PAIRS[i] for i in rng.integers(len(TRAIN_PAIRS), size=num_episodes)]
  seeds = [1_000_000 + seed * 100_000 + i for i in range(num_episodes)]
  return seeds, pairs, [instruction(p) for p in pairs]


def eval_tasks(split: str, num_episodes: int, seed: int = 0, train_seeds=None, train_pairs=None):
  """-> (scene seeds, target pairs, instructions[, scene pairs for task_perturb]) for one evaluation split (disjoint
  from training scenes except task_perturb, which reuses training scenes with another target)."""
  rng = np.random.default_rng([seed, 2, SPLITS.index(split)])
  base = 5_000_000 + 100_000 * SPLITS.index(split) + 1000 * seed
  if split in ("seen", "paraphrase"):
    pairs = [TRAIN_PAIRS[i] for i in rng.integers(len(TRAIN_PAIRS), size=num_episodes)]
    return ([base + i for i in range(num_episodes)], pairs,
            [instruction(p, rng, paraphrase=split == "paraphrase") for p in pairs])
  if split == "compositional":
    held = sorted(HELDOUT_PAIRS)
    pairs = [held[i] for i in rng.integers(len(held), size=num_episodes)]
    return [base + i for i in range(num_episodes)], pairs, [instruction(p) for p in pairs]
  if split == "task_perturb":
    assert train_seeds is not None and train_pairs is not None
    seeds, pairs, scene_pairs = [], [], []
    order = rng.permutation(len(train_seeds))
    for j in order:
      scene = T.reset_one(train_seeds[j], target=train_pairs[j])   # its object kinds: the same in every layout
      orig = tuple(T.target_pair(scene)[0])
      options = [(int(k), c) for k in scene.obj_kind[0] for c in range(len(T.CONTAINERS))
                 if (int(k), c) in TRAIN_PAIRS and (int(k), c) != orig and int(k) != orig[0]]
      if not options:
        continue
      seeds.append(train_seeds[j])
      scene_pairs.append(tuple(train_pairs[j]))
      pairs.append(options[int(rng.integers(len(options)))])
      if len(seeds) == num_episodes:
        break
    return seeds, pairs, [instruction(p) for p in pairs], scene_pairs
  raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def scenes(seeds, pairs, scene_pairs=None, layout: str = "random") -> T.State:
  """Scenes built as reset(seeds, scene_pairs, layout) (default: pairs), then retargeted to `pairs`."""
  state = T.reset(seeds, targets=scene_pairs if scene_pairs is not None else pairs, layout=layout)
  for i, (k, c) in enumerate(pairs):
    state.target_obj[i] = int(np.flatnonzero(state.obj_kind[i] == k)[0])
    state.target_cont[i] = c
  return state
