"""The Colab set-up cell of every chapter, generated from ``_config.yml`` (the one place that names the repository).

A chapter opened from its *Open in Colab* badge arrives alone, without the repository or ``mmlib``. Its first code
cell (id ``colab-setup``, tagged ``remove-cell`` so the book does not show it) does nothing outside Colab; on Colab it

1. mounts Google Drive and points ``MMLIB_ARTIFACTS`` at a folder there (unless already set), so that embeddings,
   feature maps and resume shards survive a disconnect;
2. clones the repository (``repository.url`` / ``branch`` of ``_config.yml``) to ``/content/mm-book`` once;
3. installs it with the ``colab`` extra, which keeps Colab's own CUDA torch and torchvision, if ``mmlib`` is not
   importable yet, and then stops with a request to restart the session: after the restart, *Run all* skips the
   install and runs the chapter.

Run ``python book/colab_cell.py`` to write the cell into every notebook (after editing ``_config.yml``),
``python book/colab_cell.py --check`` to verify them (the test suite does the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CELL_ID = "colab-setup"
TAGS = ["remove-cell"]
CLONE_DIR = "/content/mm-book"
DRIVE_ARTIFACTS = "/content/drive/MyDrive/mm-book/artifacts"

TEMPLATE = """\
# Colab only (a no-op elsewhere; from book/colab_cell.py): Drive for artifacts, the book installed beside Colab's torch
import os
import subprocess
import sys

BOOK, REPO = "{clone}", "{url}"
if "google.colab" in sys.modules:
    from google.colab import drive
    drive.mount("/content/drive")
    os.environ.setdefault("MMLIB_ARTIFACTS", "{artifacts}")
    if not os.path.isdir(BOOK):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", "{branch}", REPO, BOOK], check=True)
    if subprocess.run([sys.executable, "-c", "import mmlib"], capture_output=True).returncode:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", BOOK + "[colab]"], check=True)
        raise SystemExit("mmlib is installed: restart the session (Runtime > Restart session), then Run all again")
"""


def repository(config: Path = ROOT / "_config.yml") -> tuple[str, str]:
    """``(url, branch)`` of the repository as ``_config.yml`` sets them."""
    repo = (yaml.safe_load(config.read_text(encoding="utf8")) or {}).get("repository") or {}
    url, branch = repo.get("url"), repo.get("branch", "main")
    if not isinstance(url, str) or not url.startswith("https://"):
        raise SystemExit(f"error: repository.url in {config} must be an https URL, got {url!r}")
    return url.rstrip("/"), str(branch)


def cell_source(url: str, branch: str) -> str:
    """The set-up cell's code for the repository ``url`` at ``branch``."""
    return TEMPLATE.format(url=url, branch=branch, clone=CLONE_DIR, artifacts=DRIVE_ARTIFACTS)


def cell(url: str, branch: str) -> dict:
    """The set-up cell as a notebook cell (no outputs, tagged ``remove-cell``)."""
    return {"cell_type": "code", "execution_count": None, "id": CELL_ID, "metadata": {"tags": list(TAGS)},
            "outputs": [], "source": cell_source(url, branch).splitlines(keepends=True)}


def with_cell(nb: dict, url: str, branch: str) -> dict:
    """``nb`` with its set-up cell (right after the title) replaced or inserted."""
    cells = [c for c in nb["cells"] if c.get("id") != CELL_ID]
    return {**nb, "cells": [cells[0], cell(url, branch), *cells[1:]]}


def notebooks() -> list[Path]:
    """The chapters (``notebooks/NN_topic.ipynb``)."""
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify; exit 1 if a notebook's cell differs")
    args = parser.parse_args(argv)
    url, branch = repository()
    stale = []
    for path in notebooks():
        nb = json.loads(path.read_text(encoding="utf8"))
        wanted = with_cell(nb, url, branch)
        if wanted != nb:
            stale.append(path.name)
            if not args.check:
                path.write_text(json.dumps(wanted, indent=1, ensure_ascii=False) + "\n", encoding="utf8")
    if args.check and stale:
        print(f"error: the Colab set-up cell is missing or stale in {', '.join(stale)}; run python book/colab_cell.py")
        return 1
    print(("checked " if args.check else "wrote the set-up cell into ") + f"{len(notebooks())} notebooks"
          + ("" if args.check or not stale else f" ({len(stale)} changed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
