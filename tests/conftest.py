"""Shared test setup: 8 virtual CPU devices, the openpi parity fixture, and a tiny SentencePiece model."""

import os

# Must happen before jax is imported anywhere (pytest imports conftest.py before the test modules).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile many small graphs: XLA's cheap mode halves the suite's time on 2 cores (as flax's lm1b tests do).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# Many tests compile identical graphs (e.g. three train.main runs in the resume test): share compilations through
# JAX's persistent cache, in a directory private to this test session.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="apt_jax_test_jit_cache_")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import itertools
import pathlib

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The ground-truth fixtures (openpi's own outputs), next to the repo unless $APT_JAX_TESTDATA says where.
TESTDATA = pathlib.Path(os.environ.get("APT_JAX_TESTDATA", REPO_ROOT.parent / "shared" / "testdata"))
OPENPI_FIXTURE = TESTDATA / "openpi_pi0_tiny"
OPENPI_PI05_FIXTURE = TESTDATA / "openpi_pi05_tiny"

_COLORS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
_OBJECTS = ["block", "bowl", "cup", "mug", "plate", "sponge", "spoon", "can", "bottle", "box"]
_CONTAINERS = ["basket", "drawer", "tray", "sink", "pot", "bin"]


def robot_instructions():
  """A few hundred LIBERO-like instructions (deterministic)."""
  out = [f"pick up the {c} {o} and place it in the {k}"
         for c, o, k in itertools.product(_COLORS, _OBJECTS, _CONTAINERS)]
  out += [f"put the {o} on the {c} plate" for c, o in itertools.product(_COLORS, _OBJECTS)]
  out += [f"open the {k} and push the {o} inside" for k, o in itertools.product(_CONTAINERS, _OBJECTS)]
  return out


def unavailable(message: str):
  """A test's inputs are missing: it skips, but fails under CI=true (CI must not pass with zero parity checks)."""
  if os.environ.get("CI", "").lower() == "true":
    pytest.fail(f"{message} (CI=true: a missing input fails instead of skipping)", pytrace=False)
  pytest.skip(message)


def _fixture(path: pathlib.Path) -> pathlib.Path:
  if not (path / "expected.npz").exists():
    unavailable(f"openpi parity fixture not found at {path} (expected next to the repo, in ../shared/testdata, or "
                "under $APT_JAX_TESTDATA)")
  return path


@pytest.fixture(scope="session")
def openpi_fixture_dir() -> pathlib.Path:
  return _fixture(OPENPI_FIXTURE)


@pytest.fixture(scope="session")
def fixture_npz(openpi_fixture_dir):
  with np.load(openpi_fixture_dir / "expected.npz", allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def openpi_pi05_fixture_dir() -> pathlib.Path:
  """openpi's own π0.5 at the π0 fixture's sizes."""
  return _fixture(OPENPI_PI05_FIXTURE)


@pytest.fixture(scope="session")
def robot_sentences() -> list[str]:
  return robot_instructions()


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory, robot_sentences) -> str:
  """A ~200-piece SentencePiece model trained on robot instructions (PaliGemma ids: pad 0, eos 1, bos 2, unk 3)."""
  from apt_jax.models import tokenizer

  prefix = tmp_path_factory.mktemp("tokenizer") / "tiny_sp"
  return tokenizer.train_sentencepiece(robot_sentences, str(prefix), vocab_size=200)
