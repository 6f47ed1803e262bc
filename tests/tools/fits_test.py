"""The fits table from cached aot_check reports (no compile): settings order, the first fitting setting per slice,
the smallest slice, cells not compiled yet, and the README markers."""

import json

import pytest

from apt_jax.tools import fits

ROW = fits.Row("r", "Row", "experiments/debug.py:joint")


def test_settings_go_from_the_configs_fsdp_to_all_chips_then_accumulate():
  # v5e-8 (8 chips), config FSDP 4: FSDP 4, FSDP 8, then accum 2, 4, 8 (256 rows = 8 chips x 4 x 8: whole rows).
  assert list(fits.settings(4, 8)) == [(4, 1), (8, 1), (8, 2), (8, 4), (8, 8)]
  # FSDP 16 on a 4-chip slice is capped to the slice; accum 8 x 4 chips divides 256.
  assert list(fits.settings(16, 4)) == [(4, 1), (4, 2), (4, 4), (4, 8)]


def _report(gib, fits_hbm):
  step = {"fits": fits_hbm, "hbm_GiB": 16}
  if fits_hbm:
    step["per_chip_GiB"] = {"total": gib}
  else:
    step["required_GiB"] = gib  # what the TPU compiler reports when it refuses the program
  return {"remat_policy": "nothing_saveable", "train_step": step}


def _cache(tmp_path, topology, fsdp, accum, gib, fits_hbm):
  (tmp_path / f"r__{topology}__fsdp{fsdp}_accum{accum}.json").write_text(json.dumps(_report(gib, fits_hbm)))


def test_first_fitting_setting_is_kept_and_missing_compiles_are_pending(tmp_path, monkeypatch):
  monkeypatch.setattr(fits, "_config_fsdp", lambda row: 4)
  _cache(tmp_path, "v5e-8", 4, 1, 20.5, False)
  _cache(tmp_path, "v5e-8", 8, 1, 14.25, True)
  _cache(tmp_path, "v5e-8", 8, 2, 9.0, True)  # never reached: FSDP 8 already fits
  cell = fits.fit_cell(ROW, "v5e-8", tmp_path, log=lambda _: None, cached_only=True)
  assert (cell["fsdp"], cell["accum"], cell["GiB"], cell["fits"]) == (8, 1, 14.25, True)
  assert fits.fit_cell(ROW, "v4-8", tmp_path, log=lambda _: None, cached_only=True) is None  # nothing compiled
  _cache(tmp_path, "v4-8", 4, 1, 40.0, False)  # accum 2 on v4-8 was not compiled
  cell = fits.fit_cell(ROW, "v4-8", tmp_path, log=lambda _: None, cached_only=True)
  assert (cell["accum"], cell["GiB"], cell["fits"], cell["pending"]) == (1, 40.0, False, True)


def _cell(gib, ok, fsdp=4, accum=1):
  return dict(fsdp=fsdp, accum=accum, remat="nothing_saveable", GiB=gib, fits=ok)


def test_table_names_the_smallest_slice_that_fits_only_when_smaller_ones_are_known():
  tops = ("v5e-16", "v4-8", "v5p-8")  # ordered by chips then HBM: v4-8 (4x32), v5p-8 (4x95), v5e-16
  cells = {("r", "v4-8"): _cell(40.0, False, accum=8), ("r", "v5p-8"): _cell(50.0, True),
           ("r", "v5e-16"): _cell(12.0, True, fsdp=16)}
  line = fits.table(cells, (ROW,), tops).splitlines()[-1]
  assert "40.0 ✗ (FSDP 4, accum 8)" in line
  assert line.endswith("| v5p-8: FSDP 4, grad accum 1, remat `nothing_saveable` |")
  cells["r", "v4-8"] = {**cells["r", "v4-8"], "pending": True}  # accum 8 refused, but accum 16 could still fit
  line = fits.table(cells, (ROW,), tops).splitlines()[-1]
  assert "40.0 ✗ (FSDP 4, accum 8); next setting not compiled" in line and line.endswith("| not known yet |")
  del cells["r", "v4-8"]
  line = fits.table(cells, (ROW,), tops).splitlines()[-1]
  assert "| not compiled |" in line and line.endswith("| not known yet |")
  cells.update({("r", t): _cell(99.0, False) for t in tops})
  assert fits.table(cells, (ROW,), tops).splitlines()[-1].endswith("| none of these |")


def test_readme_table_goes_between_the_markers(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{fits.BEGIN}\nold table\n{fits.END}\nrest\n")
  fits.write_readme(readme, "| new |")
  assert readme.read_text() == f"intro\n{fits.BEGIN}\n| new |\n{fits.END}\nrest\n"
  readme.write_text("no markers")
  with pytest.raises(ValueError, match="markers"):
    fits.write_readme(readme, "| new |")
