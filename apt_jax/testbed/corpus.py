"""The VLM's corpus: scenes from the same renderer, with rich language (captions, referring expressions, VQA,
instruction grounding) that uses canonical words AND the synonyms/templates that the VLA demonstrations never use.

Every sample is (image, prefix text, suffix text); the VLM is trained with PaliGemma's prefix-LM loss on the suffix.
Location answers name the board cell (tabletop.GRID x GRID): a row word and a column word, e.g. "top left",
"middle center", "lower far-right".
"""

from __future__ import annotations

import numpy as np

from apt_jax.testbed import language as L
from apt_jax.testbed import tabletop as T

ROWS = ("top", "upper", "middle", "lower", "bottom")
COLS = ("far-left", "left", "center", "right", "far-right")
assert len(ROWS) == len(COLS) == T.GRID


def location(p) -> str:
  """(x, y) in the unit square -> "<row> <column>" of its board cell."""
  r, c = (min(int(v * T.GRID), T.GRID - 1) for v in (p[1], p[0]))
  return f"{ROWS[r]} {COLS[c]}"


def _word(rng, w, synonyms_p):
  return str(rng.choice(L.SYNONYMS[w])) if rng.random() < synonyms_p else w


def _obj_phrase(rng, kind, synonyms_p=0.6):
  colour, shape = T.OBJECTS[kind]
  return f"{_word(rng, colour, synonyms_p)} {_word(rng, shape, synonyms_p)}"


def sample_qa(rng, state: T.State, i: int) -> tuple[int, str, str]:
  """One (task id, question, answer) about scene i of `state`."""
  n = int(rng.choice(NUM_TASKS, p=TASK_WEIGHTS))
  return (n, *_qa(rng, state, i, n))


def _qa(rng, state, i, n):
  kinds, pos, cont = state.obj_kind[i], state.obj_pos[i], state.cont_pos[i]
  if n == 0:    # referring expression -> location
    j = int(rng.integers(len(kinds)))
    return f"where is the {_obj_phrase(rng, kinds[j])}?", location(pos[j])
  if n == 1:    # container -> location
    c = int(rng.integers(len(T.CONTAINERS)))
    return f"where is the {_word(rng, T.CONTAINERS[c], 0.6)}?", location(cont[c])
  if n == 2:    # instruction grounding: which object / which container (any template, synonyms)
    j, c = int(rng.integers(len(kinds))), int(rng.integers(len(T.CONTAINERS)))
    text = L.instruction((int(kinds[j]), c), rng, paraphrase=rng.random() < 0.6)
    if rng.random() < 0.5:
      return f"{text}. object?", location(pos[j])
    return f"{text}. target?", location(cont[c])
  if n == 3:    # existence VQA
    k = int(rng.integers(len(T.OBJECTS)))
    return f"is there a {_obj_phrase(rng, k)}?", "yes" if k in kinds else "no"
  if n == 4:    # colour VQA about the object nearest a container
    c = int(rng.integers(len(T.CONTAINERS)))
    j = int(np.argmin(np.linalg.norm(pos - cont[c], axis=-1)))
    colour = T.OBJECTS[kinds[j]][0]
    return f"what colour is the object nearest the {_word(rng, T.CONTAINERS[c], 0.5)}?", _word(rng, colour, 0.3)
  # caption
  order = rng.permutation(len(kinds))
  return "caption", ", ".join(f"a {_obj_phrase(rng, kinds[j], 0.4)}" for j in order)


NUM_TASKS = 6
TASK_NAMES = ("refer", "container", "instruction", "exists", "colour", "caption")
# Generation mix: every task has a large pool of questions; what the VLM trains on is set by CURRICULUM.
TASK_WEIGHTS = (0.35, 0.15, 0.3, 0.07, 0.07, 0.06)
# VLM pretraining phases ((until fraction of the steps, task weights), ...). A tiny VLM learns to read a location off
# the image token on the easiest question first (containers: 3 fixed looks), then on objects (8 kinds, synonyms),
# then on instructions, VQA and captions; a flat mixture stays at chance for 2000+ steps (measured, README).
CURRICULUM = ((0.2, (0.0, 1.0, 0.0, 0.0, 0.0, 0.0)),
              (0.55, (0.7, 0.3, 0.0, 0.0, 0.0, 0.0)),
              (1.0, (0.4, 0.15, 0.35, 0.04, 0.03, 0.03)))


def generate(num_scenes: int, qa_per_scene: int, seed: int, image_size: int = T.IMAGE_SIZE):
  """-> images [S, H, W, 3] uint8, a list of (scene index, question, answer), task ids [N]. Scene seeds are disjoint
  from the VLA demonstrations and evaluation scenes (they start at 9_000_000)."""
  rng = np.random.default_rng([seed, 3])
  scene_seeds = [9_000_000 + seed * 100_000 + i for i in range(num_scenes)]
  state = T.reset(scene_seeds)
  # Move the gripper (sometimes holding an object) so the VLM also sees mid-task scenes.
  state.gripper = rng.uniform(0.05, 0.95, state.gripper.shape)
  images = T.render(state, image_size)
  samples = [(i, *sample_qa(rng, state, i)) for i in range(num_scenes) for _ in range(qa_per_scene)]
  return images, [(i, q, a) for i, _, q, a in samples], np.array([n for _, n, _, _ in samples])


def all_sentences(qa) -> list[str]:
  return [q for _, q, _ in qa] + [a for _, _, a in qa]
