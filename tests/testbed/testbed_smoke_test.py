"""The whole testbed pipeline at a minuscule size: corpus, tokenizer, VLM npz and its probes, every recipe on both
arms, closed-loop eval on every split, per-episode rows, report; a rerun resumes without training; a saved policy
loads through apt_jax's policy. Minutes of compilation on 2 cores: marked slow."""

import json

import pytest


@pytest.mark.slow
def test_testbed_pipeline_tiny(tmp_path):
  from apt_jax.testbed import experiment
  from apt_jax.testbed import language as L
  from experiments import testbed_demo
  cfg = testbed_demo.get_config("tiny")
  experiment.run(cfg, tmp_path, command="test")
  rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
  flows = (cfg.eval.flow_steps, *cfg.eval.sweep_flow_steps)
  assert len(rows) == len(L.ARMS) * len(cfg.recipes) * len(L.SPLITS) * cfg.eval.episodes_per_split * len(flows)
  assert {r["recipe"] for r in rows} == set(cfg.recipes) and {r["split"] for r in rows} == set(L.SPLITS)
  step_dirs = [d for arm in L.ARMS for d in tmp_path.glob(f"{arm}/*/s0/checkpoints/*/params")]
  assert len(step_dirs) == len(L.ARMS) * len(cfg.recipes)
  # One pool Stage 1 per seed, shared by every recipe and arm; one task-data Stage 1 per arm (the control).
  assert sorted(d.parts[-5] for d in tmp_path.glob("stage1/*/s0/checkpoints/*/params")) == [
      "pool", "task_balanced", "task_shortcut"]
  log_len = len((tmp_path / "log.txt").read_text())
  experiment.run(cfg, tmp_path, command="rerun")
  assert "step 1/" not in (tmp_path / "log.txt").read_text()[log_len:]      # nothing retrained
  assert len((tmp_path / "results.jsonl").read_text().splitlines()) == len(rows)
