"""Each head trains its debug config through the real entry point (apt_jax.train.main) and the loss goes down; a
Stage 2 run then initialises from the Stage 1 checkpoint (`init_from`, the head's own Stage 1 -> Stage 2 mapping)."""

import importlib

import numpy as np
import pytest

from apt_jax import configs
from apt_jax import metrics
from apt_jax import train

STEPS = 300


def debug_config(module: str, arg: str, **overrides):
  c = importlib.import_module(f"experiments.{module}").get_config(arg)
  c.progress_bar = False
  c.async_checkpoint = False
  c.num_train_steps = STEPS
  c.log_every_steps = 1
  c.ckpt_every_steps = STEPS
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def losses(workdir):
  return np.array([r["loss"] for r in metrics.read_metrics(workdir) if "loss" in r])


@pytest.mark.slow
@pytest.mark.parametrize("module", ["debug_gr00t", "debug_apt_expert"])
def test_debug_config_trains_stage1_then_stage2(module, tmp_path):
  s1 = tmp_path / "s1"
  train.main(debug_config(module, "stage1"), s1)
  l1 = losses(s1)
  assert len(l1) == STEPS and np.isfinite(l1).all()
  assert l1[-30:].mean() < 0.85 * l1[:5].mean(), l1
  s2 = tmp_path / "s2"
  train.main(debug_config(module, "stage2", init_from=str(s1), num_train_steps=1, ckpt_every_steps=1), s2)
  l2 = losses(s2)
  assert len(l2) == 1 and np.isfinite(l2).all()


@pytest.mark.parametrize("module", ["debug_gr00t", "debug_apt_expert"])
def test_debug_config_builds_and_round_trips_through_the_registry(module):
  from apt_jax.models import registry
  c = debug_config(module, "stage2")
  model_config = configs.model_config(c)
  assert registry.config_from_dict(registry.config_to_dict(model_config)) == model_config
  assert model_config.apt_stage == "stage2" and not model_config.vlm_trainable
