"""The import graph between apt_jax's top-level modules has no cycle, and apt_jax never imports experiments/.

    python tests/import_graph_test.py    # prints the graph
"""

import ast
import graphlib
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "apt_jax"


def _node(module: str) -> str:
  """apt_jax.models.pi0 -> apt_jax.models; experiments.common -> experiments."""
  parts = module.split(".")
  return ".".join(parts[:2]) if parts[0] == "apt_jax" else parts[0]


def import_graph() -> dict[str, set[str]]:
  """Top-level module -> the top-level apt_jax modules (and experiments) it imports, function-level imports included."""
  graph = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE.parent).with_suffix("").parts
    src = _node(".".join(rel[:-1] if rel[-1] == "__init__" else rel))
    for n in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(n, ast.Import):
        targets = [a.name for a in n.names]
      elif isinstance(n, ast.ImportFrom) and n.module:   # `from apt_jax import x` imports apt_jax.x
        targets = [f"{n.module}.{a.name}" if n.module == "apt_jax" else n.module for a in n.names]
      else:
        continue
      graph.setdefault(src, set()).update(t for t in map(_node, targets) if t.startswith(("apt_jax.", "experiments"))
                                          and t != src)
  return graph


def test_no_cycles():
  graphlib.TopologicalSorter(import_graph()).prepare()  # raises CycleError naming the cycle


def test_library_never_imports_experiments():
  assert not {src for src, deps in import_graph().items() if "experiments" in deps}


def test_finds_the_layers():
  """The walk sees real edges (a graph of nothing would pass the two tests above)."""
  graph = import_graph()
  assert {"apt_jax.checkpoints", "apt_jax.policy_config"} <= graph["apt_jax.policy"]
  assert "apt_jax.models" in graph["apt_jax.data"]


if __name__ == "__main__":
  g = import_graph()
  for src in sorted(g):
    print(f"{src} -> {', '.join(sorted(g[src]))}")
  print("layers:", " -> ".join(graphlib.TopologicalSorter({k: g.get(k, set()) for k in g}).static_order()))
