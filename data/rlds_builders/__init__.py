"""TFDS builder definitions for RLDS datasets written by apt_jax (shipped sample, tests, user conversions).

Importable as a plain package when `data/` is on sys.path (scripts in `data/`), or from anywhere through
`apt_jax.data.builders.rlds_builders()`, which loads this folder by path.
"""

from .episode_builder import DEFAULT_VERSION
from .episode_builder import as_episode
from .episode_builder import fill_rlds_step_defaults
from .episode_builder import make_builder_class
from .episode_builder import write_episodes
from .specs import droid_features
from .specs import libero_features
from .specs import oxe_generic_features

__all__ = [
    "DEFAULT_VERSION", "as_episode", "fill_rlds_step_defaults", "make_builder_class", "write_episodes",
    "droid_features", "libero_features", "oxe_generic_features",
]
