"""A content-keyed artifact store: safetensors + JSON, written atomically, verified on load.

An artifact is a folder ``<root>/<kind>/<key>/`` holding ``tensors.safetensors`` and ``meta.json`` (and, once
verified, ``verified.json``). The key is a hash of everything that determines the artifact (config, data
fingerprint, model identity, code version of the producing code, :func:`code_version`), so nothing is silently
reused across different configs. Writes go to a temporary sibling folder that is renamed into place, so an
interrupted write never leaves a partial artifact; the temporaries of a killed writer are removed by the next run of
the same key (:func:`remove_stale_temporaries`). Loading verifies everything the folder claims:

* ``meta.json`` records the kind and key the artifact was written for; a folder holding another artifact's
  files (copied over, renamed) is refused with :class:`ArtifactMismatchError`;
* ``meta.json`` records the SHA-256 of the tensor file and of its own canonical content (``meta_sha256``), so
  any edit of either, even one that leaves valid JSON, is reported as :class:`CorruptArtifactError`;

and :func:`load_or_compute` then recomputes with a warning. Files are written with the user's umask (a team
folder stays readable by the team). No pickle anywhere.

**Fast hits.** Hashing a large tensor file on every load would read it in full each time, so the SHA-256 is computed
once, when the file is written or first loaded, and recorded with the file's stat signature (size, mtime, ctime,
inode, device) in ``verified.json``, a *verification stamp* with its own checksum. A later load trusts the recorded
hash only while the signature is unchanged; any write to the file changes its ctime (which ``touch`` and
:func:`os.utime` cannot set back), and a replaced or copied file has another inode, so both are hashed again
(:func:`load_artifact`). The tensors are then mapped, not read (:func:`read_tensors`): a hit costs ``O(header)``,
whatever the size. Damage that bypasses the file system (bit rot, a disk's silent corruption) leaves the signature
as it was; ``load_artifact(..., full=True)`` (``python -m mmlib verify``) hashes every file regardless.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
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
#: The verification stamp of an artifact folder (see :func:`load_artifact`).
STAMP_FILE = "verified.json"
STAMP_FORMAT = 1
#: A stamp is only written for a tensor file whose last change (ctime) is at least this many seconds old, so that a
#: later change always gets another ctime, even on a file system whose clock ticks coarsely (see :func:`_stampable`).
STAMP_RACY_S = 1.0
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
    """Map a safetensors file; a truncated or garbled file raises :class:`CorruptArtifactError`.

    The header is parsed and validated by safetensors (offsets in range and contiguous, dtypes known, sizes
    consistent with the shapes, the file covered exactly); the tensors are views of a private (copy-on-write) memory
    map of the file: no tensor byte is read until it is used, and a write to a returned tensor never reaches the
    file. The map keeps the data of a deleted or replaced file alive, and the store only ever replaces files (new
    file, rename). A file edited *in place* by another program while its tensors are in use shows through them (a
    truncation makes them fault): the next load detects the edit, tensors already loaded cannot.
    """
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CorruptArtifactError(f"{path} is not a readable safetensors file ({err})") from err


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A loaded artifact: its folder, its tensors (mapped, see :func:`read_tensors`), its metadata, and how its
    tensor file was verified: ``"sha256"`` (hashed now) or ``"stamp"`` (a valid verification stamp).
    """

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    verified_by: str = "sha256"


#: Folder under the artifact root that holds one lock file per key being computed (:func:`load_or_compute`); hidden,
#: so that listings of the kinds skip it.
LOCKS_DIR = ".locks"


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


def _replace_folder(new: Path, final: Path) -> None:
    """Rename the folder ``new`` to ``final``. A folder already at ``final`` (another writer's) is first renamed
    aside, atomically, and then removed: a reader sees the old artifact or the new one, and a reader writing a stamp
    into the old folder meanwhile cannot make the removal fail.
    """
    for attempt in range(3):
        aside = None
        if final.is_dir() and not final.is_symlink():
            aside = final.parent / _tmp_name(final.name)
            with contextlib.suppress(FileNotFoundError):  # another writer moved it first
                os.replace(final, aside)
        else:
            _remove(final)
        try:
            os.replace(new, final)
        except OSError:  # another writer's folder arrived in between: move that one aside too
            if attempt == 2:
                raise
            continue
        finally:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
        return


# ----------------------------------------------------------------------------------------- verification stamps

