"""``load_benchmark`` for the fair benchmarks: like the one in ``tests/conftest.py``, but the module is registered in
``sys.modules`` under its name (dataclasses with postponed annotations need it, and ``bench_*`` import ``fair`` by
that name) and ``benchmarks/`` is put on ``sys.path`` as the scripts themselves do.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

import pytest

from mmlib.core.paths import REPO_ROOT


@pytest.fixture
def load_benchmark() -> Callable[[str], object]:
    """Import ``benchmarks/<name>.py`` as the module ``<name>`` (cached in ``sys.modules``)."""
    folder = str(REPO_ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)

    def load(name: str):
        module = importlib.import_module(name)
        assert module.__file__ == str(REPO_ROOT / "benchmarks" / f"{name}.py"), module.__file__
        return module

    return load
