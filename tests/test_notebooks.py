"""The committed notebooks: no outputs, cell ids, a papermill parameters cell, every one in the toc; the chapter
contract (the method in short cells, plumbing hidden, no local helpers, the Method page cited, numbers from the run).
"""

from __future__ import annotations

import json

import pytest
import yaml

from mmlib.core.paths import NOTEBOOKS_DIR, REPO_ROOT

ROOT = REPO_ROOT
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def toc_chapters() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf8"))
    files = [c["file"] for part in toc["parts"] for c in part.get("chapters", [])]
    prefix = "notebooks/_executed/"
    return [f[len(prefix):] for f in files if f.startswith(prefix)]


def test_there_are_chapters_and_each_is_in_the_toc():
    assert len(NOTEBOOKS) >= 12
    assert sorted(p.stem for p in NOTEBOOKS) == sorted(toc_chapters())
    assert toc_chapters()[-1] == "99_claims", "the claims table runs last: it reads what the chapters recorded"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_without_outputs_with_ids_and_parameters(path):
    nb = json.loads(path.read_text(encoding="utf8"))
    assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5)
    cells = nb["cells"]
    assert all("id" in c for c in cells), "cells without an id: run nbformat's normalize()"
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "commit notebooks without outputs"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "".join(params[0]["source"]).startswith('profile = "tiny"')
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith(f"# {path.stem[:2]} ")


# --------------------------------------------------------------------------- the book's build script and the prose rule
def _book_build():
    """``book/build.py`` as a module (a script, not a package): its flags and helpers."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("book_build", ROOT / "book" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BOOK_BUILD = _book_build()
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_prose_has_no_hand_typed_measured_numbers(path):
    from mmlib.reporting.prose import check_notebook, format_report

    violations = check_notebook(path, profile="tiny")
    assert not violations, "\n" + format_report(violations, notebooks=[str(path)])


def test_executed_copies_show_the_parameters_once(tmp_path):
    """The build tags the notebook's own parameters cell remove-cell once papermill has injected its own."""
    def cell(src: str, tags: list[str]) -> dict:
        return {"cell_type": "code", "id": src[:8], "metadata": {"tags": tags}, "source": src, "outputs": [],
                "execution_count": None}

    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
          "cells": [cell('profile = "tiny"', ["parameters"]), cell('# Parameters\nprofile = "paper"\n',
                                                                   ["injected-parameters"]), cell("x = 1", [])]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb), encoding="utf8")
    assert BOOK_BUILD.hide_duplicate_parameters(path)
    tags = [c["metadata"]["tags"] for c in json.loads(path.read_text(encoding="utf8"))["cells"]]
    assert tags == [["parameters", "remove-cell"], ["injected-parameters"], []]
    assert not BOOK_BUILD.hide_duplicate_parameters(path)  # idempotent
    nb["cells"].pop(1)  # nothing injected (not run by papermill): the original stays visible
    path.write_text(json.dumps(nb), encoding="utf8")
    assert not BOOK_BUILD.hide_duplicate_parameters(path)


# --------------------------------------------------------------------------- the chapter contract
MAX_CELL_LINES = 15
LONG_CELL_MARK = "# longer than 15 lines:"


def _code_cells(path):
    return [c for c in json.loads(path.read_text(encoding="utf8"))["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapters_read_as_the_method(path):
    """Short code cells (a longer one says why), no helper defined in a notebook, the setup cell right after the
    parameters hidden and calling start_chapter, no citation of a file the book does not ship.
    """
    code = _code_cells(path)
    long = [c["id"] for c in code if len("".join(c["source"]).strip().splitlines()) > MAX_CELL_LINES
            and not "".join(c["source"]).lstrip().startswith(LONG_CELL_MARK)]
    assert not long, f"code cells over {MAX_CELL_LINES} lines without a '{LONG_CELL_MARK} <why>' first line: {long}"
    defs = [c["id"] for c in code
            if any(line.startswith(("def ", "class ")) for line in "".join(c["source"]).splitlines())]
    assert not defs, f"helpers defined in the notebook (cells {defs}): move them into mmlib, with a test"
    params = next(i for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", []))
    setup = code[params + 1]
    assert "hide-input" in setup.get("metadata", {}).get("tags", []), "tag the setup cell hide-input"
    assert f'start_chapter("{path.stem}", profile' in "".join(setup["source"]), "the setup cell calls start_chapter"
    text = path.read_text(encoding="utf8")
    assert "PAPER.md" not in text, "cite the book's Method page ({ref}`method-...`), not PAPER.md"
    for forbidden in ("os.environ.setdefault(\"HF_HUB_OFFLINE\"", "threadpool_limits(", "warnings.filterwarnings("):
        assert forbidden not in text, f"{forbidden!r}: start_chapter does this"


def test_the_contract_test_catches_a_violation(tmp_path):
    """The checks above can fail: a notebook with a local helper and an unhidden setup cell is refused."""
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "id": "a", "metadata": {}, "source": "# 42 · x"},
        {"cell_type": "code", "id": "b", "metadata": {"tags": ["parameters"]}, "source": 'profile = "tiny"',
         "outputs": [], "execution_count": None},
        {"cell_type": "code", "id": "c", "metadata": {}, "source": "def helper():\n    return 1",
         "outputs": [], "execution_count": None}]}
    path = tmp_path / "42_x.ipynb"
    path.write_text(json.dumps(nb), encoding="utf8")
    with pytest.raises(AssertionError, match="helpers defined"):
        test_chapters_read_as_the_method(path)
