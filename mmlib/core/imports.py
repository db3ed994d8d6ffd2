"""mmlib's own import graph, read statically from the source (nothing is imported).

Used by :func:`mmlib.core.artifacts.code_version` (an artifact's key covers the code that produced it, i.e. the
producing module's import closure) and by the layer test (no module imports a layer above its own).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

#: The folder of the mmlib package.
PACKAGE_DIR: Path = Path(__file__).resolve().parents[1]
PACKAGE: str = PACKAGE_DIR.name


def module_file(name: str) -> Path:
    """The source file of the mmlib module ``name`` (a package: its ``__init__.py``).

    Raises
    ------
    ValueError
        if ``name`` is not a module of the mmlib package.
    """
    parts = name.split(".")
    path = PACKAGE_DIR.parent.joinpath(*parts)
    if parts[0] == PACKAGE:
        if (path / "__init__.py").is_file():
            return path / "__init__.py"
        if path.with_suffix(".py").is_file():
            return path.with_suffix(".py")
    raise ValueError(f"{name!r} is not a module of the {PACKAGE} package under {PACKAGE_DIR}")


def all_modules() -> list[str]:
    """Every module of the package, dotted, sorted (packages by their ``__init__``; ``mmlib`` itself included)."""
    names = []
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def _is_module(name: str) -> bool:
    try:
        module_file(name)
    except ValueError:
        return False
    return True


def imports_in(source: str, name: str = "") -> set[str]:
    """The mmlib modules (other than ``name`` and the top package) that Python ``source`` imports, at module level
    or inside functions: ``import mmlib.a.b``, ``from mmlib.a import b`` (module ``mmlib.a``, and ``mmlib.a.b`` if
    ``b`` is a module). Relative imports are not used in mmlib and are ignored.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {c for c in candidates if c.split(".")[0] == PACKAGE and c not in (name, PACKAGE) and _is_module(c)}
    return found


@functools.cache
def imports_of(name: str) -> frozenset[str]:
    """The mmlib modules that the module ``name`` imports directly (cached per process)."""
    return frozenset(imports_in(module_file(name).read_text(encoding="utf8"), name))


def import_closure(name: str) -> frozenset[str]:
    """``name`` and every mmlib module it imports, directly or indirectly."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(imports_of(current))
    return frozenset(seen)


def layer_of(name: str) -> str | None:
    """The layer of a module: the first name below the package (``mmlib.analysis.mds`` -> ``analysis``)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE else None


def layer_violations(graph: dict[str, frozenset[str] | set[str]], layers: tuple[tuple[str, ...], ...]) -> list[str]:
    """Imports of ``graph`` (module -> modules it imports) that break the layering ``layers`` (lowest rank first).

    A module may import modules of its own layer and of lower ranks; an import of a higher rank is *upward*, one
    of another layer of the same rank is *sideways*. Modules outside every layer are reported too.
    """
    rank = {layer: r for r, group in enumerate(layers) for layer in group}
    problems = []
    for name in sorted(graph):
        src = layer_of(name)
        if src is None:
            continue
        if src not in rank:
            problems.append(f"{name}: layer {src!r} is not in the layer list")
            continue
        for target in sorted(graph[name]):
            dst = layer_of(target)
            if dst is None or dst not in rank:
                continue
            if rank[dst] > rank[src]:
                problems.append(f"{name} ({src}, rank {rank[src]}) imports {target} ({dst}, rank {rank[dst]}): upward")
            elif rank[dst] == rank[src] and dst != src:
                problems.append(f"{name} ({src}) imports {target} ({dst}): sideways, two layers of one rank")
    return problems


def find_cycle(graph: dict[str, frozenset[str] | set[str]]) -> list[str]:
    """One import cycle of ``graph`` as a list of modules (first == last), or ``[]``. A package's ``__init__``
    importing its own submodules (a re-export) is not followed, as Python resolves it without a cycle.
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + ".") and module_file(node).name == "__init__.py":
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if state.get(nxt) is None:
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = 2
        return []

    for start in sorted(graph):
        if state.get(start) is None:
            found = visit(start, [])
            if found:
                return found
    return []
