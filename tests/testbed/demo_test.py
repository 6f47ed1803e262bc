"""`apt_jax.demo` never deletes a workdir silently (resuming is tested by the slow smoke test and budgets_test)."""

import pytest

from apt_jax import demo


def test_existing_workdir_needs_resume_or_overwrite(tmp_path):
  (tmp_path / "results.md").write_text("a finished run")
  with pytest.raises(FileExistsError, match=r"--resume.*--overwrite"):
    demo.prepare_workdir(tmp_path, resume=False, overwrite=False)
  with pytest.raises(ValueError, match="exclude each other"):
    demo.prepare_workdir(tmp_path, resume=True, overwrite=True)
  demo.prepare_workdir(tmp_path, resume=True, overwrite=False)
  assert (tmp_path / "results.md").exists()
  demo.prepare_workdir(tmp_path, resume=False, overwrite=True)
  assert not tmp_path.exists()
  demo.prepare_workdir(tmp_path / "fresh", resume=False, overwrite=False)  # a new workdir needs no flag
