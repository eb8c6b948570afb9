"""The package's shape, checked from its import graph (every import, also those inside functions):
no cycles, lower layers never import higher ones, the edge never imports the cloud server, no
private name is imported from another module, and no module grows past what one can read at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "datamoat"

# The flow, bottom up: a module may import its own layer and those below it.
LAYERS = [
    ("datamoat", "datamoat.errors", "datamoat.configs", "datamoat.files", "datamoat.objects", "datamoat.workspace"),
    ("datamoat.data",),
    ("datamoat.models",),
    ("datamoat.inference",),
    ("datamoat.train",),
    ("datamoat.compress",),
    ("datamoat.evaluate",),
    ("datamoat.registry",),
    ("datamoat.feedback",),
    ("datamoat.serve", "datamoat.edge"),  # one rank, two doors: neither imports the other
    ("datamoat.plan",),  # reads serve's capacity and the edge's figures to decide between them
    ("datamoat.cli", "datamoat.demo", "datamoat.__main__"),
]
MAX_LINES = 450


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = modules()


def imports(name: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every datamoat import in module `name`."""
    tree = ast.parse(MODULES[name].read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("datamoat"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((sub, "", node.lineno) if sub in MODULES else (node.module, a.name, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("datamoat")]
    return out


def graph() -> dict[str, set[str]]:
    g = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _, _ in imports(m):
            assert target in MODULES, f"{m} imports {target}, which does not exist"
            if target != m:
                g[m].add(target)
    return g


def rank(module: str) -> tuple[int, str]:
    best = (-1, "")
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best[1]):
                best = (i, prefix)
    assert best[0] >= 0, f"{module} is in no layer: add its package to LAYERS"
    return best


def test_the_package_has_no_import_cycles():
    g = graph()
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
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
            # A package's __init__ re-exporting its own modules is not a cycle unless a module imports it back.
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert cycles == []


def test_lower_layers_never_import_higher_ones_and_the_edge_never_imports_the_server():
    bad = []
    for m, targets in graph().items():
        (mine, my_pkg) = rank(m)
        for t in targets:
            (theirs, their_pkg) = rank(t)
            if theirs > mine or (theirs == mine and {my_pkg, their_pkg} == {"datamoat.serve", "datamoat.edge"}):
                bad.append(f"{m} -> {t}")
    assert bad == []


def test_no_private_name_is_imported_from_another_module():
    bad = [
        f"{m}:{line} imports {name} from {target}"
        for m in MODULES
        for target, name, line in imports(m)
        if name.startswith("_") and target != m
    ]
    assert bad == []


def test_modules_stay_short_enough_to_read_at_once():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_see_what_they_check():
    # The graph is real: known edges are found, and a planted violation would be.
    g = graph()
    assert "datamoat.inference.engine" in g["datamoat.edge.runtime"]
    assert "datamoat.registry.ledger" in g["datamoat.feedback.store"]
    assert rank("datamoat.edge.fleet") == rank("datamoat.serve.app")[0:1] + ("datamoat.edge",)
    with pytest.raises(AssertionError, match="in no layer"):
        rank("elsewhere.module")
