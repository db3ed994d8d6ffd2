"""The smoke run's chapter parameters are parameters some chapter declares (book/smoke.py drops the others)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import papermill as pm
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke():
    sys.path.insert(0, str(REPO / "book"))
    try:
        spec = importlib.util.spec_from_file_location("smoke_under_test", REPO / "book" / "smoke.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(REPO / "book"))


def test_every_smoke_size_is_declared_by_a_chapter(smoke):
    declared = {}
    for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for name in pm.inspect_notebook(str(nb)):
            declared.setdefault(name, []).append(nb.stem)
    undeclared = [k for k in smoke.SMOKE_SIZES if k not in declared]
    assert not undeclared, f"smoke parameters no chapter declares (they would be dropped): {undeclared}"
    # the sizes that keep the smoke run small reach the chapters that spend the time
    assert "07_adversarial" in declared["defence_batch"] and "07_adversarial" in declared["n_xm"]
    assert smoke.SMOKE_SIZES["n_xm"] <= smoke.SMOKE_SIZES["n_eval"]
