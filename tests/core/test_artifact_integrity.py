"""The artifact store refuses what it did not write: corruptions, other artifacts' files, edited metadata;
it cleans up after killed writers, respects the umask and checks its root before any work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmlib.core import artifacts
from mmlib.core.artifacts import (
    ArtifactMismatchError,
    CorruptArtifactError,
    artifact_path,
    ensure_artifact_root,
    load_artifact,
    load_or_compute,
    remove_stale_temporaries,
    save_artifact,
    write_tensors_atomic,
)
from mmlib.core.errors import ArtifactRootError, MmlibError


def _save(root: Path, key: str = "k1", kind: str = "kind", value: float = 1.0) -> Path:
    return save_artifact(kind, key, {"x": torch.full((8, 4), value)}, {"n": 8, "note": "a"}, root=root)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def _drop_meta_checksum(folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    del meta["meta_sha256"]
    (folder / "meta.json").write_text(json.dumps(meta))


CORRUPTIONS = {
    "tensor byte flipped": lambda f: _flip(f / "tensors.safetensors", -3),
    "tensor header byte flipped": lambda f: _flip(f / "tensors.safetensors", 12),
    "tensor file truncated": lambda f: (f / "tensors.safetensors").write_bytes(
        (f / "tensors.safetensors").read_bytes()[:-16]),
    "tensor file empty": lambda f: (f / "tensors.safetensors").write_bytes(b""),
    "tensor file deleted": lambda f: (f / "tensors.safetensors").unlink(),
    "tensor file is a folder": lambda f: ((f / "tensors.safetensors").unlink(),
                                          (f / "tensors.safetensors").mkdir()),
    "meta deleted": lambda f: (f / "meta.json").unlink(),
    "meta not JSON": lambda f: (f / "meta.json").write_text("{not json"),
    "meta not UTF-8": lambda f: (f / "meta.json").write_bytes(b"\xff\xfe{}"),
    "meta a JSON list": lambda f: (f / "meta.json").write_text("[1, 2]"),
    "meta value edited (valid JSON)": lambda f: _edit_meta(f, n=9),
    "meta checksum emptied": lambda f: _edit_meta(f, meta_sha256=None),
    "meta checksum absent (older format)": lambda f: _drop_meta_checksum(f),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_every_corruption_is_detected(tmp_path, corruption):
    folder = _save(tmp_path)
    load_artifact("kind", "k1", tmp_path)  # intact: loads
    CORRUPTIONS[corruption](folder)
    with pytest.raises(CorruptArtifactError) as err:
        load_artifact("kind", "k1", tmp_path)
    assert str(folder) in str(err.value) and "delete the folder" in str(err.value)
    assert isinstance(err.value, MmlibError)


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_load_or_compute_recomputes_every_corruption(tmp_path, corruption):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.full((8, 4), 1.0)}, {"n": 8, "note": "a"}

    load_or_compute("kind", "k1", compute, root=tmp_path)
    CORRUPTIONS[corruption](artifact_path("kind", "k1", tmp_path))
    with pytest.warns(RuntimeWarning, match="recomputing kind/k1"):
        art = load_or_compute("kind", "k1", compute, root=tmp_path)
    assert len(calls) == 2 and art.meta["n"] == 8 and torch.equal(art.tensors["x"], torch.ones(8, 4))


def test_a_file_where_the_artifact_folder_belongs_is_recomputed(tmp_path):
    folder = artifact_path("kind", "k1", tmp_path)
    folder.parent.mkdir(parents=True)
    folder.write_text("not an artifact")
    with pytest.raises(CorruptArtifactError, match="is not a folder"):
        load_artifact("kind", "k1", tmp_path)
    with pytest.warns(RuntimeWarning, match="recomputing"):
        art = load_or_compute("kind", "k1", lambda: ({"x": torch.ones(2)}, {}), root=tmp_path)
    assert art.path.is_dir()
    (tmp_path / "kind").rename(tmp_path / "kind.bak")
    (tmp_path / "kind").write_text("a file where the kind's folder belongs")
    with pytest.raises(ArtifactRootError, match="is a file where the folder of the 'kind' artifacts belongs"):
        load_or_compute("kind", "k1", lambda: pytest.fail("computed before checking the folder"), root=tmp_path)


def test_another_keys_files_are_refused(tmp_path):
    """Copying one artifact's files over another's (same kind) used to load the other data silently."""
    a, b = _save(tmp_path, "key-a", value=1.0), _save(tmp_path, "key-b", value=2.0)
    for name in ("tensors.safetensors", "meta.json"):
        shutil.copy(a / name, b / name)
    with pytest.raises(ArtifactMismatchError, match="holds the artifact kind/key-a, not kind/key-b"):
        load_artifact("kind", "key-b", tmp_path)


def test_a_folder_moved_to_another_kind_is_refused(tmp_path):
    folder = _save(tmp_path, "key-a", kind="embeddings")
    (tmp_path / "features").mkdir()
    shutil.copytree(folder, tmp_path / "features" / "key-a")
    with pytest.raises(ArtifactMismatchError, match="embeddings/key-a, not features/key-a"):
        load_artifact("features", "key-a", tmp_path)


def test_an_older_artifact_is_named_as_such(tmp_path):
    _drop_meta_checksum(_save(tmp_path))
    with pytest.raises(CorruptArtifactError, match="written by an older mmlib and cannot be verified"):
        load_artifact("kind", "k1", tmp_path)


def test_metadata_round_trips_and_is_covered(tmp_path):
    folder = _save(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["meta_sha256"] == artifacts.meta_checksum(meta)
    assert load_artifact("kind", "k1", tmp_path).meta["note"] == "a"


# ------------------------------------------------------------------------------------------- temporaries

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _tmp(folder: Path, base: str, host: str, pid: int, is_dir: bool = True) -> Path:
    path = folder / f".{base}.{host}.{pid}.{'0' * 32}.tmp"
    path.mkdir(parents=True) if is_dir else path.write_bytes(b"x")
    return path


def test_stale_temporaries_of_a_key_are_removed_and_live_ones_kept(tmp_path):
    kind_dir = tmp_path / "kind"
    host = artifacts._HOST
    dead = _tmp(kind_dir, "k1", host, _dead_pid())
    live = _tmp(kind_dir, "k1", host, os.getppid())
    mine = _tmp(kind_dir, "k1", host, os.getpid())
    other_key = _tmp(kind_dir, "k2", host, _dead_pid())
    foreign_new = _tmp(kind_dir, "k1", "another-host", 1)
    foreign_old = _tmp(kind_dir, "k1", "yet-another-host", 1)
    old = time.time() - artifacts.FOREIGN_TMP_AGE_S - 60
    os.utime(foreign_old, (old, old))
    assert remove_stale_temporaries("kind", "k1", tmp_path) == 2
    assert not dead.exists() and not foreign_old.exists()
    assert live.exists() and mine.exists() and other_key.exists() and foreign_new.exists()


def test_the_next_run_of_a_key_removes_a_killed_writers_temporary(tmp_path):
    """A kill during the final write leaves a temporary as large as the artifact; the next run removes it."""
    stale = _tmp(tmp_path / "kind", "k1", artifacts._HOST, _dead_pid())
    (stale / "tensors.safetensors").write_bytes(b"\0" * 1024)
    load_or_compute("kind", "k1", lambda: ({"x": torch.ones(2)}, {}), root=tmp_path)
    assert not stale.exists()
    stale = _tmp(tmp_path / "kind", "k1", artifacts._HOST, _dead_pid())
    load_or_compute("kind", "k1", lambda: pytest.fail("cache hit expected"), root=tmp_path)  # hit: still cleaned
    assert not stale.exists()


def test_write_tensors_atomic_removes_stale_siblings(tmp_path):
    stale = _tmp(tmp_path, "model.safetensors", artifacts._HOST, _dead_pid(), is_dir=False)
    write_tensors_atomic(tmp_path / "model.safetensors", {"w": torch.ones(3)})
    assert not stale.exists() and (tmp_path / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        folder = _save(tmp_path)
        write_tensors_atomic(tmp_path / "single.safetensors", {"w": torch.ones(3)})
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    for path in (folder / "tensors.safetensors", folder / "meta.json", tmp_path / "single.safetensors"):
        assert path.stat().st_mode & 0o777 == expected, path


# ------------------------------------------------------------------------------------------------- root

def test_root_that_is_a_file_is_refused_before_any_work(tmp_path):
    root = tmp_path / "root"
    root.write_text("not a folder")
    with pytest.raises(ArtifactRootError, match="is a file, not a folder"):
        load_or_compute("kind", "k1", lambda: pytest.fail("computed before checking the root"), root=root)
    with pytest.raises(ArtifactRootError, match="a parent is a file"):
        ensure_artifact_root(root / "sub")


def test_unwritable_root_is_refused_before_any_work(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    real_touch = Path.touch

    def touch(self, *args, **kwargs):
        if self.parent == root:
            raise PermissionError(13, "Permission denied", str(self))
        return real_touch(self, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", touch)
    with pytest.raises(ArtifactRootError, match="is not writable"):
        load_or_compute("kind", "k1", lambda: pytest.fail("computed before checking the root"), root=root)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_root_is_refused(tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(ArtifactRootError, match="not writable"):
            ensure_artifact_root(root)
    finally:
        root.chmod(0o755)


def test_a_read_only_cache_still_serves_hits(tmp_path, monkeypatch):
    """A team's read-only cache: existing artifacts load without needing write access."""
    _save(tmp_path)
    monkeypatch.setattr(artifacts, "ensure_artifact_root", lambda root=None: pytest.fail("root checked on a hit"))
    assert load_or_compute("kind", "k1", lambda: pytest.fail("recomputed"), root=tmp_path).meta["n"] == 8


