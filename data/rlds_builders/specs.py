"""RLDS feature specs (TFDS `FeaturesDict`s) of the datasets apt_jax reads.

Each function returns the exact published spec with its default arguments; the arguments only exist so that tests and
the shipped sample can write smaller images or deliberately broken variants.

* `libero_features`: openvla's `modified_libero_rlds` (`libero_{spatial,object,goal,10}_no_noops`), builder
  moojink/rlds_dataset_builder (see ../shared/reference/benchmarks.md §2).
* `droid_features`: DROID 1.0.x RLDS (droid-dataset/droid:docs/the-droid-dataset.md; benchmarks.md §6).
* `oxe_generic_features`: the kpertsch/rlds_dataset_builder template most Open X-Embodiment conversions follow
  (`observation/{image, wrist_image, state}`, `action`, `language_instruction`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

_F = tfds.features


def _rlds_step_bookkeeping() -> dict:
  return {
      "discount": _F.Scalar(dtype=np.float32, doc="Discount if provided, default to 1."),
      "reward": _F.Scalar(dtype=np.float32, doc="Reward if provided, 1 on final step for demos."),
      "is_first": _F.Scalar(dtype=np.bool_, doc="True on first step of the episode."),
      "is_last": _F.Scalar(dtype=np.bool_, doc="True on last step of the episode."),
      "is_terminal": _F.Scalar(
          dtype=np.bool_, doc="True on last step of the episode if it is a terminal step, True for demos."),
  }


def _drop(d: dict, drop: Sequence[str], prefix: str = "") -> dict:
  """Removes the "a/b"-style paths in `drop` from a nested dict of features (used to write broken datasets)."""
  out = {}
  for k, v in d.items():
    path = f"{prefix}{k}"
    if path in drop:
      continue
    out[k] = _drop(v, drop, path + "/") if isinstance(v, dict) else v
  return out


def _build(features: dict, drop: Sequence[str]) -> tfds.features.FeaturesDict:
  features = _drop(features, tuple(drop))
  steps = features.pop("steps")
  return _F.FeaturesDict({"steps": _F.Dataset(steps), **features})


def libero_features(
    image_size: int | tuple[int, int] = 256,
    *,
    state_dim: int = 8,
    action_dim: int = 7,
    image_channels: int = 3,
    episode_id: bool = False,
    drop: Sequence[str] = (),
) -> tfds.features.FeaturesDict:
  """openvla's LIBERO `*_no_noops` spec. Defaults are the published spec (256x256 jpeg, state 8, action 7).

  Args:
    image_size: height = width, or (height, width), of both cameras.
    state_dim, action_dim, image_channels: only changed to write deliberately wrong data in tests.
    episode_id: adds `episode_metadata/episode_id` (Text), present in some forks of the builder.
    drop: feature paths to leave out, e.g. ("steps/observation/wrist_image",).
  """
  h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
  image = lambda doc: _F.Image(shape=(h, w, image_channels), dtype=np.uint8, encoding_format="jpeg", doc=doc)
  metadata = {"file_path": _F.Text(doc="Path to the original data file.")}
  if episode_id:
    metadata["episode_id"] = _F.Text(doc="Episode ID.")
  return _build({
      "steps": {
          "observation": {
              "image": image("Main camera RGB observation."),
              "wrist_image": image("Wrist camera RGB observation."),
              "state": _F.Tensor(shape=(state_dim,), dtype=np.float32, doc="Robot EEF state (6D pose, 2D gripper)."),
              "joint_state": _F.Tensor(shape=(7,), dtype=np.float32, doc="Robot joint angles."),
          },
          "action": _F.Tensor(shape=(action_dim,), dtype=np.float32, doc="Robot EEF action."),
          **_rlds_step_bookkeeping(),
          "language_instruction": _F.Text(doc="Language Instruction."),
      },
      "episode_metadata": metadata,
  }, drop)


def droid_features(
    image_size: tuple[int, int] = (180, 320),
    *,
    language_embeddings: bool = False,
    drop: Sequence[str] = (),
) -> tfds.features.FeaturesDict:
  """DROID RLDS spec (float64 proprioception, three 180x320 cameras, three instructions per step).

  The released dataset also stores `language_embedding{,_2,_3}` (512 floats each); they are off by default because
  apt_jax never reads them.
  """
  image = lambda doc: _F.Image(shape=(*image_size, 3), dtype=np.uint8, encoding_format="jpeg", doc=doc)
  f64 = lambda n, doc: _F.Tensor(shape=(n,), dtype=np.float64, doc=doc)
  steps = {
      "observation": {
          "gripper_position": f64(1, "Gripper position state."),
          "cartesian_position": f64(6, "Robot Cartesian state."),
          "joint_position": f64(7, "Joint position state."),
          "wrist_image_left": image("Wrist camera RGB left viewpoint."),
          "exterior_image_1_left": image("Exterior camera 1 left viewpoint."),
          "exterior_image_2_left": image("Exterior camera 2 left viewpoint."),
      },
      "action_dict": {
          "gripper_position": f64(1, "Commanded gripper position."),
          "gripper_velocity": f64(1, "Commanded gripper velocity."),
          "cartesian_position": f64(6, "Commanded Cartesian position."),
          "cartesian_velocity": f64(6, "Commanded Cartesian velocity."),
          "joint_position": f64(7, "Commanded joint position."),
          "joint_velocity": f64(7, "Commanded joint velocity."),
      },
      **_rlds_step_bookkeeping(),
      "action": f64(7, "Robot action, consists of [6x joint velocities, 1x gripper position]."),
      "language_instruction": _F.Text(doc="Language instruction."),
      "language_instruction_2": _F.Text(doc="Alternative language instruction."),
      "language_instruction_3": _F.Text(doc="Alternative language instruction."),
  }
  if language_embeddings:
    for suffix in ("", "_2", "_3"):
      steps[f"language_embedding{suffix}"] = _F.Tensor(shape=(512,), dtype=np.float32, doc="Language embedding.")
  return _build({
      "steps": steps,
      "episode_metadata": {
          "recording_folderpath": _F.Text(doc="Path to the folder of recordings."),
          "file_path": _F.Text(doc="Path to the original data file."),
      },
  }, drop)


def oxe_generic_features(
    image_size: int | tuple[int, int] = 64,
    *,
    state_dim: int = 10,
    action_dim: int = 10,
    wrist_image: bool = True,
    encoding_format: str = "png",
    drop: Sequence[str] = (),
) -> tfds.features.FeaturesDict:
  """The RLDS template spec used by most Open X-Embodiment conversions (kpertsch/rlds_dataset_builder)."""
  h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
  image = lambda doc: _F.Image(shape=(h, w, 3), dtype=np.uint8, encoding_format=encoding_format, doc=doc)
  observation = {"image": image("Main camera RGB observation.")}
  if wrist_image:
    observation["wrist_image"] = image("Wrist camera RGB observation.")
  observation["state"] = _F.Tensor(shape=(state_dim,), dtype=np.float32, doc="Robot state.")
  return _build({
      "steps": {
          "observation": observation,
          "action": _F.Tensor(shape=(action_dim,), dtype=np.float32, doc="Robot action."),
          **_rlds_step_bookkeeping(),
          "language_instruction": _F.Text(doc="Language Instruction."),
      },
      "episode_metadata": {"file_path": _F.Text(doc="Path to the original data file.")},
  }, drop)
