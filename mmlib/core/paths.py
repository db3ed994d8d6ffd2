"""Filesystem locations, resolved from the package (never from the working directory).

papermill runs kernels in the caller's directory and Jupyter Book in the notebook's, so every path the
book uses is derived from this file's location.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (the folder that holds ``mmlib/``, ``notebooks/`` and ``book/``).
REPO_ROOT: Path = Path(__file__).resolve().parents[2]

#: The notebooks folder.
NOTEBOOKS_DIR: Path = REPO_ROOT / "notebooks"

ARTIFACTS_ENV = "MMLIB_ARTIFACTS"


def artifacts_dir() -> Path:
    """The artifact root: ``$MMLIB_ARTIFACTS`` if set, else ``<repo>/artifacts`` (git-ignored).

    Read at call time so that tests can point it at a temporary folder.
    """
    env = os.environ.get(ARTIFACTS_ENV)
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "artifacts"
