"""TPU chips and topologies for compiling on a machine without TPUs (libtpu's compile-only devices).

A topology is named as libtpu does (`v5e:4x4`: generation, chips per axis) or as Cloud TPU does (`v5e-16`: chips
for v5e/v6e, TensorCores for v4/v5p, two per chip). Nothing here touches the TPU backend until
`topology_devices` is called, so CPU runs with libtpu installed stay on the CPU (keep JAX_PLATFORMS=cpu).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip as the compiler sees it (megacore chips are one device)."""

  generation: str
  hbm_gib: float            # per chip
  peak_bf16_tflops: float   # per chip, dense
  cores_per_chip: int       # Cloud TPU names count TensorCores for v4/v5p (2 per chip)
  chip_config_name: str     # libtpu: "megacore" fuses the two TensorCores of v4/v5p into one device
  ndim: int                 # torus dimensions of the slice


CHIPS = {
    "v4": Chip("v4", 32, 275, 2, "megacore", 3),
    "v5e": Chip("v5e", 16, 197, 1, "default", 2),
    "v5p": Chip("v5p", 95, 459, 2, "megacore", 3),
    "v6e": Chip("v6e", 32, 918, 1, "default", 2),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  chip: Chip
  shape: tuple[int, ...]    # chips per torus axis

  @property
  def name(self) -> str:
    """libtpu's name, e.g. v5e:4x4."""
    return f"{self.chip.generation}:{'x'.join(map(str, self.shape))}"

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)

  @property
  def accelerator_type(self) -> str:
    """Cloud TPU's name, e.g. v5e-16, v4-8."""
    return f"{self.chip.generation}-{self.num_chips * self.chip.cores_per_chip}"


def _shape_for(chip: Chip, num_chips: int) -> tuple[int, ...]:
  """The slice shape Cloud TPU gives `num_chips` chips: sides powers of two, the smallest first and as even as can
  be (v5e-8 -> 2x4, v5e-16 -> 4x4, v4-8 -> 2x2x1, v4-32 -> 2x2x4)."""
  if num_chips < 1 or num_chips & (num_chips - 1):
    raise ValueError(f"{chip.generation}: {num_chips} chips; expected a power of two")
  if chip.ndim == 3 and num_chips < 4:
    raise ValueError(f"{chip.generation}: slices start at 4 chips ({chip.generation}-{4 * chip.cores_per_chip})")
  shape = [1] * chip.ndim
  for i in range(int(math.log2(num_chips))):
    shape[i % chip.ndim] *= 2
  return tuple(sorted(shape, key=lambda s: (s == 1, s)))  # 2x2x1, not 1x2x2


def parse_topology(name: str) -> Topology:
  """`v5e:4x4` (libtpu) or `v5e-16` (Cloud TPU accelerator type) -> Topology."""
  m = re.fullmatch(r"(v\d+[a-z]*)(?::(\d+(?:x\d+)*)|-(\d+))", name.strip().lower())
  if not m or m.group(1) not in CHIPS:
    raise ValueError(f"Unknown TPU topology {name!r}: expected e.g. 'v5e:4x4' or 'v5e-16' with a generation in "
                     f"{sorted(CHIPS)}")
  chip = CHIPS[m.group(1)]
  if m.group(2):
    shape = tuple(int(s) for s in m.group(2).split("x"))
    if len(shape) != chip.ndim:
      raise ValueError(f"Topology {name!r}: {chip.generation} slices have {chip.ndim} axes")
    return Topology(chip, shape)
  cores = int(m.group(3))
  if cores % chip.cores_per_chip:
    raise ValueError(f"Topology {name!r}: {chip.generation}-N counts TensorCores, {chip.cores_per_chip} per chip")
  return Topology(chip, _shape_for(chip, cores // chip.cores_per_chip))


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: Topology, num_slices: int = 1) -> list:
  """Compile-only devices of `num_slices` copies of the slice (no TPU needed; libtpu must be installed)."""
  if not libtpu_available():
    raise RuntimeError("Compiling for a TPU topology needs libtpu: `make venv-tpu` (or "
                       "`pip install -r requirements-tpu.txt`)")
  from jax.experimental import topologies

  # libtpu admits one process per host (/tmp/libtpu_lockfile) to guard real chips; compile-only devices hold none.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
  return topologies.get_topology_desc(topology.name, "tpu", chip_config_name=topology.chip.chip_config_name,
                                      **kwargs).devices
