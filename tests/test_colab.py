"""The Colab path: every chapter's set-up cell (generated from ``_config.yml`` by ``book/colab_cell.py``), what it
does on Colab and elsewhere, and the ``colab`` extra that keeps Colab's own torch.
"""

from __future__ import annotations

import json
import re
import runpy
import subprocess
import sys
import types

import pytest

from mmlib.core.paths import REPO_ROOT

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None


COLAB = types.SimpleNamespace(**runpy.run_path(str(REPO_ROOT / "book" / "colab_cell.py")))  # a script, not a module
NOTEBOOKS = COLAB.notebooks()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_chapter_has_the_generated_setup_cell(path):
    url, branch = COLAB.repository()
    cells = json.loads(path.read_text(encoding="utf8"))["cells"]
    setup = [c for c in cells if c.get("id") == COLAB.CELL_ID]
    assert len(setup) == 1 and cells[1] is setup[0], "the set-up cell comes right after the title, once"
    assert "".join(setup[0]["source"]) == COLAB.cell_source(url, branch), "run python book/colab_cell.py"
    assert setup[0]["metadata"]["tags"] == ["remove-cell"]
    assert url in "".join(setup[0]["source"]) and f'"{branch}"' in "".join(setup[0]["source"])


def test_check_mode_finds_a_stale_cell(tmp_path, monkeypatch, capsys):
    nb = json.loads(NOTEBOOKS[0].read_text(encoding="utf8"))
    nb["cells"] = [c for c in nb["cells"] if c.get("id") != COLAB.CELL_ID]
    (tmp_path / NOTEBOOKS[0].name).write_text(json.dumps(nb), encoding="utf8")
    monkeypatch.setitem(COLAB.main.__globals__, "notebooks", lambda: sorted(tmp_path.glob("*.ipynb")))
    assert COLAB.main(["--check"]) == 1
    assert "missing or stale" in capsys.readouterr().out
    assert COLAB.main([]) == 0 and COLAB.main(["--check"]) == 0  # written, then up to date


def test_a_bad_repository_url_is_refused(tmp_path):
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: git@github.com:x/y.git\n", encoding="utf8")
    with pytest.raises(SystemExit, match="must be an https URL"):
        COLAB.repository(config)


def _run_cell(monkeypatch, on_colab: bool, mmlib_importable: bool, commands: list, mounted: list) -> None:
    """Execute the set-up cell with subprocess and Drive faked, appending the commands run and the folders mounted."""

    def fake_run(cmd, **kwargs):
        commands.append(list(cmd))
        failed = cmd[1:3] == ["-c", "import mmlib"] and not mmlib_importable
        return subprocess.CompletedProcess(cmd, 1 if failed else 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.delenv("MMLIB_ARTIFACTS", raising=False)
    if on_colab:
        colab = types.ModuleType("google.colab")
        colab.drive = types.SimpleNamespace(mount=mounted.append)
        monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
        monkeypatch.setitem(sys.modules, "google.colab", colab)
        monkeypatch.setattr(sys.modules["google"], "colab", colab, raising=False)
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(COLAB.cell_source("https://github.com/o/r", "dev"), "colab-setup", "exec"), {})


def test_the_cell_does_nothing_outside_colab(monkeypatch):
    import os
    commands, mounted = [], []
    _run_cell(monkeypatch, False, False, commands, mounted)
    assert commands == [] and mounted == [] and "MMLIB_ARTIFACTS" not in os.environ


def test_on_colab_the_cell_mounts_clones_installs_and_asks_for_a_restart(monkeypatch):
    import os
    commands, mounted = [], []
    with pytest.raises(SystemExit, match="restart the session"):
        _run_cell(monkeypatch, True, False, commands, mounted)
    assert mounted == ["/content/drive"] and os.environ["MMLIB_ARTIFACTS"] == COLAB.DRIVE_ARTIFACTS
    assert ["git", "clone", "--depth", "1", "--branch", "dev", "https://github.com/o/r", COLAB.CLONE_DIR] in commands
    assert commands[-1][1:] == ["-m", "pip", "install", "-q", "-e", f"{COLAB.CLONE_DIR}[colab]"]
    commands.clear()
    _run_cell(monkeypatch, True, True, commands, mounted)  # after the restart: Run all goes on, no reinstall
    assert not any("install" in c for c in commands)


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python >= 3.11")
def test_torch_is_pinned_for_local_installs_and_left_to_colab_there():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf8"))["project"]
    names = {re.split(r"[=<>~!\[ ]", d)[0].lower() for d in project["dependencies"]}
    assert not names & {"torch", "torchvision"}, "core dependencies must not pin torch (Colab keeps its own)"
    extras = project["optional-dependencies"]
    assert sorted(extras["cpu"]) == ["torch==2.14.1", "torchvision==0.29.1"]
    assert "mmlib[cpu]" in extras["book"] and "mmlib[book]" in extras["dev"]
    assert not any(d.startswith(("torch", "mmlib[cpu]", "mmlib[book]")) for d in extras["colab"])
    assert all("==" in d for d in project["dependencies"] + extras["cpu"] + extras["colab"]), "pin every version"
