"""Access to the TFDS builder definitions that live in the repository's `data/rlds_builders/` folder.

The issue puts builder *definitions* in `data/` (next to the shipped sample), outside the `apt_jax` package. This
module imports that folder by path under the private name `apt_jax_rlds_builders`, once per process, so library code,
tests and benchmarks can write RLDS datasets without touching sys.path.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from apt_jax import experiment_files

_MODULE_NAME = "apt_jax_rlds_builders"


def rlds_builders() -> ModuleType:
  """Returns the `data/rlds_builders` package (write_episodes, libero_features, droid_features, ...)."""
  if _MODULE_NAME in sys.modules:
    return sys.modules[_MODULE_NAME]
  pkg_dir = experiment_files.REPO_ROOT / "data" / "rlds_builders"
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

