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
    ``b`` is a module). Relative imports are not used in mmlib and are ignored."""
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


@functools.lru_cache(maxsize=None)
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
