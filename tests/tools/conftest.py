import os

import pytest

from apt_jax.tools import tpu


@pytest.fixture(scope="session")
def libtpu():
  """TPU topology compiles need libtpu (`make venv-tpu`; `make test` installs it). Skipped without it, except in CI."""
  if not tpu.libtpu_available():
    reason = "libtpu is not installed (make venv-tpu): TPU topology compiles not checked"
    if os.environ.get("CI"):
      pytest.fail(reason + "; CI runs `make test`, which installs it")
    pytest.skip(reason)
