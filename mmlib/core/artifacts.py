"""A content-keyed artifact store: safetensors + JSON, written atomically, verified on load.

An artifact is a folder ``<root>/<kind>/<key>/`` holding ``tensors.safetensors`` and ``meta.json``.
The key is a hash of everything that determines the artifact (config, data fingerprint, model identity,
code version of the producing code, :func:`code_version`), so nothing is silently reused across different configs.
Writes go to a temporary sibling folder that is renamed into place, so an interrupted write never leaves
a partial artifact. ``meta.json`` records the SHA-256 of the tensor file; a mismatch on load is reported as
:class:`CorruptArtifactError` and :func:`load_or_compute` then recomputes with a warning.
No pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmlib.core.imports import import_closure, module_file
from mmlib.core.paths import artifacts_dir

TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"


class CorruptArtifactError(RuntimeError):
    """An artifact exists on disk but cannot be read back intact."""


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, paths, enums, tuples and numpy scalars/arrays into plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and obj != obj:  # NaN is not valid JSON
        return "nan"
    return obj


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short hex digest of JSON-able parts; equal inputs give equal keys across runs and machines."""
    blob = json.dumps(to_jsonable(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@functools.cache
def code_version(module: str) -> str:
    """The code version of what a module produces: a hash of its source and of the source of every mmlib module
    it imports, directly or indirectly (found statically, from the import statements).

    An edit anywhere in that closure changes the version: editing the tiny architecture (``mmlib.models.clip``)
    re-keys the trained models, editing the world's renderer re-keys everything trained on its images. Modules
    that are only re-exported by a package's ``__init__`` are not part of it unless imported explicitly, so an
    edit of an unrelated sibling does not re-key. Cached per process (restart the kernel after editing mmlib).

    Parameters
    ----------
    module : str
        A dotted mmlib module name, e.g. ``__name__`` of the producing module (``"__main__"`` is resolved to the
        module's real name when it runs with ``python -m``).
    """
    if module == "__main__":  # a module run with `python -m mmlib.x.y` (e.g. under torchrun) knows its real name
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    digest = hashlib.sha256()
    for name in sorted(import_closure(module)):
        digest.update(name.encode() + b"\0" + module_file(name).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, streamed in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_fingerprint(tensors: Mapping[str, torch.Tensor], length: int = 16) -> str:
    """A hash of named tensors' exact bytes (e.g. a model's state dict)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:length]


def write_tensors_atomic(path: Path, tensors: Mapping[str, torch.Tensor],
                         metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file via a temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata=dict(metadata) if metadata else None)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated or garbled file raises :class:`CorruptArtifactError`."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CorruptArtifactError(f"{path} is not a readable safetensors file ({err})") from err


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A loaded artifact: its folder, its tensors and its metadata."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def artifact_path(kind: str, key: str, root: Path | None = None) -> Path:
    """Folder of the artifact ``kind/key`` under ``root`` (default :func:`mmlib.core.paths.artifacts_dir`)."""
    return Path(root or artifacts_dir()) / kind / key


def save_artifact(kind: str, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                  root: Path | None = None) -> Path:
    """Write an artifact atomically and return its folder.

    The folder is assembled under a temporary name and renamed into place; if another process got there
    first, its (identical by construction of the key) artifact is kept.
    """
    final = artifact_path(kind, key, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{key}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / TENSORS_FILE))
        full_meta = {**to_jsonable(dict(meta)), "kind": kind, "key": key,
                     "sha256": file_sha256(tmp / TENSORS_FILE)}
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_artifact(kind: str, key: str, root: Path | None = None) -> Artifact:
    """Load and verify an artifact.

    Raises
    ------
    FileNotFoundError
        if it was never written.
    CorruptArtifactError
        if its metadata is unreadable or its tensors do not match the recorded checksum.
    """
    folder = artifact_path(kind, key, root)
    if not folder.is_dir():
        raise FileNotFoundError(f"no artifact {kind}/{key} under {folder.parent}")
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CorruptArtifactError(f"{folder / META_FILE} is unreadable ({err})") from err
    tensor_file = folder / TENSORS_FILE
    if not tensor_file.is_file() or file_sha256(tensor_file) != meta.get("sha256"):
        raise CorruptArtifactError(f"{tensor_file} is missing or does not match its recorded checksum")
    return Artifact(folder, read_tensors(tensor_file), meta)


def load_or_compute(kind: str, key: str,
                    compute: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]],
                    root: Path | None = None) -> Artifact:
    """Return the artifact ``kind/key``, computing and saving it when missing or corrupt.

    ``compute()`` returns ``(tensors, meta)``. A corrupt artifact is removed and recomputed with a warning.
    """
    try:
        return load_artifact(kind, key, root)
    except FileNotFoundError:
        pass
    except CorruptArtifactError as err:
        warnings.warn(f"{err}; recomputing {kind}/{key}", RuntimeWarning, stacklevel=2)
        shutil.rmtree(artifact_path(kind, key, root), ignore_errors=True)
    tensors, meta = compute()
    save_artifact(kind, key, tensors, meta, root)
    return load_artifact(kind, key, root)
