"""Exports a checkpoint step in openpi's layout, for robots and tools that load openpi checkpoints.

    python -m apt_jax.export --checkpoint CKPT/STEP --out OUT_DIR --format openpi [--dtype stored|float32|bfloat16]
        [--config experiments/x.py[:arg]] [--model_config FILE | --head pi0] [--overwrite]

Writes OUT_DIR/params/ (openpi's params item, checked against the model config first), OUT_DIR/assets/ (the source's
assets; with --config, the training run's inference settings in policy_config.json) and
OUT_DIR/assets/apt_jax_export.json (head, apt_stage, openpi compatibility, extra params). For π0 with apt_stage
"none" the tree is openpi's leaf for leaf (`openpi_pi0_compatible: true`): openpi loads it with
`train_config.model.load(restore_params(OUT_DIR / "params", dtype=jnp.bfloat16))`. APT checkpoints are exported
too, but openpi's `load` drops the extra params (Stage 2's `fusion_1`) and lets the expert attend to the prompt,
i.e. runs a different model: serve them with `python -m apt_jax.serve`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import shutil

import jax
import numpy as np

from apt_jax import checkpoints
from apt_jax import configs
from apt_jax import policy as _policy
from apt_jax import policy_config as _policy_config
from apt_jax import tree as tree_lib
from apt_jax.models import registry

_log = logging.getLogger(__name__)

EXPORT_METADATA_FILE = "apt_jax_export.json"
FORMATS = ("openpi",)


def openpi_reference_tree(config, abstract_params: dict | None = None) -> dict | None:
  """Abstract params of the plain openpi model for `config`'s sizes (π0: apt_stage "none"); None: no counterpart.

  `abstract_params`: `config.abstract_params()` if already at hand (reused when config is already plain π0).
  """
  if registry.head_name(config) != "pi0":
    return None
  if config.apt_stage == "none" and abstract_params is not None:
    return abstract_params
  base = dataclasses.replace(config, apt_stage="none", vlm_trainable=None)
  return base.abstract_params()


def export_openpi(step_dir, out_dir, *, model_config=None, head: str | None = None, dtype=None,
                  overwrite: bool = False, experiment_config=None) -> dict:
  """Exports `step_dir` to `out_dir` in openpi's layout; returns the export metadata (also written to assets/).

  With `experiment_config` (the training run's config) its inference settings are written to
  assets/policy_config.json, so `apt_jax.serve` needs no further flags for the export.
  """
  step_dir, out_dir = pathlib.Path(step_dir), pathlib.Path(out_dir)
  if out_dir.resolve() == step_dir.resolve():
    raise ValueError("--out must differ from --checkpoint")
  if out_dir.exists() and any(out_dir.iterdir()):
    if not overwrite:
      raise FileExistsError(f"{out_dir} exists and is not empty (pass --overwrite)")
    shutil.rmtree(out_dir)
  config = _policy.resolve_model_config(step_dir, model_config, head=head, experiment_config=experiment_config)
  params = checkpoints.restore_params(step_dir / "params", restore_type=np.ndarray)
  abstract = config.abstract_params()
  tree_lib.check_tree(params, abstract, what=f"params of {step_dir}")
  if dtype is not None:
    params = checkpoints.cast_floating(params, dtype)

  flat = tree_lib.flatten(params)
  ref = openpi_reference_tree(config, abstract)
  if ref is None:
    extra, missing, compatible = sorted(flat), [], False
  else:
    ref_flat = tree_lib.flatten(ref)
    extra = sorted(flat.keys() - ref_flat.keys())
    missing = sorted(ref_flat.keys() - flat.keys())
    compatible = not extra and not missing and config.apt_stage == "none"

  out_dir.mkdir(parents=True, exist_ok=True)
  checkpoints.save_params(out_dir / "params", params)
  src_assets = step_dir / "assets"
  if src_assets.exists():
    shutil.copytree(src_assets, out_dir / "assets", dirs_exist_ok=True)
  else:
    (out_dir / "assets").mkdir(parents=True, exist_ok=True)
  if not (out_dir / "assets" / checkpoints.MODEL_CONFIG_FILE).exists():
    registry.save_config(out_dir / "assets" / checkpoints.MODEL_CONFIG_FILE, config)
  if experiment_config is not None:
    _policy_config.write_policy_config(out_dir / "assets",
                                       _policy_config.policy_config_from_experiment(experiment_config))

  apt_stage = config.apt_stage
  if compatible:
    note = "Plain openpi π0 params tree: loads with openpi's restore_params + Pi0Config.load."
  elif ref is None:
    note = f"Head {registry.head_name(config)!r} has no openpi counterpart; params are in openpi's layout only."
  else:
    note = (f"APT {apt_stage} checkpoint: serve it with apt_jax. openpi would drop the extra params and attend to "
            "the prompt as plain π0, which is a different model.")
  meta = {
      "format": "openpi",
      "exported_by": "apt_jax.export",
      "source": str(step_dir),
      "head": registry.head_name(config),
      "apt_stage": apt_stage,
      "openpi_pi0_compatible": compatible,
      "extra_params": extra,
      "extra_param_values": int(sum(np.size(flat[k]) for k in extra)),
      "missing_openpi_params": missing,
      "num_leaves": len(flat),
      "num_param_values": int(sum(np.size(v) for v in flat.values())),
      "param_dtypes": sorted({str(np.dtype(v.dtype)) for v in flat.values()}),
      "model_config": registry.config_to_dict(config),
      "note": note,
  }
  (out_dir / "assets" / EXPORT_METADATA_FILE).write_text(json.dumps(meta, indent=1))
  _log.info("Exported %s -> %s (%d leaves, openpi π0 compatible: %s, extra params: %d)", step_dir, out_dir,
            len(flat), compatible, len(extra))
  return meta


def main(argv=None) -> dict:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  p = argparse.ArgumentParser(prog="python -m apt_jax.export", description=__doc__.split("\n\n")[0])
  _policy.add_checkpoint_args(p)
  p.add_argument("--out", required=True, help="output dir (gets params/ and assets/)")
  p.add_argument("--format", default="openpi", choices=FORMATS)
  p.add_argument("--dtype", default="stored", choices=["stored", "float32", "bfloat16"],
                 help="cast floating params (default: keep the stored dtypes)")
  p.add_argument("--overwrite", action="store_true")
  args = p.parse_args(argv)
  dtype = {"stored": None, "float32": np.float32, "bfloat16": jax.numpy.bfloat16}[args.dtype]
  experiment = configs.load(args.experiment) if args.experiment else None
  meta = export_openpi(args.checkpoint, args.out, model_config=args.model_config, head=args.head, dtype=dtype,
                       overwrite=args.overwrite, experiment_config=experiment)
  print(json.dumps({k: meta[k] for k in ("head", "apt_stage", "openpi_pi0_compatible", "num_leaves",
                                         "extra_params")}, indent=1))
  return meta


if __name__ == "__main__":
  main()
