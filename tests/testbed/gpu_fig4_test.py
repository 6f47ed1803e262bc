"""The GPU script (experiments/testbed_gpu.sh) at the tiny size on CPU: every head's Fig. 4 recipes run end to
end for both seeds together (seeds vmapped; Stage 1 -> Stage 2 saved), the heads on the π run's VLMs, the pooled rows
and the Fig. 4 report in OUT; the saved APT-expert checkpoints load and re-evaluate to the same episodes. ~10 VLA
compiles: tens of minutes on 2 cores, marked slow. A SIGTERM (the script's time limit) mid-head still leaves the rows
finished so far in OUT."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_script_tiny(tmp_path):
  from apt_jax.testbed import experiment
  from apt_jax.testbed import language as L
  from experiments import testbed_gpu
  out, work = tmp_path / "out", tmp_path / "work"
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu", GPU_FIG4_LIMIT_S="5400")
  cmd = ["bash", "experiments/testbed_gpu.sh", str(out), "--tiny", "--work", str(work), "--budget_s", "5400"]
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=6000, check=False)
  assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
  rows = experiment.read_rows(out / "results.jsonl")
  for head in testbed_gpu.HEADS:
    cfg = testbed_gpu.get_config(f"{head}:tiny")
    mine = [x for x in rows if x["head"] == head]
    assert len(cfg.seeds) > 1 and cfg.vla.vmap_seeds
    assert len(mine) == len(cfg.seeds) * len(cfg.recipes) * len(L.SPLITS) * cfg.eval.episodes_per_split, head
    assert {(x["recipe"], x["seed"]) for x in mine} == {(r, s) for r in cfg.recipes for s in cfg.seeds}
    assert f"({len(cfg.seeds)} seeds vmapped)] step" in (work / head / "log.txt").read_text()
    for recipe in cfg.recipes:
      for s in cfg.seeds:
        assert (work / head / "shortcut" / recipe / f"s{s}" / "checkpoints" / str(cfg.vla.steps) / "params").exists()
    for s in cfg.seeds if head != "pi0" else ():   # the π run's VLMs, byte for byte, gated again on its features
      info = json.loads((work / head / "vlm" / f"s{s}" / "vlm.json").read_text())
      assert info["reused_from"] == str(work / "pi0" / "vlm" / f"s{s}")
      assert (work / head / "vlm" / f"s{s}" / "vlm_attempt0.npz").read_bytes() == \
          (work / "pi0" / "vlm" / f"s{s}" / "vlm_attempt0.npz").read_bytes()
  assert len(list(out.iterdir())) <= 8          # what the device tool brings back from OUT
  summary = json.loads((out / "fig4.json").read_text())
  assert {c["head"] for c in summary["gains"]} == set(testbed_gpu.HEADS)
  assert "apt_expert: done" in (out / "log.txt").read_text()

  # Saved -> loaded -> evaluated: without its rows, the APT-expert run re-evaluates its checkpoints, training nothing.
  cfg = testbed_gpu.get_config("apt_expert:tiny")
  cfg.vlm.reuse_from = str(work / "pi0")
  before = experiment.read_rows(work / "apt_expert" / "results.jsonl")
  (work / "apt_expert" / "results.jsonl").unlink()
  log_len = len((work / "apt_expert" / "log.txt").read_text())
  experiment.run(cfg, work / "apt_expert", command="re-evaluate")
  assert "step 1/" not in (work / "apt_expert" / "log.txt").read_text()[log_len:]
  assert experiment.read_rows(work / "apt_expert" / "results.jsonl") == before


def test_sigterm_mid_head_copies_the_finished_rows_into_out(tmp_path, monkeypatch):
  from apt_jax.testbed import experiment
  from apt_jax.testbed import gpu_fig4
  rows = [dict(head="pi0", arm="shortcut", recipe="pi0_joint", seed=s, split="seen", episode=0, flow_steps=10,
               success=s == 0, grasp=False) for s in (0, 1)]

  def run(cfg, workdir, command=""):   # the π run writes some rows, then the time limit strikes
    workdir.mkdir(parents=True)
    (workdir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if signal.getsignal(signal.SIGTERM) is handler:   # nothing would catch it: the signal would end pytest
      pytest.fail("gpu_fig4 installs no SIGTERM handler")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    pytest.fail("SIGTERM did not stop the run")

  monkeypatch.setattr(experiment, "run", run)
  handler = signal.getsignal(signal.SIGTERM)
  out = tmp_path / "out"
  with pytest.raises(SystemExit):
    gpu_fig4.main([str(out), "--tiny", "--work", str(tmp_path / "work")])
  assert experiment.read_rows(out / "results.jsonl") == rows
  assert "SIGTERM" in (out / "log.txt").read_text() and (out / "fig4.md").exists()
  assert signal.getsignal(signal.SIGTERM) is handler
