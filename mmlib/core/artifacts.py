"""A content-keyed artifact store: safetensors + JSON, written atomically, verified on load.

An artifact is a folder ``<root>/<kind>/<key>/`` holding ``tensors.safetensors`` and ``meta.json``.
The key is a hash of everything that determines the artifact (config, data fingerprint, model identity,
code version of the producing code, :func:`code_version`), so nothing is silently reused across different configs.
Writes go to a temporary sibling folder that is renamed into place, so an interrupted write never leaves
a partial artifact; the temporaries of a killed writer are removed by the next run of the same key
(:func:`remove_stale_temporaries`). Loading verifies everything the folder claims:

* ``meta.json`` records the kind and key the artifact was written for; a folder holding another artifact's
  files (copied over, renamed) is refused with :class:`ArtifactMismatchError`;
* ``meta.json`` records the SHA-256 of the tensor file and of its own canonical content (``meta_sha256``), so
  any edit of either, even one that leaves valid JSON, is reported as :class:`CorruptArtifactError`;

and :func:`load_or_compute` then recomputes with a warning. Files are written with the user's umask (a team
folder stays readable by the team). No pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmlib.core.errors import ArtifactMismatchError, ArtifactRootError, CorruptArtifactError
from mmlib.core.imports import import_closure, module_file
from mmlib.core.paths import artifacts_dir

__all__ = [
    "Artifact", "ArtifactMismatchError", "CorruptArtifactError", "artifact_path", "code_version",
    "ensure_artifact_root", "file_sha256", "load_artifact", "load_or_compute", "meta_checksum", "read_tensors",
    "remove_stale_temporaries", "remove_stale_temporaries_under", "save_artifact", "stable_hash",
    "tensor_fingerprint", "to_jsonable",
    "write_tensors_atomic",
]

TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
#: Temporaries of a writer on another machine (shared folder) count as stale after this many seconds.
FOREIGN_TMP_AGE_S = 24 * 3600


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


# ------------------------------------------------------------------------------------------- temporaries

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _tmp_name(base: str) -> str:
    """``.<base>.<host>.<pid>.<random>.tmp``: a temporary that names its writer, so that a later run can tell
    a killed writer's leftovers from a live writer's work.
    """
    return f".{base}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex}.tmp"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _is_stale(tmp: Path, now: float) -> bool:
    match = re.fullmatch(r"\.(?:.+)\.([A-Za-z0-9-]+)\.(\d+)\.[0-9a-f]{32}\.tmp", tmp.name)
    try:
        age = now - tmp.lstat().st_mtime
    except FileNotFoundError:
        return False
    if match is None or match.group(1) != _HOST:  # an older naming scheme, or another machine's writer
        return age > FOREIGN_TMP_AGE_S if match is not None else age > 3600
    pid = int(match.group(2))
    return pid != os.getpid() and not _pid_alive(pid)


def _remove_stale(folder: Path, base: str) -> int:
    """Remove the stale temporaries of ``folder/base`` (``base="*"``: of every file in ``folder``; see
    :func:`remove_stale_temporaries`); return how many.
    """
    if not folder.is_dir():
        return 0
    removed, now = 0, time.time()
    pattern = ".*.tmp" if base == "*" else f".{glob_escape(base)}.*.tmp"
    for tmp in folder.glob(pattern):
        if _is_stale(tmp, now):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def remove_stale_temporaries_under(folder: Path) -> int:
    """Remove every stale temporary anywhere under ``folder`` (any kind, key or file; staleness as in
    :func:`remove_stale_temporaries`); return the number removed.
    """
    removed = 0
    for parent in sorted({tmp.parent for tmp in Path(folder).rglob(".*.tmp")}):
        removed += _remove_stale(parent, "*")
    return removed


def remove_stale_temporaries(kind: str, key: str, root: Path | None = None) -> int:
    """Remove what killed writers of the artifact ``kind/key`` left behind; return the number removed.

    A temporary is stale when its writer (named in it: host and process id) is a process of this machine that no
    longer runs, or, for a writer on another machine sharing the folder, when it is older than
    :data:`FOREIGN_TMP_AGE_S`. Temporaries of a live writer are left alone, so two processes computing the same
    key never disturb each other.
    """
    return _remove_stale(Path(root or artifacts_dir()) / kind, key)


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _umask_mode(path: Path) -> None:
    """Give a written file the mode an ordinary ``open(..., "w")`` would (safetensors writes 0600)."""
    os.chmod(path, 0o666 & ~_umask())


def write_tensors_atomic(path: Path, tensors: Mapping[str, torch.Tensor],
                         metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file via a temporary sibling and an atomic rename (mode from the umask).

    Stale temporaries of the same file left by a killed writer are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path.parent, path.name)
    tmp = path.with_name(_tmp_name(path.name))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata=dict(metadata) if metadata else None)
        _umask_mode(tmp)
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


def ensure_artifact_root(root: Path | None = None) -> Path:
    """The artifact root, created if missing, after checking that it is a writable folder.

    Call it before expensive work whose result is to be stored, so that a bad root fails at once.

    Raises
    ------
    ArtifactRootError
        if the root (or one of its parents) is a file, cannot be created, or is not writable.
    """
    path = Path(root or artifacts_dir()).expanduser()
    what = ("the artifact root " + str(path) + (" (from $MMLIB_ARTIFACTS)" if root is None
                                                 and os.environ.get("MMLIB_ARTIFACTS") else ""))
    advice = "pass a writable folder (--root, or the environment variable MMLIB_ARTIFACTS)"
    if path.exists() and not path.is_dir():
        raise ArtifactRootError(f"{what} is a file, not a folder; {advice}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise ArtifactRootError(f"{what} cannot be created: a parent is a file ({err.filename}); {advice}.") from err
    except OSError as err:
        raise ArtifactRootError(f"{what} cannot be created ({err.strerror}); {advice}.") from err
    probe = path / _tmp_name("write-probe")
    try:
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ArtifactRootError(f"{what} is not writable ({err.strerror}); {advice}.") from err
    return path


def _writable_kind_folder(kind: str, key: str, root: Path | None) -> Path:
    """``<root>/<kind>``, created, after checking the root (:func:`ensure_artifact_root`) and that no file is in
    the way.
    """
    ensure_artifact_root(root)
    folder = artifact_path(kind, key, root).parent
    if folder.exists() and not folder.is_dir():
        raise ArtifactRootError(f"{folder} is a file where the folder of the {kind!r} artifacts belongs; move or "
                                "delete it.")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _remove(path: Path) -> None:
    """Remove whatever is at ``path``: a folder tree, a file or a link (nothing if absent)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def meta_checksum(meta: Mapping[str, Any]) -> str:
    """SHA-256 of a metadata dict's canonical JSON, without its own ``meta_sha256`` entry."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_artifact(kind: str, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                  root: Path | None = None) -> Path:
    """Write an artifact atomically and return its folder.

    The folder is assembled under a temporary name and renamed into place; if another process got there
    first, its (identical by construction of the key) artifact is replaced. Stale temporaries of the key
    (a killed writer's) are removed first.

    Raises
    ------
    ArtifactRootError
        if the root is not a writable folder.
    """
    final = _writable_kind_folder(kind, key, root) / key
    remove_stale_temporaries(kind, key, root)
    tmp = final.parent / _tmp_name(key)
    tmp.mkdir()
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / TENSORS_FILE))
        _umask_mode(tmp / TENSORS_FILE)
        full_meta = {**to_jsonable(dict(meta)), "kind": kind, "key": key,
                     "sha256": file_sha256(tmp / TENSORS_FILE)}
        full_meta["meta_sha256"] = meta_checksum(full_meta)
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        _remove(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_artifact(kind: str, key: str, root: Path | None = None) -> Artifact:
    """Load and verify an artifact: its recorded kind and key, the checksum of ``meta.json`` and of the tensors.

    Raises
    ------
    FileNotFoundError
        if it was never written.
    ArtifactMismatchError
        if the folder holds another artifact (its ``meta.json`` records another kind or key).
    CorruptArtifactError
        if ``meta.json`` is unreadable or edited, or the tensors do not match the recorded checksum.
    """
    folder = artifact_path(kind, key, root)
    redo = f"delete the folder {folder} to have it recomputed"
    if not folder.is_dir():
        if folder.exists() or folder.is_symlink():
            raise CorruptArtifactError(f"{folder} is not a folder (a file or a broken link where the artifact "
                                       f"{kind}/{key} belongs); {redo.replace('the folder ', '')}.")
        raise FileNotFoundError(f"no artifact {kind}/{key} under {folder.parent}")
    meta_file = folder / META_FILE
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptArtifactError(f"{meta_file} is missing or unreadable ({err}); {redo}.") from err
    if not isinstance(meta, dict):
        raise CorruptArtifactError(f"{meta_file} holds a JSON {type(meta).__name__}, not an object; {redo}.")
    if "meta_sha256" not in meta:
        raise CorruptArtifactError(f"{meta_file} has no checksum of its own: the artifact was written by an older "
                                   f"mmlib and cannot be verified; {redo}.")
    if meta.get("meta_sha256") != meta_checksum(meta):
        raise CorruptArtifactError(f"{meta_file} does not match its recorded checksum (it was edited); {redo}.")
    if (meta.get("kind"), meta.get("key")) != (kind, key):
        raise ArtifactMismatchError(f"{folder} holds the artifact {meta.get('kind')}/{meta.get('key')}, not "
                                    f"{kind}/{key} (files copied or moved between artifacts); {redo}.")
    tensor_file = folder / TENSORS_FILE
    if not tensor_file.is_file() or file_sha256(tensor_file) != meta.get("sha256"):
        raise CorruptArtifactError(f"{tensor_file} is missing or does not match its recorded checksum; {redo}.")
    return Artifact(folder, read_tensors(tensor_file), meta)


def load_or_compute(kind: str, key: str,
                    compute: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]],
                    root: Path | None = None) -> Artifact:
    """Return the artifact ``kind/key``, computing and saving it when missing or corrupt.

    ``compute()`` returns ``(tensors, meta)``. A corrupt artifact is removed and recomputed with a warning;
    the artifact root is checked (:func:`ensure_artifact_root`) before ``compute`` runs, and stale temporaries of
    the key are removed.
    """
    try:
        found = load_artifact(kind, key, root)
    except FileNotFoundError:
        pass
    except CorruptArtifactError as err:
        warnings.warn(f"{err}; recomputing {kind}/{key}", RuntimeWarning, stacklevel=2)
        ensure_artifact_root(root)
        _remove(artifact_path(kind, key, root))
    else:
        if any(artifact_path(kind, key, root).parent.glob(f".{glob_escape(key)}.*.tmp")):
            remove_stale_temporaries(kind, key, root)
        return found
    _writable_kind_folder(kind, key, root)
    remove_stale_temporaries(kind, key, root)
    tensors, meta = compute()
    save_artifact(kind, key, tensors, meta, root)
    return load_artifact(kind, key, root)
