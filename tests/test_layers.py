"""The package's layers (``mmlib.LAYERS``): no module imports a layer above its own or a sibling layer of the
same rank, the module import graph has no cycle, and every module imports.
"""

from __future__ import annotations

import importlib

import pytest

from mmlib import LAYERS
from mmlib.core.imports import all_modules, find_cycle, imports_of, layer_of, layer_violations

GRAPH = {name: imports_of(name) for name in all_modules()}


def test_every_module_is_in_a_layer():
    known = {layer for group in LAYERS for layer in group}
    outside = [n for n in GRAPH if n != "mmlib" and layer_of(n) not in known]
    assert not outside, f"modules outside every layer of mmlib.LAYERS: {outside}"


def test_no_upward_or_sideways_import():
    problems = layer_violations(GRAPH, LAYERS)
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_import_graph_is_acyclic():
    cycle = find_cycle(GRAPH)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_rules_catch_what_they_forbid():
    """The checks are not vacuous: an upward, a sideways import and a cycle on a made-up graph are reported."""
    graph = {"mmlib.core.paths": {"mmlib.case_studies.removal"},
             "mmlib.case_studies.removal": {"mmlib.companions.splice", "mmlib.core.paths"},
             "mmlib.companions.splice": set()}
    problems = layer_violations(graph, LAYERS)
    assert any("mmlib.core.paths" in p and "upward" in p for p in problems)
    assert any("mmlib.case_studies.removal" in p and "sideways" in p for p in problems)
    assert len(problems) == 2  # case_studies -> core is a downward import, allowed
    assert find_cycle(graph)[0] == find_cycle(graph)[-1]
    assert find_cycle({"mmlib.core.paths": set()}) == []


def test_the_real_graph_is_read_from_the_source():
    assert "mmlib.core.artifacts" in GRAPH["mmlib.models.training"]
    assert "mmlib.models.clip" in GRAPH["mmlib.models.training"]


@pytest.mark.parametrize("name", all_modules())
def test_every_module_imports(name):
    importlib.import_module(name)
