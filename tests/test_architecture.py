"""The import graph has layers: a module imports only from its own layer or the ones below it,
and no chain of imports (module-level or inside functions) comes back to where it started.

Layers, bottom first. `io` (atomic writes, hashes) and `keys` (what determines a result) know
nothing of the rest; models, data and the three stage packages (pruning, recovery, evaluation)
know nothing of configs, caches or reports; `config` composes the stage packages' typed configs;
`identity` derives every key from them; `pipeline` orders the stages; reporting and the CLI sit
on top. A new top-level module or package must be placed here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import harness

LAYERS = [
    ("io", "keys", "distributed", "hydra_errors", "registry", "protocol"),
    ("assets", "tracking"),
    ("cache", "data", "models"),
    ("pruning", "recovery", "evaluation", "export"),
    ("validation",),
    ("config",),
    ("identity",),
    ("stages", "pipeline"),
    ("reporting",),
    ("sweeps",),
    ("cli", "__main__"),
]
ROOT = Path(harness.__file__).parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: harness modules it imports}, counting imports inside functions too."""
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                           else node.module for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(unit: str) -> int:
    for i, names in enumerate(LAYERS):
        if unit in names:
            return i
    raise AssertionError(f"harness.{unit} is in no layer of tests/test_architecture.py")


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
              if _unit(a) and _unit(b) and _layer(_unit(b)) > _layer(_unit(a))]
    assert upward == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert _layer("cli") > _layer("pipeline") > _layer("config") > _layer("pruning") > _layer("io")
