"""The committed notebooks: no outputs, cell ids, a papermill parameters cell, and every one in the toc."""

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
