"""Matmul FLOPs of a compiled XLA program, read from its HLO text with while-loop trip counts.

XLA's `compiled.cost_analysis()["flops"]` counts a while-loop body once, so a model scanned over L layers (π0's
Gemma and SigLIP, the denoising loop of `sample_actions`) is undercounted about L-fold. This walks the optimized HLO
instead: every `dot` and `convolution` (TPU writes batched matmuls as windowed convolutions) is counted as XLA's
cost analysis counts it, 2 FLOPs per multiply-add, and multiplied by the trip counts of the loops around it.
Elementwise ops are left out, as in an analytic matmul count.

Trip count of a loop: XLA's `known_trip_count` when present (CPU), else `for (i = init; i < N; i += step)` read
from the condition, the body's update of i and the initial tuple (TPU: scans, and the SPMD partitioner's windowed
einsum loops that step by 2); a loop whose count cannot be read (a float condition, as in `sample_actions`) takes
`default_trip_count` and is listed in `unresolved_loops`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

_HEADER = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \(.*\{$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_SHAPE = re.compile(r"^[a-z]\w*\[([\d,]*)\]")


@dataclasses.dataclass
class HloFlops:
  flops: float                                       # whole program, loops unrolled
  by_op_name: dict[str, float]                       # FLOPs per op_name metadata prefix (see `group`)
  loops: list[dict]                                  # one per while loop: body, trip count, how it was found
  unresolved_loops: list[str]


def _split_type(rest: str) -> tuple[str, str]:
  """'f32[2,3]{1,0} dot(...)' or '(s32[], f32[2]) while(...)' -> (type, 'op(...)...')."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += {"(": 1, ")": -1}.get(ch, 0)
      if depth == 0:
        return rest[: i + 1], rest[i + 2:]
  i = rest.index(" ")
  return rest[:i], rest[i + 1:]


def _dims(type_str: str) -> tuple[int, ...] | None:
  m = _SHAPE.match(type_str)
  return tuple(int(d) for d in m.group(1).split(",") if d) if m else None


def _operands(call: str) -> list[str]:
  """Operand names of 'op(%a, %b), attrs' (top-level parentheses only)."""
  depth, start = 0, call.index("(")
  for i in range(start, len(call)):
    depth += {"(": 1, ")": -1}.get(call[i], 0)
    if depth == 0:
      return re.findall(r"%([\w.\-]+)", call[start:i])
  return []


def _attr(call: str, key: str) -> str | None:
  m = re.search(rf"\b{key}=(\{{[^}}]*\}}|[^,\s]+)", call)
  return m.group(1) if m else None


def _ints(s: str | None) -> list[int]:
  return [int(x) for x in re.findall(r"-?\d+", s or "")]


def _dot_flops(out, lhs, call) -> float:
  contracting = _ints(_attr(call, "lhs_contracting_dims"))
  return 2.0 * math.prod(out) * math.prod(lhs[d] for d in contracting)


def _valid_pairs(in_size, out_size, size, stride, pad_lo, lhs_dil, rhs_dil) -> int:
  """(output position, kernel position) pairs that land on a real (not padded, not dilation-hole) input element."""
  last = (in_size - 1) * lhs_dil
  count = 0
  for o in range(out_size):
    for k in range(size):
      pos = o * stride + k * rhs_dil - pad_lo
      count += 0 <= pos <= last and pos % lhs_dil == 0
  return count


