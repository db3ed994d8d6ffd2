"""The ``mmlib`` command line (``python -m mmlib``, or the ``mmlib`` script): extract, verify and clean artifacts.

Commands:

* ``embed``: embed an image-caption corpus with a CLIP model into the artifact store (cached, resumable, shardable
  under ``torchrun``; the options of ``python -m mmlib.models.embed``);
* ``verify``: load every artifact ``<root>/<kind>/<key>/`` and check it (recorded kind and key, checksums: every
  tensor file is hashed, whatever its verification stamp says, so it also catches damage that bypassed the file
  system), list the corrupt ones and exit with status 1 if there is any;
* ``clean``: remove what killed runs left behind: stale temporaries (``.*.tmp`` of writers that no longer run) and
  the resume shards of extractions whose artifact exists (``--parts``: every resume shard);
* ``smoke-data``: write a small generated corpus in the real formats (CSV, webdataset shards, a CelebA folder, a
  word list; :mod:`mmlib.data.smoke`) and print each chapter parameter's value as JSON.

A bad option or input exits with status 2 and exactly one line ``error: <message>`` on stderr (no traceback);
anything else is a bug and keeps its traceback. This module sits above every layer: nothing in mmlib imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from mmlib import __version__
from mmlib.core.artifacts import (
    CorruptArtifactError,
    ensure_artifact_root,
    load_artifact,
    remove_stale_temporaries_under,
)
from mmlib.core.console import OneLineErrorParser, one_line, run_command
from mmlib.core.errors import ArtifactRootError, InputError
from mmlib.core.paths import artifacts_dir
from mmlib.data.smoke import SmokeConfig, write_smoke_data
from mmlib.models import embed

__all__ = ["build_parser", "clean", "main", "smoke_data", "verify"]

#: Suffix of the folders that hold resume state rather than artifacts (``embeddings.parts``).
PARTS_SUFFIX = ".parts"


def _existing_root(root: Path | None) -> Path:
    """The artifact root ``root`` (default ``$MMLIB_ARTIFACTS`` or ``<repo>/artifacts``), which must be a folder."""
    path = Path(root).expanduser() if root is not None else artifacts_dir()
    where = f"the artifact root {path}" + ("" if root is not None else " (default; set --root or MMLIB_ARTIFACTS)")
    if not path.exists():
        raise ArtifactRootError(f"{where} does not exist; pass the folder that holds the artifacts with --root.")
    if not path.is_dir():
        raise ArtifactRootError(f"{where} is a file, not a folder; pass the artifact folder with --root.")
    return path


def _kind_folders(root: Path, kinds: Sequence[str] | None) -> list[Path]:
    """The artifact kinds under ``root`` (``kinds``: only those, each of which must exist)."""
    found = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and not p.name.endswith(PARTS_SUFFIX))
    if not kinds:
        return found
    names = {p.name for p in found}
    missing = [k for k in kinds if k not in names]
    if missing:
        raise InputError(f"--kind {missing[0]!r}: no such artifact kind under {root} (found: "
                         f"{', '.join(sorted(names)) or 'none'}); pass one of those.")
    return [p for p in found if p.name in kinds]


def verify(root: Path | None = None, kinds: Sequence[str] | None = None, verbose: bool = False) -> int:
    """Load and verify every artifact ``<root>/<kind>/<key>/``; print the corrupt ones; return the exit status.

    Returns
    -------
    int
        0 if every artifact loads intact, 1 if any is corrupt, holds another artifact, or is not a folder.

    Raises
    ------
    ArtifactRootError
        if the root does not exist or is a file.
    InputError
        if a kind in ``kinds`` does not exist.
    """
    path = _existing_root(root)
    checked, bad, temporaries = 0, 0, 0
    for folder in _kind_folders(path, kinds):
        for entry in sorted(folder.iterdir()):
            if entry.name.endswith(".tmp"):
                temporaries += 1
                continue
            if entry.name.startswith("."):
                continue
            checked += 1
            name = f"{folder.name}/{entry.name}"
            if not entry.is_dir():
                bad += 1
                print(f"NOT AN ARTIFACT {name}: a file where an artifact folder belongs; move or delete it.")
                continue
            try:
                load_artifact(folder.name, entry.name, path, full=True)  # hash every file, whatever its stamp says
            except CorruptArtifactError as err:
                bad += 1
                print(f"CORRUPT {name}: {one_line(err)}")
            except OSError as err:
                bad += 1
                print(f"UNREADABLE {name}: {err}; check its permissions.")
            else:
                if verbose:
                    print(f"ok {name}")
    note = f"; {temporaries} temporaries left by interrupted writes ('mmlib clean' removes stale ones)" \
        if temporaries else ""
    print(f"verified {checked} artifact(s) under {path}: {checked - bad} intact, {bad} corrupt{note}")
    return 1 if bad else 0


def clean(root: Path | None = None, parts: bool = False) -> int:
    """Remove what killed runs left under the artifact root; print what was removed; return the exit status (0).

    Stale temporaries (``.*.tmp`` whose writer no longer runs) are removed, and the resume shards
    (``<kind>.parts/<key>-s<n>/``) of extractions whose artifact exists intact. ``parts=True`` also removes the
    resume shards of unfinished extractions (they are then recomputed from scratch).

    Raises
    ------
    ArtifactRootError
        if the root does not exist, is a file or is not writable.
    """
    path = ensure_artifact_root(_existing_root(root))
    removed = remove_stale_temporaries_under(path)
    orphans = unfinished = 0
    for folder in sorted(p for p in path.iterdir() if p.is_dir() and p.name.endswith(PARTS_SUFFIX)):
        kind = folder.name.removesuffix(PARTS_SUFFIX)
        for resume in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            key = re.sub(r"-s\d+$", "", resume.name)
            try:
                load_artifact(kind, key, path)
                done = True
            except (FileNotFoundError, CorruptArtifactError):
                done = False
            if done or parts:
                shutil.rmtree(resume, ignore_errors=True)
                orphans += done
                unfinished += not done
        try:
            folder.rmdir()
        except OSError:
            pass
    print(f"removed {removed} stale temporaries and {orphans + unfinished} resume folder(s) under {path} "
          f"({orphans} of finished artifacts, {unfinished} of unfinished extractions)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``mmlib`` parser with its subcommands (errors: one ``error:`` line, exit status 2)."""
    parser = OneLineErrorParser(
        prog="mmlib", description="The mmlib command line: extract CLIP embeddings into the artifact store, "
                                  "verify the stored artifacts, clean what interrupted runs left behind.")
    parser.add_argument("--version", action="version", version=f"mmlib {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    command = commands.add_parser(
        "embed", help="embed an image-caption corpus with a CLIP model (cached, resumable, torchrun-shardable)",
        description="Embed an image-caption corpus with a CLIP model into the artifact store (cached, resumable; "
                    "run under torchrun to shard the work). Prints the artifact folder.")
    embed.add_arguments(command)
    command.set_defaults(handler=embed.run)

    command = commands.add_parser(
        "verify", help="check every stored artifact; exit status 1 if any is corrupt",
        description="Load every artifact <root>/<kind>/<key>/ and verify it (recorded kind and key, checksums of "
                    "meta.json and of the tensors). Lists the corrupt ones; exit status 1 if there is any.")
    command.add_argument("--root", type=Path, help="artifact root (default: $MMLIB_ARTIFACTS or <repo>/artifacts)")
    command.add_argument("--kind", action="append", help="only this kind of artifact (repeatable)")
    command.add_argument("-v", "--verbose", action="store_true", help="also list the intact artifacts")
    command.set_defaults(handler=lambda args: verify(args.root, args.kind, args.verbose))

    command = commands.add_parser(
        "clean", help="remove stale temporaries and leftover resume shards of killed runs",
        description="Remove what killed runs left behind: temporaries whose writer no longer runs, and the resume "
                    "shards of extractions whose artifact exists. Live writers are left alone.")
    command.add_argument("--root", type=Path, help="artifact root (default: $MMLIB_ARTIFACTS or <repo>/artifacts)")
    command.add_argument("--parts", action="store_true",
                         help="also remove the resume shards of unfinished extractions")
    command.set_defaults(handler=lambda args: clean(args.root, args.parts))

    command = commands.add_parser(
        "smoke-data", help="write a small generated corpus in the real formats (the paper profile's smoke data)",
        description="Write a small generated corpus in the formats the paper profile reads (CSV + images, "
                    "webdataset shards, a CelebA-layout folder, a concept word list) into a new folder, and print "
                    "where each is as JSON (the chapters' pairs / celeba_root / vocabulary_file parameters).")
    command.add_argument("folder", type=Path, help="a new (or empty) folder")
    defaults = SmokeConfig()
    for field in dataclasses.fields(SmokeConfig):
        command.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=getattr(defaults, field.name),
                             help=f"default {getattr(defaults, field.name)}")
    command.set_defaults(handler=smoke_data)
    return parser


def smoke_data(args: argparse.Namespace) -> int:
    """``mmlib smoke-data``: write the smoke corpus and print its locations as JSON; returns 0."""
    config = SmokeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SmokeConfig)})
    data = write_smoke_data(args.folder, config)
    print(json.dumps({"pairs_csv": str(data.csv), "pairs_wds": data.shards, "celeba_root": str(data.celeba_root),
                      "vocabulary_file": str(data.vocabulary_file), "n": data.n}, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m mmlib`` and of the ``mmlib`` script; returns the exit status.

    Any :class:`~mmlib.core.errors.MmlibError` (and any argparse error) becomes one line ``error: <message>`` on
    stderr and exit status 2.
    """
    return run_command(lambda args: args.handler(args), build_parser().parse_args(argv))
