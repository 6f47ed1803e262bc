"""A TFDS `GeneratorBasedBuilder` that writes RLDS episodes given as Python lists of step dicts.

The shipped sample (`data/make_sample_libero.py`), the tests and users converting their own data all write through
`write_episodes`. An episode is `{"steps": [step, ...], "episode_metadata": {"file_path": ..., ...}}` where each step
is a nested dict matching `features["steps"]`, e.g. for LIBERO:

    {"observation": {"image": uint8[256,256,3], "wrist_image": uint8[256,256,3], "state": f32[8],
                     "joint_state": f32[7]},
     "action": f32[7], "language_instruction": "pick up the black bowl ..."}

`is_first` / `is_last` / `is_terminal` / `reward` / `discount` are filled in when a step leaves them out (RLDS demo
conventions: reward 1 and is_terminal on the last step, discount 1).

Why a class factory: the TFDS dataset name is a class attribute, and the spec is a parameter here, so each call
builds a subclass with `skip_registration=True` (no clash in TFDS's global registry when several datasets with the
same name are written in one process). The builder returns `tfds.core.DatasetInfo(builder=self, ...)` directly, so it
does not need `dataset_info_from_configs` (which requires the builder to live in a package with metadata files).
Shuffling at write time is disabled: episodes are stored in the order given, so "episode i" in error messages and
tests is the i-th episode written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import tensorflow_datasets as tfds

DEFAULT_VERSION = "1.0.0"


def fill_rlds_step_defaults(steps: list[dict], features: tfds.features.FeaturesDict | None = None) -> list[dict]:
  """Returns copies of `steps` with the RLDS bookkeeping fields added where missing (only those in `features`)."""
  step_keys = None
  if features is not None:
    step_keys = set(features["steps"].feature.keys())
  n = len(steps)
  out = []
  for i, step in enumerate(steps):
    step = dict(step)
    defaults = {
        "is_first": i == 0,
        "is_last": i == n - 1,
        "is_terminal": i == n - 1,
        "reward": float(i == n - 1),
        "discount": 1.0,
    }
    for k, v in defaults.items():
      if k not in step and (step_keys is None or k in step_keys):
        step[k] = v
    out.append(step)
  return out


def make_builder_class(
    name: str,
    features: tfds.features.FeaturesDict,
    *,
    version: str = DEFAULT_VERSION,
    description: str = "RLDS episodes written by apt_jax.",
) -> type[tfds.core.GeneratorBasedBuilder]:
  """Returns a GeneratorBasedBuilder subclass named `name` whose examples are RLDS episodes with `features`.

  Instantiate it with `episodes={"train": iterable_of_episodes, ...}` and `data_dir=...`, then call
  `download_and_prepare()`.
  """

  class RldsEpisodeBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(version)
    RELEASE_NOTES = {version: "Written by apt_jax (data/rlds_builders)."}
    # No checksums file to look up. TFDS would otherwise locate this module's package through
    # `importlib_resources`, which tfds 4.9.10 uses without declaring it as a dependency.
    code_path = None

    def __init__(self, *, episodes: Mapping[str, Iterable[dict]] | None = None, **kwargs):
      self._episodes = dict(episodes or {})
      super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
      return tfds.core.DatasetInfo(
          builder=self,
          description=description,
          features=features,
          disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      if not self._episodes:
        raise ValueError(f"{name}: no episodes given (pass episodes={{'train': [...]}})")
      return {split: self._generate_examples(eps) for split, eps in self._episodes.items()}

    def _generate_examples(self, episodes: Iterable[dict]):
      for i, episode in enumerate(episodes):
        episode = dict(episode)
        episode["steps"] = fill_rlds_step_defaults(list(episode["steps"]), features)
        yield i, episode

  RldsEpisodeBuilder.name = name
  RldsEpisodeBuilder.__name__ = RldsEpisodeBuilder.__qualname__ = f"RldsEpisodeBuilder_{name}"
  return RldsEpisodeBuilder


def write_episodes(
    data_dir: str | os.PathLike,
    name: str,
    episodes: Iterable[dict] | Mapping[str, Iterable[dict]],
    features: tfds.features.FeaturesDict,
    *,
    version: str = DEFAULT_VERSION,
    description: str = "RLDS episodes written by apt_jax.",
) -> str:
  """Writes episodes as the TFDS dataset `<data_dir>/<name>/<version>/` and returns that directory.

  `episodes` is an iterable (written as split "train") or a mapping split -> iterable. The result can be read with
  `tfds.builder_from_directory(dir)` or by apt_jax's loader with `{"name": name, "data_dir": data_dir}`.
  """
  if not isinstance(episodes, Mapping):
    episodes = {"train": episodes}
  cls = make_builder_class(name, features, version=version, description=description)
  builder = cls(episodes=episodes, data_dir=os.fspath(data_dir))
  builder.download_and_prepare()
  return os.fspath(builder.data_dir)


def as_episode(steps: list[dict[str, Any]], file_path: str, **metadata) -> dict:
  """Convenience: wraps a list of step dicts into an RLDS episode dict."""
  return {"steps": steps, "episode_metadata": {"file_path": file_path, **metadata}}