# ------------------------------------------------------------------------------------ verification stamps

RACY_S = 0.02  # the racy-timestamp window in these tests (the file system here has sub-second timestamps)


@pytest.fixture
def short_racy_window(monkeypatch):
    monkeypatch.setattr(artifacts, "STAMP_RACY_S", RACY_S)


@pytest.fixture
def count_hashes(monkeypatch):
    """Record every file hashed by the store (``artifacts.file_sha256``)."""
    hashed: list[Path] = []
    real = artifacts.file_sha256

    def wrapper(path):
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(artifacts, "file_sha256", wrapper)
    return hashed


def _stamped(root: Path, key: str = "k1") -> Path:
    """An artifact whose first load (past the racy window) hashed it and wrote its stamp."""
    folder = _save(root, key)
    time.sleep(2 * RACY_S)
    assert load_artifact("kind", key, root).verified_by == "sha256"
    assert (folder / "verified.json").is_file()
    return folder


def _stamp(folder: Path) -> dict:
    return json.loads((folder / "verified.json").read_text())


def _write_stamp(folder: Path, stamp: dict) -> None:
    stamp = {k: v for k, v in stamp.items() if k != "stamp_sha256"}
    stamp["stamp_sha256"] = artifacts._stamp_checksum(stamp)
    (folder / "verified.json").write_text(json.dumps(stamp))


