"""Checkpoint assets written to a bucket path (gs://) go through epath, not the local filesystem."""

import json

from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing

from apt_jax import checkpoints
from apt_jax import testing


def test_assets_to_a_bucket_land_in_the_bucket(tmp_path, monkeypatch):
  bucket = tmp_path / "bucket"
  local = lambda p: str(p).replace("gs://my-bucket", str(bucket))
  redirect = lambda fn, p, *a, **k: fn(local(p), *a, **k)
  monkeypatch.chdir(tmp_path)  # a path mistaken for a local one would land under the cwd
  # etils sends gs:// to TensorFlow's GCS client whenever TF is installed, past its own mock: use the mock backend.
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  with epath_testing.mock_epath(open=redirect, exists=redirect, makedirs=redirect, mkdir=redirect, isdir=redirect):
    checkpoints.write_assets(epath.Path("gs://my-bucket/run/3/assets"), model_config=testing.tiny_pi0_config(64),
                             norm_stats={testing.ASSET_ID: testing.libero_norm_stats()})
  assets = bucket / "run" / "3" / "assets"
  assert json.loads((assets / checkpoints.MODEL_CONFIG_FILE).read_text())["head"] == "pi0"
  assert (assets / testing.ASSET_ID / "norm_stats.json").exists()
  assert not (tmp_path / "gs:").exists()
