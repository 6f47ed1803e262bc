"""Generates the tiny shipped sample in openvla's LIBERO `*_no_noops` RLDS spec (`data/sample/`).

    .venv/bin/python data/make_sample_libero.py [--out data/sample] [--episodes 6]

Writes, deterministically (the tfrecord's parsed contents are identical on every run; protobuf may order the
features of a serialized record differently between processes):
* `<out>/libero_sample/1.0.0/`  TFDS dataset (split "train"): synthetic pick-and-place episodes rendered as flat
  coloured shapes (table, plate, black bowl, distractors, a two-finger gripper) from an agent-view and a wrist
  camera at 256x256 (jpeg), 8-D EEF state, 7-D delta-EEF actions (gripper -1 open / +1 close) and LIBERO-spatial
  instructions.
* `<out>/tokenizer.model`  a small SentencePiece model (PaliGemma id conventions) trained on LIBERO instructions;
  a stand-in for the real `paligemma_tokenizer.model`, which cannot be downloaded here.
* `<out>/norm_stats.json`  statistics of the sample for pi0_libero's choices (delta on the first 6 action dims,
  horizon 50).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import rlds_builders  # noqa: E402  (data/rlds_builders, a sibling package)

NAME = "libero_sample"
IMAGE_SIZE = 256
LOCATIONS = [
    "between the plate and the ramekin", "next to the ramekin", "from table center", "on the cookie box",
    "in the top drawer of the wooden cabinet", "on the ramekin", "next to the cookie box", "on the stove",
    "next to the plate", "on the wooden cabinet",
]
SPATIAL = [f"pick up the black bowl {loc} and place it on the plate" for loc in LOCATIONS]
OBJECT = [f"pick up the {o} and place it in the basket" for o in (
    "alphabet soup", "cream cheese", "salad dressing", "bbq sauce", "ketchup", "tomato sauce", "butter", "milk",
    "chocolate pudding", "orange juice")]
GOAL = [
    "open the middle drawer of the cabinet", "put the bowl on the stove", "put the wine bottle on top of the cabinet",
    "open the top drawer and put the bowl inside", "put the bowl on top of the cabinet",
    "push the plate to the front of the stove", "put the cream cheese in the bowl", "turn on the stove",
    "put the bowl on the plate", "put the wine bottle on the rack",
]
CORPUS = SPATIAL + OBJECT + GOAL


def render(scene: dict, eef: np.ndarray, gripper: float, bowl: np.ndarray, *, center, zoom: float) -> np.ndarray:
  """Draws the scene into uint8 [256, 256, 3]. World units: the table spans about [-1, 1]^2; zoom = pixels/unit/128."""
  n = IMAGE_SIZE
  pix = (np.arange(n) - n / 2 + 0.5) / (n / 2 * zoom)
  x = center[0] + pix[None, :]
  y = center[1] - pix[:, None]
  img = np.empty((n, n, 3), np.float32)
  img[:] = scene["wall"]
  img[np.broadcast_to(y < 0.6, (n, n))] = scene["table"]

  def disc(cx, cy, r, color, ry=None):
    ry = r if ry is None else ry
    m = ((x - cx) / r) ** 2 + ((y - cy) / ry) ** 2 < 1.0
    img[m] = color

  def rect(x0, y0, x1, y1, color):
    m = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    img[m] = color

  for (cx, cy, w, h), color in scene["boxes"]:
    rect(cx - w, cy - h, cx + w, cy + h, color)
  disc(*scene["plate"], 0.22, (235, 235, 230), ry=0.16)
  disc(*scene["plate"], 0.13, (215, 215, 210), ry=0.09)
  disc(bowl[0], bowl[1], 0.12, (25, 25, 30))
  disc(bowl[0], bowl[1], 0.08, (60, 60, 70))
  # Gripper: palm plus two fingers whose gap follows the gripper opening; size shrinks with height (z).
  s = 1.0 / (1.0 + 0.6 * eef[2])
  gap = (0.04 + 0.08 * gripper) * s
  rect(eef[0] - 0.12 * s, eef[1] + 0.05 * s, eef[0] + 0.12 * s, eef[1] + 0.11 * s, (150, 150, 160))
  rect(eef[0] - gap - 0.03 * s, eef[1] - 0.12 * s, eef[0] - gap, eef[1] + 0.06 * s, (110, 110, 120))
  rect(eef[0] + gap, eef[1] - 0.12 * s, eef[0] + gap + 0.03 * s, eef[1] + 0.06 * s, (110, 110, 120))
  return np.clip(img, 0, 255).astype(np.uint8)


def make_episode(i: int) -> dict:
  rng = np.random.default_rng(1000 + i)
  length = int(rng.integers(24, 37))
  scene = {
      "wall": np.array([200, 210, 225], np.float32) + rng.uniform(-15, 15, 3),
      "table": np.array([150, 110, 70], np.float32) + rng.uniform(-20, 20, 3),
      "plate": rng.uniform([-0.6, -0.7], [0.6, -0.2]),
      "boxes": [((*rng.uniform([-0.8, -0.8], [0.8, 0.3]), 0.1, 0.07), tuple(rng.integers(40, 220, 3).tolist()))
                for _ in range(2)],
  }
  bowl = rng.uniform([-0.6, -0.1], [0.6, 0.4])
  start = np.array([*rng.uniform([-0.5, -0.5], [0.5, 0.5]), 0.6])
  above_bowl = np.array([bowl[0], bowl[1], 0.05])
  above_plate = np.array([scene["plate"][0], scene["plate"][1], 0.15])
  t_grasp, t_place = int(0.4 * length), int(0.85 * length)
  # Waypoint trajectory for the EEF position, gripper opening (1 open, 0 closed).
  pos = np.zeros((length + 1, 3))
  grip = np.ones(length + 1)
  for t in range(length + 1):
    if t <= t_grasp:
      a = t / t_grasp
      pos[t] = (1 - a) * start + a * above_bowl
    elif t <= t_place:
      a = (t - t_grasp) / (t_place - t_grasp)
      pos[t] = (1 - a) * above_bowl + a * above_plate
      pos[t, 2] += 0.3 * np.sin(np.pi * a)
    else:
      pos[t] = above_plate + np.array([0, 0, 0.05 * (t - t_place)])
    grip[t] = 0.0 if t_grasp < t <= t_place else 1.0
  rot = np.stack([np.full(length + 1, np.pi), 0.1 * np.sin(np.arange(length + 1) / 7.0 + i),
                  0.05 * np.cos(np.arange(length + 1) / 5.0)], -1)
  steps = []
  instruction = SPATIAL[i % len(SPATIAL)]
  for t in range(length):
    held = t_grasp < t <= t_place
    bowl_now = pos[t, :2] if held else (bowl if t <= t_grasp else scene["plate"])
    agent = render(scene, pos[t], grip[t], bowl_now, center=(0.0, -0.1), zoom=1.0)
    wrist = render(scene, pos[t], grip[t], bowl_now, center=(pos[t, 0], pos[t, 1] - 0.1), zoom=2.2)
    state = np.concatenate([pos[t], rot[t], [0.04 * grip[t], -0.04 * grip[t]]]).astype(np.float32)
    action = np.concatenate([np.clip((pos[t + 1] - pos[t]) * 15.0, -1, 1), (rot[t + 1] - rot[t]) * 5.0,
                             [1.0 if grip[t + 1] < 0.5 else -1.0]]).astype(np.float32)
    joints = np.concatenate([0.3 * np.sin(pos[t] * 2.0 + np.arange(3)), 0.2 * np.cos(rot[t] + 1.0),
                             [grip[t] - 0.5]]).astype(np.float32)
    steps.append({
        "observation": {"image": agent, "wrist_image": wrist, "state": state, "joint_state": joints},
        "action": action,
        "language_instruction": instruction,
    })
  return rlds_builders.as_episode(steps, file_path=f"synthetic/libero_sample/episode_{i:03d}.hdf5")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=str(HERE / "sample"))
  parser.add_argument("--episodes", type=int, default=6)
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out).resolve()
  out.mkdir(parents=True, exist_ok=True)

  shutil.rmtree(out / NAME, ignore_errors=True)
  episodes = [make_episode(i) for i in range(args.episodes)]
  path = rlds_builders.write_episodes(out, NAME, episodes, rlds_builders.libero_features(IMAGE_SIZE),
                                      description="Synthetic LIBERO-spec sample shipped with apt_jax.")
  print(f"dataset: {path}")

  from apt_jax.models.tokenizer import train_sentencepiece
  cwd = os.getcwd()
  with tempfile.TemporaryDirectory() as tmp:
    os.chdir(tmp)  # a relative model_prefix: the path is stored in the model, which then stays byte-identical
    try:
      model = train_sentencepiece(CORPUS, "tokenizer", vocab_size=256)
      shutil.copy(model, out.resolve() / "tokenizer.model")
    finally:
      os.chdir(cwd)
  print(f"tokenizer: {out / 'tokenizer.model'}")

  from apt_jax.data import compute_norm_stats
  compute_norm_stats.main(["--data_dir", str(out), "--dataset", NAME, "--adapter", "libero",
                           "--delta_action_dims", "6", "--action_horizon", "50", "--out", str(out)])
  total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
  print(f"total size of {out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
  main()