def _signature(status: os.stat_result) -> dict[str, int]:
    """What identifies a file's state without reading it: size, mtime, ctime (ns), inode and device."""
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "ctime_ns": status.st_ctime_ns,
            "ino": status.st_ino, "dev": status.st_dev}


def _stampable(signature: Mapping[str, int], now_ns: int) -> bool:
    """Whether a file with ``signature``, hashed (or made visible) after ``now_ns``, may be stamped.

    Only where ctime is the time of the last change (POSIX; on Windows it is the creation time), on a file system
    with sub-second timestamps (a ctime on a whole second suggests a coarse one, e.g. FAT), and when the last change
    is older than :data:`STAMP_RACY_S`: a change made later, within the same tick of the file system's clock, would
    otherwise leave the ctime as recorded ("racy" stamps, as git calls its index entries).
    """
    ctime = signature["ctime_ns"]
    return os.name == "posix" and ctime % 1_000_000_000 != 0 and ctime < now_ns - int(STAMP_RACY_S * 1e9)


def _stamp_checksum(stamp: Mapping[str, Any]) -> str:
    body = {k: v for k, v in stamp.items() if k != "stamp_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _stamp_vouches(folder: Path, signature: Mapping[str, int], sha256: str) -> bool:
    """Whether ``folder``'s stamp is intact (its own checksum), records ``sha256`` and exactly ``signature``."""
    try:
        stamp = json.loads((folder / STAMP_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (isinstance(stamp, dict) and stamp.get("stamp_sha256") == _stamp_checksum(stamp)
            and stamp.get("format") == STAMP_FORMAT and stamp.get("file") == TENSORS_FILE
            and stamp.get("sha256") == sha256 and all(stamp.get(k) == v for k, v in signature.items()))


def _write_stamp(folder: Path, signature: Mapping[str, int], sha256: str) -> bool:
    """Write ``folder``'s stamp atomically (temporary sibling, rename); best effort: ``False`` where the folder is
    not writable (a read-only store then hashes on every load).
    """
    stamp: dict[str, Any] = {"format": STAMP_FORMAT, "file": TENSORS_FILE, "sha256": sha256, **signature}
    stamp["stamp_sha256"] = _stamp_checksum(stamp)
    tmp = folder / _tmp_name(STAMP_FILE)
    try:
        tmp.write_text(json.dumps(stamp, indent=2, sort_keys=True))
        os.replace(tmp, folder / STAMP_FILE)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
    return True


def _drop_stamp(folder: Path) -> None:
    """Remove ``folder``'s stamp (best effort): a stamp must not outlive a failed check of its file."""
    with contextlib.suppress(OSError):
        (folder / STAMP_FILE).unlink(missing_ok=True)


def _verify_tensor_file(folder: Path, sha256: Any, full: bool) -> tuple[str, dict[str, int]] | None:
    """How ``folder``'s tensor file matches ``sha256``, and the signature of the file so verified: ``"stamp"`` (a
    valid stamp vouches for it), ``"sha256"`` (hashed now, and stamped if it may be, :func:`_stampable`); or
    ``None`` (missing, not a regular file, or another hash).
    """
    tensor_file = folder / TENSORS_FILE
    try:
        before = tensor_file.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(before.st_mode) or not isinstance(sha256, str):
        return None
    signature = _signature(before)
    vouched = _stamp_vouches(folder, signature, sha256)
    if vouched and not full:
        return "stamp", signature
    started = time.time_ns()
    if file_sha256(tensor_file) != sha256:
        _drop_stamp(folder)
        return None
    if not vouched and _signature(tensor_file.stat()) == signature and _stampable(signature, started):
        _write_stamp(folder, signature, sha256)
    return "sha256", signature


def _signature_of(path: Path) -> dict[str, int] | None:
    try:
        return _signature(path.stat())
    except OSError:
        return None


def meta_checksum(meta: Mapping[str, Any]) -> str:
    """SHA-256 of a metadata dict's canonical JSON, without its own ``meta_sha256`` entry."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_artifact(kind: str, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                  root: Path | None = None) -> Path:
    """Write an artifact atomically and return its folder.

    The folder is assembled under a temporary name and renamed into place; if another process got there
    first, its (identical by construction of the key) artifact is replaced. Stale temporaries of the key
    (a killed writer's) are removed first. The SHA-256 of the tensor file is recorded in ``meta.json``, and in a
    verification stamp (:func:`load_artifact`) if the file's last change is older than :data:`STAMP_RACY_S` by the
    time it becomes visible: for a large file, the save waits out the rest of that window when that takes less
    time than hashing the file did (so a read-only store serves its first hit without hashing); a small file is
    stamped by its first load instead.

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
        tensor_file = tmp / TENSORS_FILE
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tensor_file))
        _umask_mode(tensor_file)
        signature = _signature(tensor_file.stat())
        hashing = time.perf_counter()
        sha256 = file_sha256(tensor_file)
        hash_s = time.perf_counter() - hashing
        full_meta = {**to_jsonable(dict(meta)), "kind": kind, "key": key, "sha256": sha256}
        full_meta["meta_sha256"] = meta_checksum(full_meta)
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        racy_s = (signature["ctime_ns"] - time.time_ns()) / 1e9 + STAMP_RACY_S + 1e-3
        if 0 < racy_s <= hash_s:  # waiting out the racy window costs less than the hash it saves the first load
            time.sleep(racy_s)
        if _signature(tensor_file.stat()) == signature and _stampable(signature, time.time_ns()):
            _write_stamp(tmp, signature, sha256)  # the file becomes visible (the rename below) only after this
        _replace_folder(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_artifact(kind: str, key: str, root: Path | None = None, *, full: bool = False) -> Artifact:
    """Load and verify an artifact: its recorded kind and key, the checksum of ``meta.json`` and of the tensors.

    ``meta.json`` is read and checked in full on every load. The tensor file is verified against the SHA-256 that
    ``meta.json`` records, either by hashing it, or, without reading it, by its *verification stamp*
    (``verified.json``): a record, with its own checksum, of the hash and of the file's stat signature (size,
    mtime and ctime in ns, inode, device) when it was last hashed. The stamp is trusted only if it is intact,
    records the same hash as ``meta.json``, and the signature is still exactly the same; otherwise (and with
    ``full=True``) the file is hashed, and, if it matches, stamped (best effort: a read-only folder is hashed on
    every load). A file that fails its hash loses its stamp. The tensors are then mapped (:func:`read_tensors`),
    so a hit reads ``O(header)`` bytes whatever the file's size; the signature is checked again after mapping, so
    the file mapped is the file verified.

    What a stamp guarantees: any change of the file through the file system since it was hashed is detected, as
    any write, truncation or ``chmod`` sets the ctime to the current time (``touch`` / :func:`os.utime` can restore
    the mtime but not the ctime), and a replaced, copied or restored file has another inode or ctime. It cannot see
    damage that bypasses the file system (bit rot, a faulty disk or a raw device write, a deliberately forged
    stamp); ``full=True`` (``python -m mmlib verify``) hashes every file regardless. On Windows, whose ctime is the
    creation time, no stamp is written and every load hashes.

    Parameters
    ----------
    kind, key : str
        The artifact's kind and key.
    root : Path, optional
        Artifact root (default :func:`mmlib.core.paths.artifacts_dir`).
    full : bool
        Hash the tensor file even if a valid stamp vouches for it.

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
    for _ in range(2):  # the file mapped must be the file verified: a concurrent writer may replace it in between
        verified = _verify_tensor_file(folder, meta.get("sha256"), full)
        if verified is None:
            raise CorruptArtifactError(f"{tensor_file} is missing or does not match its recorded checksum; {redo}.")
        tensors = read_tensors(tensor_file)
        if _signature_of(tensor_file) == verified[1]:
            return Artifact(folder, tensors, meta, verified[0])
    raise CorruptArtifactError(f"{tensor_file} kept changing while it was being loaded (another program writes it "
                               f"in place); stop that program, or {redo}.")


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
    folder = _writable_kind_folder(kind, key, root)
    with _compute_lock(folder.parent / LOCKS_DIR / kind / f"{key}.lock"):
        try:  # another process may have computed it while this one waited for the lock
            return load_artifact(kind, key, root)
        except (FileNotFoundError, CorruptArtifactError):
            pass
        remove_stale_temporaries(kind, key, root)
        tensors, meta = compute()
        save_artifact(kind, key, tensors, meta, root)
        return load_artifact(kind, key, root)


@contextlib.contextmanager
def _compute_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing, kept afterwards) while computing one key.

    Processes that need the same missing artifact at once (e.g. two notebooks run in parallel) then compute it once:
    the second waits and loads what the first saved. Where ``fcntl`` or locking is not available (another OS, a file
    system without locks) it does nothing: both compute, and the atomic rename keeps one complete result.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+b")  # noqa: SIM115 - closed below, after the lock is released
    except OSError:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except OSError:
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