def test_a_stamp_spares_the_hash_and_records_the_file(tmp_path, short_racy_window, count_hashes):
    folder = _stamped(tmp_path)
    tensor_file = folder / "tensors.safetensors"
    status = tensor_file.stat()
    stamp = _stamp(folder)
    assert stamp["sha256"] == json.loads((folder / "meta.json").read_text())["sha256"] == artifacts.file_sha256(
        tensor_file)
    assert (stamp["size"], stamp["mtime_ns"], stamp["ctime_ns"], stamp["ino"], stamp["dev"]) == (
        status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino, status.st_dev)
    count_hashes.clear()
    art = load_artifact("kind", "k1", tmp_path)
    assert art.verified_by == "stamp" and count_hashes == [] and torch.equal(art.tensors["x"], torch.ones(8, 4))
    art = load_artifact("kind", "k1", tmp_path, full=True)  # full: hashed although the stamp vouches
    assert art.verified_by == "sha256" and count_hashes == [tensor_file]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_fresh_file_is_not_stamped_within_the_racy_window(tmp_path):
    """A change made right after the stamp, within the same tick of the file system's clock, could keep the
    recorded ctime: a file changed less than STAMP_RACY_S ago is hashed but not stamped.
    """
    folder = _save(tmp_path)
    assert load_artifact("kind", "k1", tmp_path).verified_by == "sha256"
    assert not (folder / "verified.json").exists()
    _flip(folder / "tensors.safetensors", -3)
    with pytest.raises(CorruptArtifactError, match="does not match its recorded checksum"):
        load_artifact("kind", "k1", tmp_path)


def test_a_large_file_is_stamped_when_saved(tmp_path, monkeypatch):
    """When hashing took longer than the rest of the racy window, the save waits it out and stamps: a read-only store
    serves even its first hit without hashing.
    """
    real = artifacts.file_sha256

    def slow(path):  # hashing "a large file" takes longer than the window
        time.sleep(2 * RACY_S)
        return real(path)

    monkeypatch.setattr(artifacts, "STAMP_RACY_S", RACY_S)
    monkeypatch.setattr(artifacts, "file_sha256", slow)
    folder = _save(tmp_path)
    assert (folder / "verified.json").is_file()
    monkeypatch.setattr(artifacts, "file_sha256", lambda path: pytest.fail("hashed despite the save's stamp"))
    assert load_artifact("kind", "k1", tmp_path).verified_by == "stamp"


