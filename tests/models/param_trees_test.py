"""Full-size parameter trees equal openpi's, leaf for leaf (../shared/testdata/openpi_param_trees, dumped with
openpi's own `nnx.eval_shape`): names, shapes, dtypes, leaf and parameter counts, and what the freeze filter freezes.
Checked through `jax.eval_shape`, so nothing is allocated."""

import math
import re

import pytest

from apt_jax import tree as tree_lib
from apt_jax.models import pi0
from tests.conftest import TESTDATA
from tests.conftest import unavailable

TREES = TESTDATA / "openpi_param_trees"
CONFIGS = {
    "pi0_gemma_2b__gemma_300m": {},
    "pi0_dummy__dummy": dict(paligemma_variant="dummy", action_expert_variant="dummy"),
    "pi05_gemma_2b__gemma_300m": dict(pi05=True),
    "pi05_dummy__dummy": dict(pi05=True, paligemma_variant="dummy", action_expert_variant="dummy"),
    "pi0_gemma_2b_lora__gemma_300m_lora": dict(paligemma_variant="gemma_2b_lora",
                                               action_expert_variant="gemma_300m_lora"),
}


def read_tree(name):
  """-> ({path: (shape, dtype)}, header fields: leaves, params, frozen)."""
  path = TREES / f"{name}.txt"
  if not path.exists():
    unavailable(f"openpi parameter tree {path} not found (../shared/testdata, or $APT_JAX_TESTDATA)")
  header, *lines = path.read_text().splitlines()
  fields = {k: int(v.replace(",", "")) for k, v in re.findall(r"(leaves|params|frozen_by_get_freeze_filter)=([\d,]+)",
                                                               header)}
  tree = {}
  for line in lines:
    key, shape, dtype = re.fullmatch(r"(\S+) \(([\d, ]*)\) (\w+)", line).groups()
    tree[key] = (tuple(int(x) for x in shape.split(",") if x.strip()), dtype)
  return tree, fields


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_full_size_tree_equals_openpis(name):
  want, fields = read_tree(name)
  config = pi0.Pi0Config(**CONFIGS[name])
  got = {k: (tuple(v.shape), str(v.dtype)) for k, v in tree_lib.flatten(config.abstract_params()).items()}
  assert sorted(got) == sorted(want)
  assert got == want
  assert len(got) == fields["leaves"]
  assert sum(math.prod(s) for s, _ in got.values()) == fields["params"]
  assert sum(config.freeze_filter(k) for k in got) == fields["frozen_by_get_freeze_filter"]
