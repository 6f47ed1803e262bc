"""Seeds vmapped (vla.train_vla_seeds, experiment's vla.vmap_seeds): two seeds trained together, each with its own
rng, init and batches, end where each seed trained alone ends; the recipe-major `run` writes the rows of the
seed-major one and, on a rerun, retrains only the seed whose checkpoint is gone."""

import re
import shutil

import jax
import numpy as np
import pytest

from apt_jax.testbed import vla

SIZE = dict(vlm_width=16, expert_width=16, depth=1, num_heads=2, num_kv_heads=2, head_dim=8, siglip_width=16,
            siglip_depth=1, patch_size=16, action_horizon=4, max_token_len=6)


def _frames(seed, episodes=3, steps=4):
  rng = np.random.default_rng(seed)
  n = episodes * steps
  return dict(images=rng.integers(0, 255, (n, vla.IMAGE_SIZE, vla.IMAGE_SIZE, 3), np.uint8),
              state=rng.normal(size=(n, 3)), actions=rng.normal(size=(n, 4, 3)), steps_per_episode=steps,
              tokens=rng.integers(1, 60, (episodes, 6)), mask=np.ones((episodes, 6), bool))


def _config(seed):
  c = vla.train_config(vla.model_kwargs(SIZE, vocab_size=64), steps=3, batch_size=2, lr=1e-2, seed=seed,
                       name=f"s{seed}")
  # Adam's update is ~linear in the gradient at eps 1: the float noise of a gradient that is zero in exact arithmetic
  # (SigLIP's key bias: softmax ignores it) stays noise instead of becoming a ±lr step, in either order of summation.
  c.optimizer.eps = 1.0
  return c


def test_two_seeds_together_end_as_each_seed_alone():
  seeds = (3, 7)
  data = lambda s: vla.EpisodeData(_frames(s), 2, [s, 3])   # each seed its own demos and batch order
  together = vla.train_vla_seeds([_config(s) for s in seeds], [data(s) for s in seeds], log=lambda m: None)
  for s, (params, info) in zip(seeds, together):
    alone, alone_info = vla.train_vla(_config(s), data(s), log=lambda m: None)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), params, alone)
    np.testing.assert_allclose(np.array(info["losses"]), np.array(alone_info["losses"]), rtol=1e-5)
  # The two seeds really differ (so the comparison above can tell one seed's init, rng or batches from the other's).
  a, b = (jax.tree.leaves(p) for p, _ in together)
  assert any(not np.allclose(x, y) for x, y in zip(a, b))


def test_a_non_finite_loss_names_its_seed():
  bad = _frames(7)
  bad["actions"][:] = np.nan
  data = [vla.EpisodeData(_frames(3), 2, [3, 3]), vla.EpisodeData(bad, 2, [7, 3])]
  with pytest.raises(FloatingPointError, match=r"\[s7\] non-finite loss nan at step 0 \(seed 7\)"):
    vla.train_vla_seeds([_config(3), _config(7)], data, log=lambda m: None)


def test_seeds_of_different_configs_are_refused():
  other = _config(2)
  other.batch_size = 4
  with pytest.raises(ValueError, match=r"config 's2' differs from 's1'"):
    vla.train_vla_seeds([_config(1), other], [None, None], log=lambda m: None)


def _keys(rows):
  return sorted((r["recipe"], r["seed"], r["flow_steps"], r["split"]) for r in rows)


def test_recipe_major_run_writes_the_seed_major_rows_and_resumes_per_seed(tmp_path):
  from apt_jax.testbed import experiment as E
  from experiments import testbed_demo
  cfg = testbed_demo.get_config("tiny")
  cfg.update(arms=("shortcut",), seeds=(0, 1), recipes=("apt_frozen",))
  cfg.size.update(vlm_width=16, expert_width=16, num_heads=2, num_kv_heads=2, head_dim=8, siglip_width=16)
  cfg.eval.sweep_flow_steps = ()
  E.run(cfg, tmp_path / "seed_major")
  vmapped = cfg.copy_and_resolve_references()
  vmapped.vla.vmap_seeds = True
  vmapped.vlm.reuse_from = str(tmp_path / "seed_major")   # the same VLMs (and no VLM training here)
  work = tmp_path / "vmapped"
  E.run(vmapped, work)
  rows = E.read_rows(work / "results.jsonl")
  assert _keys(rows) == _keys(E.read_rows(tmp_path / "seed_major" / "results.jsonl"))
  log = (work / "log.txt").read_text()
  assert "(2 seeds vmapped)" in log and "stage1_pool/s0 .. stage1_pool/s1" in log

  # Resume: seed 1's checkpoint and both seeds' rows gone -> seed 1 retrains alone, seed 0 is loaded and re-evaluated.
  shutil.rmtree(work / "shortcut" / "apt_frozen" / "s1")
  (work / "results.jsonl").write_text("")
  n = len(log)
  E.run(vmapped, work)
  log = (work / "log.txt").read_text()[n:]
  assert set(re.findall(r"\[([^\]]+)\] step ", log)) == {"shortcut/apt_frozen/s1"}   # not s0, nor the Stage 1s
  assert "shortcut/apt_frozen s0: success" in log
  assert _keys(E.read_rows(work / "results.jsonl")) == _keys(rows)
