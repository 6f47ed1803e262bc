"""Fig. 4 report: the two-stage gain per head is the paired per-seed difference with a t-interval (hand-computed
here), read at each head's own sampling steps; files are written from rows of several runs (one gzipped)."""

import gzip
import json

import pytest

from apt_jax.testbed import fig4
from apt_jax.testbed import language as L


def _rows(recipe, head, per_seed, *, split="paraphrase", n=10, flow_steps=10):
  """n episodes per seed with round(p * n) successes."""
  return [dict(head=head, arm="shortcut", recipe=recipe, seed=s, split=split, episode=i, flow_steps=flow_steps,
               success=i < round(p * n), grasp=False) for s, p in per_seed.items() for i in range(n)]


def test_gain_is_the_paired_mean_with_a_t_interval():
  rows = _rows("gr00t_joint", "gr00t", {1: 0.2, 2: 0.4, 3: 0.6}) + \
      _rows("gr00t_2stage_frozen", "gr00t", {1: 0.5, 2: 0.6, 3: 0.9})
  g = {(c["recipe"], c["split"]): c for c in fig4.gains(fig4.select(rows, arm="shortcut", steps=fig4.default_steps()),
                                                         arm="shortcut")}
  c = g["gr00t_2stage_frozen", "paraphrase"]
  # d = (0.3, 0.2, 0.3): mean 0.26667, sd 0.057735, t_{0.975, 2} = 4.302653 -> half-width 0.143425.
  assert c["d"] == pytest.approx([0.3, 0.2, 0.3])
  assert c["mean"] == pytest.approx(0.266667, abs=1e-5)
  assert (c["lo"], c["hi"]) == pytest.approx((0.266667 - 0.143425, 0.266667 + 0.143425), abs=1e-5)
  assert g["gr00t_2stage_frozen", fig4.ALL]["mean"] == pytest.approx(c["mean"])   # one split: "all" is that split
  assert ("gr00t_2stage_frozen", "seen") in g and g["gr00t_2stage_frozen", "seen"]["seeds"] == []


def test_each_head_is_read_at_its_own_sampler_steps():
  steps = fig4.default_steps()
  assert steps["pi0"] == 10 and steps["gr00t"] == 10 and steps["apt_expert"] == 20
  rows = (_rows("aptx_joint", "apt_expert", {1: 0.1, 2: 0.1}, flow_steps=20)
          + _rows("aptx_2stage_frozen", "apt_expert", {1: 0.6, 2: 0.4}, flow_steps=20)
          + _rows("aptx_2stage_frozen", "apt_expert", {1: 0.0, 2: 0.0}, flow_steps=10))   # the sweep: not Fig. 4
  c = next(c for c in fig4.gains(fig4.select(rows, arm="shortcut", steps=steps), arm="shortcut")
           if c["split"] == "paraphrase")
  assert c["d"] == pytest.approx([0.5, 0.3])


def test_write_from_several_runs(tmp_path):
  pi = _rows("pi0_joint", "pi0", {1: 0.2, 2: 0.3}) + _rows("apt_frozen", "pi0", {1: 0.4, 2: 0.4})
  for r in pi:
    del r["head"]                           # the π run's rows predate the head field
  with gzip.open(tmp_path / "pi.jsonl.gz", "wt") as f:
    f.writelines(json.dumps(r) + "\n" for r in pi)
  gr = _rows("gr00t_joint", "gr00t", {1: 0.0, 2: 0.1}) + _rows("gr00t_2stage_vlm_ft", "gr00t", {1: 0.5, 2: 0.5})
  (tmp_path / "gr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gr))
  fig4.main(["--results", str(tmp_path / "pi.jsonl.gz"), str(tmp_path / "gr.jsonl"), "--out", str(tmp_path / "o")])
  out = json.loads((tmp_path / "o" / "fig4.json").read_text())
  assert set(out["tables"]) == {"pi0", "gr00t"}
  got = {(c["head"], c["recipe"], c["split"]): c["mean"] for c in out["gains"]}
  assert got["pi0", "apt_frozen", "paraphrase"] == pytest.approx(0.15)
  assert got["gr00t", "gr00t_2stage_vlm_ft", "paraphrase"] == pytest.approx(0.45)
  assert len(got) == 2 * (len(L.SPLITS) + 1)
  # d = (0.2, 0.1): sd 0.070711, t_{0.975, 1} = 12.706205 -> half-width 0.635310.
  assert "| pi0 | apt_frozen | - | +0.15 [-0.49, +0.79] |" in (tmp_path / "o" / "fig4.md").read_text()
  for name in ("fig4.md", "fig4_gain.png", "fig4_success_pi0.png", "fig4_success_gr00t.png"):
    assert (tmp_path / "o" / name).stat().st_size > 0
  with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
    fig4.main(["--results", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])


def test_a_variant_file_is_reported_beside_its_head_not_pooled_with_it(tmp_path):
  # The APT expert at DDIM 20 steps, and a variant run of the same recipes (flow matching, 10 steps).
  ddim = _rows("aptx_joint", "apt_expert", {1: 0.1, 2: 0.1}, flow_steps=20) + \
      _rows("aptx_2stage_frozen", "apt_expert", {1: 0.2, 2: 0.1}, flow_steps=20)
  flow = _rows("aptx_joint", "apt_expert", {1: 0.3, 2: 0.5}) + \
      _rows("aptx_2stage_frozen", "apt_expert", {1: 0.6, 2: 0.6})
  ddim += [{k: v for k, v in r.items() if k != "head"} for r in _rows("pi0_joint", "pi0", {1: 0.2, 2: 0.3})]
  for name, rows in (("ddim", ddim), ("flow", flow)):
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  fig4.main(["--results", str(tmp_path / "ddim.jsonl"), f"aptx_flow={tmp_path / 'flow.jsonl'}",
             "--out", str(tmp_path / "o")])
  out = json.loads((tmp_path / "o" / "fig4.json").read_text())
  assert set(out["tables"]) == {"pi0", "apt_expert", "aptx_flow"} and out["steps"]["aptx_flow"] == 10
  got = {(c["head"], c["recipe"], c["split"]): c["d"] for c in out["gains"]}
  assert got["apt_expert", "aptx_2stage_frozen", "paraphrase"] == pytest.approx([0.1, 0.0])
  assert got["aptx_flow", "aptx_flow:aptx_2stage_frozen", "paraphrase"] == pytest.approx([0.3, 0.1])
  assert "| aptx_flow | aptx_flow:aptx_2stage_frozen |" in (tmp_path / "o" / "fig4.md").read_text()
  with pytest.raises(SystemExit, match="variant name 'gr00t' is a head's own"):
    fig4.main(["--results", f"gr00t={tmp_path / 'flow.jsonl'}", "--out", str(tmp_path / "o")])
