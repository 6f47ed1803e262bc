"""Experiment files, `experiments/<name>.py` with `get_config(arg)`, loaded by path; and the repository root.

The bottom layer under `apt_jax.configs` (which re-exports both), so that tools inside lower packages (e.g.
`python -m apt_jax.data.compute_norm_stats --config ...`) read experiment files without importing `configs`.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(spec: str | os.PathLike, arg: str | None = None):
  """`path/to/config.py[:arg]` -> the file's `get_config(arg)`, as `--config` of `python -m apt_jax.train` reads it."""
  path, _, spec_arg = str(spec).partition(":")
  arg = arg if arg is not None else (spec_arg or None)
  module_path = pathlib.Path(path)
  if not module_path.exists():
    raise FileNotFoundError(f"--config: {module_path} does not exist")
  mod_spec = importlib.util.spec_from_file_location(f"_apt_experiment_{module_path.stem}", module_path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
