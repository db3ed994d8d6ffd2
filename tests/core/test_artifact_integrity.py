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
