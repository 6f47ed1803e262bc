r"""Recorded LIBERO demonstrations -> openvla's `modified_libero_rlds` layout, read by apt_jax.data's LIBERO adapter.

  python -m apt_jax.eval.record --dir DIR        # JAX venv (TensorFlow); the client calls it after `--record DIR`

The evaluation client (`apt_jax.eval.libero --record DIR`, .venv-libero, no TensorFlow) writes each successful
episode as `DIR/raw/<suite>/<suite>_tTT_iKK.npz` with arrays [T, ...]: image, wrist_image (uint8, render size,
upright), state (8), joint_state (7), action (7), plus language_instruction and file_path. This writes every suite
found there as the TFDS dataset `DIR/<suite>_no_noops/1.0.0/` with `data/rlds_builders`' `libero_features` spec, as
openvla's regeneration script did: no-op steps dropped (|a[:6]| < 1e-4 and the gripper command unchanged), episodes
in file-name order. Point a data config at it with `{"name": "<suite>_no_noops", "data_dir": DIR, "adapter":
"libero"}`. Rerunning rewrites the datasets from all raw episodes (the raw files are the record).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import shutil

import numpy as np

from apt_jax.data import builders

_log = logging.getLogger(__name__)

STEP_KEYS = ("image", "wrist_image", "state", "joint_state", "action")


def is_noop(action: np.ndarray, prev_action: np.ndarray | None) -> bool:
  """openvla's no-op rule: no motion and the same gripper command as the step before."""
  return bool(np.linalg.norm(action[:6]) < 1e-4 and prev_action is not None and action[-1] == prev_action[-1])


def load_raw(path: pathlib.Path) -> dict:
  """One raw episode, validated (names the file and field on error); no-op steps dropped."""
  with np.load(path, allow_pickle=False) as f:
    missing = [k for k in (*STEP_KEYS, "language_instruction", "file_path") if k not in f.files]
    if missing:
      raise ValueError(f"{path}: missing fields {missing} (has {sorted(f.files)})")
    ep = {k: f[k] for k in f.files}
  n = len(ep["action"])
  for k in STEP_KEYS:
    if len(ep[k]) != n:
      raise ValueError(f"{path}: field {k} has {len(ep[k])} steps, action has {n}")
  keep = [i for i in range(n) if not is_noop(ep["action"][i], ep["action"][i - 1] if i else None)]
  if not keep:
    raise ValueError(f"{path}: no steps left after dropping no-ops")
  return {**{k: ep[k][keep] for k in STEP_KEYS}, "language_instruction": str(ep["language_instruction"]),
          "file_path": str(ep["file_path"])}


def to_rlds_episode(ep: dict) -> dict:
  rb = builders.rlds_builders()
  steps = [{"observation": {"image": ep["image"][i], "wrist_image": ep["wrist_image"][i],
                            "state": ep["state"][i].astype(np.float32),
                            "joint_state": ep["joint_state"][i].astype(np.float32)},
            "action": ep["action"][i].astype(np.float32), "language_instruction": ep["language_instruction"]}
           for i in range(len(ep["action"]))]
  return rb.as_episode(steps, file_path=ep["file_path"])


def convert(record_dir) -> dict[str, str]:
  """Writes one `<suite>_no_noops` dataset per `raw/<suite>/` folder; returns suite -> dataset directory."""
  rb = builders.rlds_builders()
  record_dir = pathlib.Path(record_dir)
  raw = record_dir / "raw"
  suites = sorted(p for p in raw.iterdir() if p.is_dir() and any(p.glob("*.npz"))) if raw.is_dir() else []
  if not suites:
    raise FileNotFoundError(f"no recorded episodes under {raw}/<suite>/*.npz")
  out = {}
  for suite_dir in suites:
    files = sorted(suite_dir.glob("*.npz"))
    name = f"{suite_dir.name}_no_noops"
    episodes = [load_raw(f) for f in files]
    size = episodes[0]["image"].shape[1:3]
    shutil.rmtree(record_dir / name, ignore_errors=True)  # derived from raw/: rebuilt whole
    out[suite_dir.name] = rb.write_episodes(record_dir, name, (to_rlds_episode(e) for e in episodes),
                                            rb.libero_features(size))
    _log.info("%s: %d episodes, %d steps -> %s", name, len(episodes), sum(len(e["action"]) for e in episodes),
              out[suite_dir.name])
  return out


def main(argv=None) -> dict[str, str]:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  p = argparse.ArgumentParser(prog="python -m apt_jax.eval.record", description=__doc__.split("\n\n")[0])
  p.add_argument("--dir", required=True, help="the client's --record DIR")
  out = convert(p.parse_args(argv).dir)
  for suite, path in out.items():
    print(f"{suite}: {path}")
  return out


if __name__ == "__main__":
  main()