def _conv_flops(out, lhs, call) -> float:
  """XLA's HloCostAnalysis count: (in_features / groups) · out_features · (batch / batch_groups) · valid pairs."""
  lhs_l, _, out_l = re.fullmatch(r"(\w+)_(\w+)->(\w+)", _attr(call, "dim_labels")).groups()
  window = _attr(call, "window") or "{}"
  spatial = sorted((c for c in lhs_l if c.isdigit()), key=int)  # window fields go by spatial number, not position
  n = len(spatial)
  field = lambda k, default: (list(map(int, re.findall(r"\d+", m.group(1)))) if (
      m := re.search(rf"\b{k}=([\dx_]+)", window)) else [default] * (2 * n if k == "pad" else n))
  size, stride, lhs_dil, rhs_dil, pad = (field("size", 1), field("stride", 1), field("lhs_dilate", 1),
                                         field("rhs_dilate", 1), field("pad", 0))
  pairs = 1
  for j, d in enumerate(spatial):
    pairs *= _valid_pairs(lhs[lhs_l.index(d)], out[out_l.index(d)], size[j], stride[j], pad[2 * j], lhs_dil[j],
                          rhs_dil[j])
  fgc = int(_attr(call, "feature_group_count") or 1)
  bgc = int(_attr(call, "batch_group_count") or 1)
  fma = (lhs[lhs_l.index("f")] // fgc) * out[out_l.index("f")] * (lhs[lhs_l.index("b")] // bgc) * pairs
  return 2.0 * fma


@dataclasses.dataclass
class _Instr:
  type: str
  op: str
  call: str        # "op(operands), attributes"

  @property
  def operands(self) -> list[str]:
    return _operands(self.call)


def _source(name: str, instrs: dict[str, _Instr]) -> _Instr | None:
  """The instruction behind `name`, looking through copies, bitcasts and conversions."""
  seen = 0
  while name in instrs and instrs[name].op in ("copy", "bitcast", "convert") and seen < 16:
    name, seen = instrs[name].operands[0], seen + 1
  return instrs.get(name)


def _int_constant(instr: _Instr | None) -> int | None:
  m = instr and instr.op == "constant" and re.fullmatch(r"[su]\d+\[\]\S*", instr.type) and re.match(
      r"constant\((-?\d+)\)", instr.call)
  return int(m.group(1)) if m else None


def _counter_index(instr: _Instr | None) -> int | None:
  if instr and instr.op == "get-tuple-element":
    return int(_attr(instr.call, "index"))
  return None


def _trip_count(call: str, instrs: dict[str, _Instr], roots: dict[str, str], init_tuple: str) -> tuple[int | None, str]:
  """A while loop's trip count: XLA's `known_trip_count`, or a loop `for (i = init; i < N; i += step)` read from its
  condition (ROOT compare(i, N), direction=LT), its body's update of i and the tuple it starts from."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', call)
  if known:
    return int(known.group(1)), "known_trip_count"
  cond, body = instrs.get(roots.get(_attr(call, "condition").lstrip("%"), "")), _attr(call, "body").lstrip("%")
  if not cond or cond.op != "compare" or _attr(cond.call, "direction") != "LT":
    return None, "unresolved"
  lhs, rhs = cond.operands
  k, limit = _counter_index(_source(lhs, instrs)), _int_constant(_source(rhs, instrs))
  update = _source(instrs[roots[body]].operands[k], instrs) if k is not None and body in roots else None
  init = _source(instrs[init_tuple].operands[k], instrs) if k is not None and init_tuple in instrs else None
  if limit is None or update is None or update.op != "add" or init is None:
    return None, "unresolved"
  a, b = (_source(o, instrs) for o in update.operands)
  step = _int_constant(b) if _counter_index(a) == k else _int_constant(a) if _counter_index(b) == k else None
  start = _int_constant(init)
  if not step or step < 0 or start is None:
    return None, "unresolved"
  return max(0, -(-(limit - start) // step)), "condition i < N"


_LOOP_PARTS = {"while", "body", "cond", "closed_call", "checkpoint", "rematted_computation"}


def group(op_name: str, depth: int = 4) -> str:
  """The first `depth` components of an op_name without the jit wrapper, loop plumbing and the primitive, e.g.
  'transpose(jvp(Pi0Module.compute_loss))/Pi0Module.expert_forward/Pi0Module.suffix_forward/llm'."""
  parts = [p for p in op_name.split("/")[:-1] if p and not p.startswith("jit(") and p not in _LOOP_PARTS]
  return "/".join(parts[:depth]) or "(no op_name)"


def count(hlo_text: str, *, default_trip_count: int = 1) -> HloFlops:
  """FLOPs of an HLO module (text of `compiled.as_text()`)."""
  comps: dict[str, list[str]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    m = _HEADER.match(line)
    if m:
      current = m.group(1)
      comps[current] = []
      if line.startswith("ENTRY"):
        entry = current
    elif line.startswith("}"):
      current = None
    elif current is not None:
      comps[current].append(line)
  if entry is None:
    raise ValueError("No ENTRY computation in the HLO text")

  instrs: dict[str, _Instr] = {}   # HLO instruction names are unique in a module
  roots: dict[str, str] = {}        # computation -> its ROOT instruction
  for comp, lines in comps.items():
    for line in lines:
      m = _INSTR.match(line)
      if m:
        type_str, call = _split_type(m.group(2))
        instrs[m.group(1)] = _Instr(type_str, call[: call.index("(")] if "(" in call else call, call)
        if line.lstrip().startswith("ROOT "):
          roots[comp] = m.group(1)

  local: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)  # computation -> [(flops, op_name)]
  calls: dict[str, list[tuple[str, int, str]]] = collections.defaultdict(list)  # -> [(callee, factor, op_name)]
  loops, unresolved = [], []
  for name, lines in comps.items():
    for line in lines:
      m = _INSTR.match(line)
      if not m:
        continue
      instr = instrs[m.group(1)]
      op, call = instr.op, instr.call
      op_name = m.group(1) if (m := re.search(r'op_name="([^"]*)"', call)) else ""
      if op in ("dot", "convolution"):
        lhs, out = _dims(instrs[instr.operands[0]].type), _dims(instr.type)
        local[name].append((_dot_flops(out, lhs, call) if op == "dot" else _conv_flops(out, lhs, call), op_name))
      elif op == "while":
        body = _attr(call, "body").lstrip("%")
        n, how = _trip_count(call, instrs, roots, instr.operands[0])
        if n is None:
          unresolved.append(body)
          n = default_trip_count
        loops.append({"body": body, "trip_count": n, "from": how, "op_name": op_name})
        calls[name].append((body, n, op_name))
      else:
        for key in ("calls", "to_apply", "branch_computations"):
          for callee in re.findall(r"%([\w.\-]+)", _attr(call, key) or ""):
            calls[name].append((callee, 1, op_name))

  def visit(comp: str, factor: int, caller_op_name: str, into: dict, stack=()):
    if comp in stack:
      raise ValueError(f"Recursive HLO computation {comp}")
    for f, op_name in local[comp]:
      into[group(op_name or caller_op_name)] += factor * f  # a dot inside a fusion: the fusion's op_name
    for callee, k, op_name in calls[comp]:
      visit(callee, factor * k, op_name or caller_op_name, into, (*stack, comp))
    return into

  by_op = {k: v for k, v in visit(entry, 1, "", collections.defaultdict(float)).items() if v}
  # Loops without dots (e.g. jax.random.beta's rejection sampling) do not matter, whatever their trip count.
  unresolved = [b for b in unresolved if sum(visit(b, 1, "", collections.defaultdict(float)).values())]
  flops = sum(by_op.values())
  return HloFlops(flops=flops, by_op_name=dict(sorted(by_op.items(), key=lambda kv: -kv[1])), loops=loops,
                  unresolved_loops=unresolved)
