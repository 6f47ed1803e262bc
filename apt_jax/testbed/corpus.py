"""The VLM's corpus: renderer scenes (random and fixed layouts, every object kind and container, both environments)
with rich language that uses canonical words AND the synonyms/templates that the VLA task data never uses, and every
prompt format the VLA feeds the VLM: the bare instruction (TASK "bare") and the empty prompt (TASK "caption").

Every sample is (image, prefix text, suffix text); the VLM is trained with PaliGemma's prefix-LM loss on the suffix.
Location answers name the board cell (tabletop.GRID x GRID): a row word and a column word, e.g. "top far-left".
"""

from __future__ import annotations

import numpy as np

from apt_jax.testbed import language as L
from apt_jax.testbed import tabletop as T

ROWS = ("top", "upper", "middle", "lower", "bottom")
COLS = ("far-left", "left", "center", "right", "far-right")
assert len(ROWS) == len(COLS) == T.GRID
TASK_NAMES = ("refer", "container", "instruction", "bare", "exists", "colour", "caption")
NUM_TASKS = len(TASK_NAMES)
# VLM pretraining phases ((until fraction of the steps, task weights), ...), blended linearly across boundaries
# (vlm_pretrain.curriculum_weights). A tiny VLM learns to read a location off the image token on the easiest question
# first (containers: 4 fixed looks), then objects, then the instruction formats, VQA and captions; a flat mixture
# stays at chance for 2000+ steps (measured in v1, README).
CURRICULUM = ((0.2, (0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)),
              (0.5, (0.7, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0)),
              (1.0, (0.25, 0.1, 0.2, 0.3, 0.05, 0.05, 0.05)))
# Share of corpus scenes in the unseen environment (the VLM's "web" data knows it; the task data never shows it).
UNSEEN_ENV_FRACTION = 0.2


def location(p) -> str:
  """(x, y) in the unit square -> "<row> <column>" of its board cell."""
  r, c = (min(int(v * T.GRID), T.GRID - 1) for v in (p[1], p[0]))
  return f"{ROWS[r]} {COLS[c]}"


def _word(rng, w, synonyms_p):
  return str(rng.choice(L.SYNONYMS[w])) if rng.random() < synonyms_p else w


def _obj_phrase(rng, kind, synonyms_p=0.6):
  colour, shape = T.OBJECTS[kind]
  return f"{_word(rng, colour, synonyms_p)} {_word(rng, shape, synonyms_p)}"


def bare_answer(state: T.State, i: int) -> str:
  """What the VLM answers to a bare instruction about scene i: the target object's cell, then the container's."""
  return (f"{location(state.obj_pos[i, state.target_obj[i]])} to "
          f"{location(state.cont_pos[i, state.target_cont[i]])}")


def qa(rng, state: T.State, i: int, n: int) -> tuple[str, str]:
  """One (question, answer) of task n (TASK_NAMES) about scene i of `state`."""
  kinds, pos, conts, cont_pos = state.obj_kind[i], state.obj_pos[i], state.cont_kind[i], state.cont_pos[i]
  j, c = int(rng.integers(len(kinds))), int(rng.integers(len(conts)))
  name = TASK_NAMES[n]
  if name == "refer":
    return f"where is the {_obj_phrase(rng, kinds[j])}?", location(pos[j])
  if name == "container":
    return f"where is the {_word(rng, T.CONTAINERS[conts[c]], 0.6)}?", location(cont_pos[c])
  if name == "instruction":   # which object / which container, with a question suffix
    text = L.instruction((int(kinds[j]), int(conts[c])), rng, paraphrase=rng.random() < 0.6)
    if rng.random() < 0.5:
      return f"{text}. object?", location(pos[j])
    return f"{text}. target?", location(cont_pos[c])
  if name == "bare":   # the VLA's own prompt format: the bare instruction (training template or a paraphrase)
    s = T.retarget(state.index([i]), [(int(kinds[j]), int(conts[c]))])
    return L.instruction(T.target_pair(s)[0], rng, paraphrase=rng.random() < 0.5), bare_answer(s, 0)
  if name == "exists":
    k = int(rng.integers(len(T.OBJECTS)))
    return f"is there a {_obj_phrase(rng, k)}?", "yes" if k in kinds else "no"
  if name == "colour":   # the object nearest a container
    j = int(np.argmin(np.linalg.norm(pos - cont_pos[c], axis=-1)))
    return (f"what colour is the object nearest the {_word(rng, T.CONTAINERS[conts[c]], 0.5)}?",
            _word(rng, T.OBJECTS[kinds[j]][0], 0.3))
  # caption, with the empty prompt that Stage 1 feeds
  return "", ", ".join(f"a {_obj_phrase(rng, kinds[k], 0.4)}" for k in rng.permutation(len(kinds)))


def scenes(num_scenes: int, seed: int) -> T.State:
  """Corpus scenes: any pair of any kinds and containers, random or fixed layout, some in the unseen environment,
  the gripper moved to a random point (mid-task views). Seeds disjoint from the task data and the evaluation."""
  rng = np.random.default_rng([seed, 3])
  out = []
  for _ in range(num_scenes):
    pair = L.ALL_PAIRS[int(rng.integers(len(L.ALL_PAIRS)))]
    out.append(T.sample_scene(rng, pair, layout=T.LAYOUTS[int(rng.integers(2))], kinds=range(len(T.OBJECTS)),
                              containers=range(len(T.CONTAINERS)),
                              env=int(rng.random() < UNSEEN_ENV_FRACTION)))
  state = T.State.concat(out)
  state.gripper = rng.uniform(0.05, 0.95, state.gripper.shape)
  return state


def generate(num_scenes: int, qa_per_scene: int, seed: int, image_size: int = T.IMAGE_SIZE):
  """-> images [S, H, W, 3] uint8, [(scene index, question, answer)], task ids [N]: qa_per_scene samples of each
  task per scene is too many; each sample draws its task uniformly (the curriculum re-weights at training time)."""
  state = scenes(num_scenes, seed)
  rng = np.random.default_rng([seed, 4])
  samples, tasks = [], []
  for i in range(num_scenes):
    for _ in range(qa_per_scene):
      n = int(rng.integers(NUM_TASKS))
      samples.append((i, *qa(rng, state, i, n)))
      tasks.append(n)
  return T.render(state, image_size), samples, np.array(tasks)


def all_sentences(samples) -> list[str]:
  return [q for _, q, _ in samples if q] + [a for _, _, a in samples]
