"""Export in openpi's params/assets layout: openpi's tree and restore semantics, APT extras, round trips."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from apt_jax import checkpoints
from apt_jax import export
from apt_jax import policy as _policy
from apt_jax import policy_config as _policy_config
from apt_jax import testing
from apt_jax import tree as tree_lib
from apt_jax.testing import ASSET_ID
from tests.serving.conftest import clone


def _orbax_key_ranks(params_dir) -> dict:
  """{"/"-joined key: rank} of an Orbax params item, read from its metadata only (no arrays)."""
  meta = ocp.PyTreeCheckpointer().metadata(params_dir)
  item = meta.item_metadata if hasattr(meta, "item_metadata") else meta
  item = item.tree if hasattr(item, "tree") else item
  return {k: len(v.shape) for k, v in tree_lib.flatten(dict(item)).items()}


def _assert_trees_equal(a, b):
  fa, fb = tree_lib.flatten(a), tree_lib.flatten(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype, k
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_plain_pi0_export_is_openpi_tree_and_round_trips(tiny_ckpt, tiny_model, openpi_fixture_dir, tmp_path):
  out = tmp_path / "openpi_export"
  meta = export.main(["--checkpoint", str(tiny_ckpt), "--out", str(out), "--format", "openpi"])
  assert meta["openpi_pi0_compatible"] and meta["extra_params"] == [] and meta["apt_stage"] == "none"
  assert json.loads((out / "assets" / export.EXPORT_METADATA_FILE).read_text()) == meta
  assert (out / "assets" / ASSET_ID / "norm_stats.json").read_text() == \
      (tiny_ckpt / "assets" / ASSET_ID / "norm_stats.json").read_text()

  # openpi's restore semantics: one item {"params": ...}, every key ending in "value" ...
  keys = _orbax_key_ranks(out / "params")
  assert all(k.startswith("params/") and k.endswith("/value") for k in keys)
  # ... and exactly openpi π0's tree (keys and ranks of openpi's own checkpoint; sizes differ, the fixture is bigger).
  assert keys == _orbax_key_ranks(openpi_fixture_dir / "checkpoint" / "params")
  assert len(keys) == 50

  # Export -> restore is exact (stored dtype kept), and openpi's plain Orbax restore sees the same arrays.
  restored = checkpoints.restore_params(out / "params", restore_type=np.ndarray)
  _assert_trees_equal(restored, jax.tree.map(np.asarray, tiny_model.params))
  raw = ocp.PyTreeCheckpointer().restore((out / "params").absolute())["params"]
  np.testing.assert_array_equal(raw["action_out_proj"]["kernel"]["value"],
                                np.asarray(tiny_model.params["action_out_proj"]["kernel"]))

  # The export serves like its source.
  src = clone(_policy.create_trained_policy(tiny_ckpt), 9)
  dst = clone(_policy.create_trained_policy(out), 9)
  obs = src.transforms.env.example(np.random.default_rng(0))
  np.testing.assert_array_equal(src.infer(obs)["actions"], dst.infer(obs)["actions"])


def test_export_refuses_to_overwrite_and_casts(tiny_ckpt, tmp_path):
  out = tmp_path / "e"
  export.export_openpi(tiny_ckpt, out)
  with pytest.raises(FileExistsError):
    export.export_openpi(tiny_ckpt, out)
  meta = export.main(["--checkpoint", str(tiny_ckpt), "--out", str(out), "--overwrite", "--dtype", "bfloat16"])
  assert meta["param_dtypes"] == ["bfloat16"]
  assert {x.dtype.name for x in jax.tree.leaves(checkpoints.restore_params(out / "params",
                                                                           restore_type=np.ndarray))} == {"bfloat16"}


def test_apt_stage2_export_carries_fusion_params(tmp_path, tiny_vocab, tiny_tokenizer_path):
  config = testing.tiny_pi0_config(tiny_vocab, apt_stage="stage2")
  rng = np.random.default_rng(1)  # random values of the right shapes: no need to compile init
  model = config.model_class()(config=config, params=jax.tree.map(
      lambda s: rng.standard_normal(s.shape).astype(s.dtype), config.abstract_params()))
  src = testing.write_tiny_checkpoint(tmp_path / "stage2" / "10", model, tiny_tokenizer_path)
  out = tmp_path / "stage2_openpi"
  meta = export.export_openpi(src, out)
  assert meta["apt_stage"] == "stage2" and not meta["openpi_pi0_compatible"]
  assert meta["extra_params"] and all("fusion" in k for k in meta["extra_params"])
  assert meta["missing_openpi_params"] == []
  assert meta["num_leaves"] == 50 + len(meta["extra_params"])
  _assert_trees_equal(checkpoints.restore_params(out / "params", restore_type=np.ndarray),
                      jax.tree.map(np.asarray, model.params))


@pytest.mark.parametrize("fixture_dir", ["openpi_fixture_dir", "openpi_pi05_fixture_dir"], ids=["pi0", "pi05"])
def test_openpi_checkpoint_round_trips_through_export(fixture_dir, tmp_path, request):
  """An openpi π0 or π0.5 checkpoint (no model_config.json) exports with an explicit model config and restores
  unchanged."""
  openpi_fixture_dir = request.getfixturevalue(fixture_dir)
  cfg_file = tmp_path / "fixture_model.json"
  cfg_file.write_text(json.dumps({"head": "pi0", "config": testing.fixture_model_kwargs(openpi_fixture_dir)}))
  out = tmp_path / "reexport"
  meta = export.export_openpi(openpi_fixture_dir / "checkpoint", out, model_config=cfg_file)
  assert meta["openpi_pi0_compatible"] and meta["extra_params"] == []
  src = checkpoints.restore_params(openpi_fixture_dir / "checkpoint" / "params", restore_type=np.ndarray)
  _assert_trees_equal(checkpoints.restore_params(out / "params", restore_type=np.ndarray), src)
  assert (out / "assets" / "physical-intelligence" / "libero" / "norm_stats.json").exists()
  assert (out / "assets" / "model_config.json").exists()


def test_export_with_experiment_config_writes_policy_config(tiny_ckpt, tmp_path):
  import ml_collections
  exp = ml_collections.ConfigDict({
      "model": {"head": "pi0", "kwargs": {}}, "tokenizer_path": "", "asset_id": ASSET_ID,
      "data": {"datasets": [{"name": "d", "data_dir": "/x", "adapter": "droid"}], "delta_action_dims": 7,
               "use_quantile_norm": True, "norm_stats_path": "/x/norm_stats.json"}})
  out = tmp_path / "with_exp"
  export.export_openpi(tiny_ckpt, out, experiment_config=exp)
  pc = _policy_config.read_policy_config(out)
  assert (pc.env, pc.delta_action_dims, pc.use_quantile_norm, pc.asset_id) == ("droid", 7, True, ASSET_ID)
  assert pc.normalized
