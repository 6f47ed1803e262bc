"""What holds a compiled program's memory: its largest buffers, their shapes and the jax ops that write them.

Read from XLA's own dump of the compiled module (`xla_dump_to`): the buffer assignment places every HLO value in an
allocation (a parameter, an output, or one of the preallocated temp blocks, where values whose lives do not overlap
share an offset), and the optimised HLO names the jax op (`op_name` metadata) behind each instruction. XLA writes
both for programs the TPU compiler then refuses as too large, which is when they are wanted.
"""

from __future__ import annotations

import collections
import pathlib
import re

_ALLOCATION = re.compile(r"^allocation (\d+): size (\d+), (.*)$")
_VALUE = re.compile(r"^ value: <\d+ ([^ >]+) @[^>]*> \(size=(\d+),offset=(\d+)\): (\S+)")
_OP_NAME = re.compile(r"^\s*(?:ROOT )?%?([^\s=]+) = .*?op_name=\"([^\"]+)\"")


def compiler_options(dump_dir) -> dict:
  """Options for `Lowered.compile(compiler_options=...)` that make XLA dump the buffer assignment to `dump_dir`."""
  return {"xla_dump_to": str(dump_dir)}


def _one(dump_dir: pathlib.Path, pattern: str) -> pathlib.Path:
  files = sorted(dump_dir.glob(pattern))
  if len(files) != 1:
    raise FileNotFoundError(f"Want one XLA dump matching {pattern!r} in {dump_dir}, found {[f.name for f in files]} "
                            "(compiled with `compiler_options`? several modules: name one)")
  return files[0]


def _shape(shape: str) -> str:
  """bf16[64,816,2048]{2,1,0:T(8,128)(2,1)} -> bf16[64,816,2048] (the layout is not the reader's concern)."""
  return re.sub(r"\{[^}]*\}", "", shape)


def _op(op_name: str) -> str:
  return re.sub(r"^jit\([^)]*\)/", "", op_name)


def largest_buffers(dump_dir, top: int = 10, module: str | None = None) -> list[dict]:
  """The `top` largest buffers of the dumped module (`jit_<module>`; None: the only one dumped), largest first:
  {GiB, bytes, kind, shapes, ops}.

  kind: "parameter N" (an input), "temp" (a slot of a preallocated temp block: the largest value placed at that
  offset; `shapes` lists every value that reuses it), or the allocation's own description (outputs, constants).
  ops: the jax op_names of the slot's largest values, e.g. "jvp(Gr00tModule.predict)/.../vl_adapter_0/attn1/...".
  """
  dump_dir = pathlib.Path(dump_dir)
  prefix = f"*jit_{module}." if module else ""
  assignment = _one(dump_dir, f"{prefix}*after_optimizations-buffer-assignment.txt")
  hlo = _one(dump_dir, f"{prefix}*after_optimizations.txt")
  op_names = {}
  with hlo.open() as f:
    for line in f:
      m = _OP_NAME.match(line)
      if m:
        op_names.setdefault(m.group(1), m.group(2))

  slots = collections.defaultdict(list)  # (allocation, offset or None) -> [(size, name, shape)]
  kinds, sizes = {}, {}
  allocation = None
  with assignment.open() as f:
    for line in f:
      m = _ALLOCATION.match(line)
      if m:
        allocation, size, desc = int(m.group(1)), int(m.group(2)), m.group(3)
        temp = "preallocated-temp" in desc
        kinds[allocation] = "temp" if temp else re.sub(r",? shape .*|:$", "", desc).strip(" ,:")
        sizes[allocation] = None if temp else size
        continue
      m = _VALUE.match(line)
      if m and allocation is not None:
        name, size, offset, shape = m.group(1), int(m.group(2)), int(m.group(3)), _shape(m.group(4))
        slots[(allocation, offset if sizes[allocation] is None else None)].append((size, name, shape))

  rows = []
  for (alloc, _), values in slots.items():
    values.sort(reverse=True)
    size = sizes[alloc] if sizes[alloc] is not None else values[0][0]
    counts = collections.Counter(shape for _, _, shape in values)
    names = (n.split("{")[0] for _, n, _ in values)  # copy-start.474{0}: the instruction is copy-start.474
    ops = list(dict.fromkeys(_op(op_names[n]) for n in names if n in op_names))
    rows.append({"GiB": round(size / 2**30, 3), "bytes": size, "kind": kinds[alloc],
                 "shapes": [f"{c}×{s}" if c > 1 else s for s, c in counts.most_common(4)], "ops": ops[:3]})
  rows.sort(key=lambda r: -r["bytes"])
  return rows[:top]