def test_same_size_edit_with_the_mtime_restored_is_detected(tmp_path, short_racy_window):
    folder = _stamped(tmp_path)
    tensor_file = folder / "tensors.safetensors"
    before = tensor_file.stat()
    time.sleep(2 * RACY_S)
    with open(tensor_file, "r+b") as handle:  # in place: same inode, same size
        handle.seek(-3, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-3, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.utime(tensor_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = tensor_file.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    with pytest.raises(CorruptArtifactError, match="does not match its recorded checksum"):
        load_artifact("kind", "k1", tmp_path)
    assert not (folder / "verified.json").exists()  # a stamp never outlives a failed check


def test_a_replaced_file_is_hashed_again(tmp_path, short_racy_window, count_hashes):
    """The same bytes under another inode (a copy, a restore from a backup that keeps the mtime)."""
    folder = _stamped(tmp_path)
    tensor_file = folder / "tensors.safetensors"
    shutil.copy2(tensor_file, folder / "copy")
    os.replace(folder / "copy", tensor_file)
    count_hashes.clear()
    assert load_artifact("kind", "k1", tmp_path).verified_by == "sha256" and count_hashes == [tensor_file]


@pytest.mark.parametrize("edit", ["sha256", "size", "mtime_ns", "ctime_ns", "ino", "dev", "format", "file",
                                  "checksum", "not JSON", "a list", "not UTF-8", "copied from another artifact"])
def test_an_edited_stamp_is_not_trusted_and_is_renewed(tmp_path, short_racy_window, count_hashes, edit):
    folder = _stamped(tmp_path)
    stamp = _stamp(folder)
    if edit == "checksum":  # a value edited without its checksum
        (folder / "verified.json").write_text(json.dumps({**stamp, "sha256": "0" * 64}))
    elif edit == "not JSON":
        (folder / "verified.json").write_text("{not json")
    elif edit == "a list":
        (folder / "verified.json").write_text("[1, 2]")
    elif edit == "not UTF-8":
        (folder / "verified.json").write_bytes(b"\xff\xfe{}")
    elif edit == "copied from another artifact":  # another file (inode) of the same content
        other = _stamped(tmp_path, "k2")
        shutil.copy(other / "verified.json", folder / "verified.json")
        assert _stamp(folder)["sha256"] == stamp["sha256"]
    else:  # a stamp rewritten with a consistent checksum but one value changed
        value = stamp[edit]
        stamp[edit] = "f" * 64 if edit == "sha256" else "other.bin" if edit == "file" else value + 1
        _write_stamp(folder, stamp)
    count_hashes.clear()
    assert load_artifact("kind", "k1", tmp_path).verified_by == "sha256"
    assert count_hashes == [folder / "tensors.safetensors"]
    count_hashes.clear()
    assert load_artifact("kind", "k1", tmp_path).verified_by == "stamp" and count_hashes == []  # renewed


def test_a_stamp_cannot_vouch_for_another_checksum_than_meta(tmp_path, short_racy_window):
    """A tensor file swapped together with a stamp that vouches for it: meta.json's checksum decides."""
    folder = _stamped(tmp_path)
    _flip(folder / "tensors.safetensors", -3)
    status = (folder / "tensors.safetensors").stat()
    _write_stamp(folder, {**_stamp(folder), "sha256": artifacts.file_sha256(folder / "tensors.safetensors"),
                          "size": status.st_size, "mtime_ns": status.st_mtime_ns, "ctime_ns": status.st_ctime_ns})
    with pytest.raises(CorruptArtifactError, match="does not match its recorded checksum"):
        load_artifact("kind", "k1", tmp_path)


def test_damage_below_the_file_system_needs_a_full_check(tmp_path, short_racy_window):
    """Bit rot leaves the stat signature as it was: simulated by a stamp rewritten to the damaged file's signature.
    A stamped load cannot see it (documented); ``full=True`` (``mmlib verify``) does, and drops the stamp, so that
    every later load sees it too.
    """
    folder = _stamped(tmp_path)
    _flip(folder / "tensors.safetensors", -3)
    status = (folder / "tensors.safetensors").stat()
    _write_stamp(folder, {**_stamp(folder), "size": status.st_size, "mtime_ns": status.st_mtime_ns,
                          "ctime_ns": status.st_ctime_ns})
    assert load_artifact("kind", "k1", tmp_path).verified_by == "stamp"
    with pytest.raises(CorruptArtifactError, match="does not match its recorded checksum"):
        load_artifact("kind", "k1", tmp_path, full=True)
    with pytest.raises(CorruptArtifactError, match="does not match its recorded checksum"):
        load_artifact("kind", "k1", tmp_path)


def _refuse_writes_under(monkeypatch, folder: Path) -> None:
    """Make writes and renames under ``folder`` fail as on a read-only file system (root ignores permissions)."""
    real_open, real_replace = Path.open, os.replace

    def inside(path) -> bool:
        return Path(path).resolve().is_relative_to(folder.resolve())

    def read_only_open(self, mode="r", *args, **kwargs):
        if inside(self) and any(c in mode for c in "wax+"):
            raise OSError(30, "Read-only file system", str(self))
        return real_open(self, mode, *args, **kwargs)

    def read_only_replace(src, dst, *args, **kwargs):
        if inside(src) or inside(dst):
            raise OSError(30, "Read-only file system", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(Path, "open", read_only_open)
    monkeypatch.setattr(os, "replace", read_only_replace)


def test_a_read_only_folder_is_hashed_on_every_load(tmp_path, short_racy_window, monkeypatch, count_hashes):
    folder = _save(tmp_path)
    time.sleep(2 * RACY_S)
    _refuse_writes_under(monkeypatch, tmp_path)
    with pytest.raises(OSError, match="Read-only"):
        (folder / "probe").write_text("x")
    for _ in range(2):
        count_hashes.clear()
        art = load_artifact("kind", "k1", tmp_path)
        assert art.verified_by == "sha256" and count_hashes and torch.equal(art.tensors["x"], torch.ones(8, 4))
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "tensors.safetensors"]  # no temporary left


def test_a_read_only_folder_serves_its_stamp(tmp_path, short_racy_window, monkeypatch, count_hashes):
    folder = _stamped(tmp_path)
    _refuse_writes_under(monkeypatch, tmp_path)
    count_hashes.clear()
    assert load_artifact("kind", "k1", tmp_path).verified_by == "stamp" and count_hashes == []
    assert load_or_compute("kind", "k1", lambda: pytest.fail("recomputed"), root=tmp_path).meta["n"] == 8
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "tensors.safetensors", "verified.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_a_read_only_folder_by_permissions(tmp_path, short_racy_window):
    folder = _save(tmp_path)
    time.sleep(2 * RACY_S)
    folder.chmod(0o555)
    try:
        assert load_artifact("kind", "k1", tmp_path).verified_by == "sha256"
        assert load_artifact("kind", "k1", tmp_path).verified_by == "sha256"
        assert not (folder / "verified.json").exists()
    finally:
        folder.chmod(0o755)


def test_saving_over_a_stamped_artifact_replaces_it_whole(tmp_path, short_racy_window):
    folder = _stamped(tmp_path)
    (folder / f".verified.json.{artifacts._HOST}.{os.getpid()}.{'2' * 32}.tmp").write_text("a reader's stamp")
    save_artifact("kind", "k1", {"x": torch.full((8, 4), 3.0)}, {"n": 8}, root=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "tensors.safetensors"]
    assert sorted(p.name for p in (tmp_path / "kind").iterdir()) == ["k1"]  # the old folder is gone, not set aside
    assert torch.equal(load_artifact("kind", "k1", tmp_path).tensors["x"], torch.full((8, 4), 3.0))


def test_the_file_mapped_is_the_file_verified(tmp_path, monkeypatch):
    """A file replaced between its check and its mapping is checked again (once; then it is refused)."""
    folder = _save(tmp_path)
    real = artifacts.read_tensors
    maps: list[Path] = []

    def replace_then_map(path):  # another writer renames an identical copy over the file just checked
        maps.append(path)
        if len(maps) <= replacements:
            shutil.copy2(path, folder / "copy")
            os.replace(folder / "copy", path)
        return real(path)

    monkeypatch.setattr(artifacts, "read_tensors", replace_then_map)
    replacements = 1
    assert torch.equal(load_artifact("kind", "k1", tmp_path).tensors["x"], torch.ones(8, 4)) and len(maps) == 2
    maps.clear()
    replacements = 2
    with pytest.raises(CorruptArtifactError, match="kept changing while it was being loaded"):
        load_artifact("kind", "k1", tmp_path)
