"""Under FSDP every device does its share of the step, no more: the 8-device program's matmul FLOPs are exactly an
eighth of the one-device program's (hlo_flops on both compiles; 8 fake CPU devices)."""

import jax
import pytest

from apt_jax import configs
from apt_jax import sharding
from apt_jax import testing
from apt_jax import train
from apt_jax.data.batch import abstract_batch
from apt_jax.tools import hlo_flops


def _step_flops(config, devices) -> float:
  model_config = configs.model_config(config)
  mesh = sharding.make_mesh(len(devices), devices)
  setup = train.make_setup(config, model_config, mesh)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), setup.abstract_state,
                       setup.state_shardings)
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
  batch = abstract_batch(model_config, config.batch_size, sharding.data_sharding(mesh))
  return hlo_flops.count(setup.jit_train_step().lower(rng, state, batch).compile().as_text()).flops


@pytest.mark.slow  # ~50 s of compiles; the v5e:2x2 topology test checks each chip's FSDP share of the state in CI
@pytest.mark.parametrize("stage", ["joint", "stage1"])
def test_fsdp_devices_split_the_work(stage):
  config = configs.load(configs.REPO_ROOT / "experiments" / "debug.py", stage)
  config.model.kwargs.update(testing.SIZES["small"])
  config.batch_size, config.mesh.min_fsdp_mbytes, config.train_augment = 8, 0.0, False
  one = _step_flops(config, jax.devices()[:1])
  assert 8 * _step_flops(config, jax.devices()) == pytest.approx(one, rel=1e-3)
