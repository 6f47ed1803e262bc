"""`apt_jax.demo` never deletes a workdir silently, and `--resume` reuses what a run of the same config finished."""

import json

import numpy as np
import pytest

from apt_jax import configs
from apt_jax import demo
from apt_jax.testbed import experiment
from apt_jax.testbed import vlm_pretrain

TINY = configs.REPO_ROOT / "experiments" / "testbed_demo.py"


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


@pytest.fixture
def counted_stages(monkeypatch):
  """VLM pretraining, recipe training and evaluation replaced by stubs that count their calls (the resume logic is
  under test here, not the stages; the slow smoke test runs them for real)."""
  calls = {"vlm": 0, "recipe": 0}

  def pretrain(*args, **kwargs):
    calls["vlm"] += 1
    return vlm_pretrain.VlmResult(params={}, train_seconds=0.0, eval_accuracy={"all": 0.5}, losses=[])

  def run_recipe_seed(cfg, recipe, seed, *args):
    calls["recipe"] += 1
    return None, None, {"losses": [(0, 1.0)]}

  def evaluate(cfg, model_config, params, sets, seed):
    return ({s: [1, 0] for s in sets}, {s: [1, 1] for s in sets})

  monkeypatch.setattr(vlm_pretrain, "pretrain", pretrain)
  monkeypatch.setattr(vlm_pretrain, "save", lambda path, params: np.savez(path))
  monkeypatch.setattr(experiment, "run_recipe_seed", run_recipe_seed)
  monkeypatch.setattr(experiment, "evaluate", evaluate)
  return calls


def test_resume_reuses_finished_stages_and_refuses_another_config(tmp_path, counted_stages):
  cfg = configs.load(TINY, "tiny")
  first = experiment.run(cfg, tmp_path)
  runs = len(cfg.recipes) * len(cfg.seeds)
  assert counted_stages == {"vlm": 1, "recipe": runs}
  (tmp_path / "runs" / f"{cfg.recipes[0]}_s{cfg.seeds[0]}.json").unlink()  # as if interrupted before the last save
  second = experiment.run(cfg, tmp_path, resume=True)
  assert counted_stages == {"vlm": 1, "recipe": runs + 1}
  assert second["per_seed"] == first["per_seed"]
  table = json.loads((tmp_path / "results.json").read_text())["table"]
  assert set(table) == set(cfg.recipes)
  # Every stub run scored [1, 0] per split: pooled over seeds, half of 2 x seeds episodes, reused runs included.
  assert all(r["k"] == len(cfg.seeds) and r["n"] == 2 * len(cfg.seeds) for row in table.values() for r in row.values())
  other = configs.load(TINY, "tiny")
  other.vla.steps += 1
  with pytest.raises(ValueError, match=r"config\.json differs"):
    experiment.run(other, tmp_path, resume=True)
