"""The whole testbed pipeline at a minuscule size (corpus, tokenizer, VLM npz through the PaliGemma loader, every
recipe, closed-loop eval, report). Several minutes of compilation on 2 cores: marked slow."""

import json

import pytest


@pytest.mark.slow
def test_testbed_pipeline_tiny(tmp_path):
  from apt_jax import configs
  from apt_jax.testbed import experiment
  config = configs.load(configs.REPO_ROOT / "experiments" / "testbed_demo.py", "tiny")
  summary = experiment.run(config, tmp_path, command="test")
  assert summary["expert_success"] >= 0.95
  tab = json.loads((tmp_path / "results.json").read_text())["table"]
  assert set(tab) == set(experiment.RECIPES)
  assert all(set(row) == {"seen", "paraphrase", "compositional", "task_perturb"} for row in tab.values())
  assert (tmp_path / "results.png").exists() and (tmp_path / "vlm_paligemma.npz").exists()
