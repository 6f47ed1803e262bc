"""Access to the TFDS builder definitions that live in the repository's `data/rlds_builders/` folder.

The issue puts builder *definitions* in `data/` (next to the shipped sample), outside the `apt_jax` package. This
module imports that folder by path under the private name `apt_jax_rlds_builders`, once per process, so library code,
tests and benchmarks can write RLDS datasets without touching sys.path.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"
SAMPLE_DIR = DATA_DIR / "sample"
SAMPLE_DATASET = "libero_sample"
SAMPLE_TOKENIZER = SAMPLE_DIR / "tokenizer.model"
SAMPLE_NORM_STATS = SAMPLE_DIR / "norm_stats.json"

_MODULE_NAME = "apt_jax_rlds_builders"


def rlds_builders() -> ModuleType:
  """Returns the `data/rlds_builders` package (write_episodes, libero_features, droid_features, ...)."""
  if _MODULE_NAME in sys.modules:
    return sys.modules[_MODULE_NAME]
  pkg_dir = DATA_DIR / "rlds_builders"
  spec = importlib.util.spec_from_file_location(
      _MODULE_NAME, pkg_dir / "__init__.py", submodule_search_locations=[str(pkg_dir)])
  if spec is None or spec.loader is None:
    raise ImportError(f"Cannot load the RLDS builders from {pkg_dir}")
  module = importlib.util.module_from_spec(spec)
  sys.modules[_MODULE_NAME] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[_MODULE_NAME]
    raise
  return module


def sample_data_config(**overrides) -> dict:
  """data_config for the shipped LIBERO-spec sample (`data/sample/libero_sample`), with openpi's pi0_libero choices."""
  config = {
      "datasets": [{"name": SAMPLE_DATASET, "data_dir": str(SAMPLE_DIR), "adapter": "libero", "weight": 1.0,
                    "split": "train"}],
      "norm_stats_path": str(SAMPLE_NORM_STATS),
      "delta_action_dims": 6,
      "use_quantile_norm": False,
      "skip_bad_records": False,
      "shuffle_buffer": 1024,
  }
  config.update(overrides)
  return config
