"""Kill and resume: an extraction killed with SIGKILL at random points and rerun ends byte-identical to an
uninterrupted run, with no temporary and no resume shard left; a run killed between saving the artifact and
removing its shards is cleaned up by the next run of the key (a cache hit).
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mmlib.models.embed as embed
from mmlib.core.artifacts import load_artifact
from mmlib.core.devices import torch_threads
from mmlib.core.paths import REPO_ROOT
from mmlib.data.corpora import CsvPairs
from mmlib.models.clip import build_tiny_clip, load_tiny_clip, save_tiny_clip
from mmlib.models.embed import EmbedConfig, embed_dataset

N_PAIRS = 160  # batches of 2, shards of 2: 80 shard files, ~20 ms each on one thread
KILLS = 3


class Untouchable:
    """A stand-in model that fails on any use."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) although the result is cached")


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def shard_count(root: Path) -> int:
    return len(list(root.glob("embeddings.parts/*/shard-*.safetensors")))


def start(csv_path: Path, model: Path, root: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "mmlib", "embed", "--csv", str(csv_path), "--tiny-model", str(model),
               "--root", str(root), "--batch-size", "2", "--shard-size", "2", "--device", "cpu", "--no-progress"]
    return subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def kill_after_shards(proc: subprocess.Popen, root: Path, target: int, delay: float, timeout: float = 120) -> int:
    """SIGKILL ``proc`` ``delay`` seconds after ``target`` shard files exist; return the count at the kill."""
    deadline = time.monotonic() + timeout
    while shard_count(root) < target:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the extraction ended (status {proc.returncode}) before {target} shards were on disk; "
                        f"make it slower or kill earlier.\n{err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {target} shards after {timeout} s")
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the process was not killed but ended by itself"
    return shard_count(root)


@pytest.fixture
def corpus(make_csv_corpus, tmp_path, tiny_arch) -> tuple[Path, Path]:
    model = tmp_path / "tiny-model"
    save_tiny_clip(model, build_tiny_clip(tiny_arch, seed=3), tiny_arch)
    return make_csv_corpus(N_PAIRS), model


def test_sigkill_at_random_points_then_resume_is_byte_identical(corpus, tmp_path):
    csv_path, model = corpus
    root = tmp_path / "killed"
    rng = random.Random(15)
    n_shards = N_PAIRS // 2
    targets = sorted(rng.sample(range(4, 2 * n_shards // 3), KILLS))  # within the first 2/3 of the shards
    on_disk = 0
    for target in targets:
        proc = start(csv_path, model, root)
        count = kill_after_shards(proc, root, max(target, on_disk + 1), delay=rng.uniform(0, 0.03))
        assert count >= on_disk, "a rerun lost shards written by an earlier run"
        assert not list(root.glob("embeddings/[!.]*")), "killed after the artifact was saved"
        on_disk = count
    assert 0 < on_disk < n_shards  # really interrupted, really resumable

    proc = start(csv_path, model, root)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    path = Path(out.strip().splitlines()[-1])

    with torch_threads(1):  # as the subprocess (OMP_NUM_THREADS=1); one shard instead of 80
        reference = embed_dataset(load_tiny_clip(model), CsvPairs(csv_path),
                                  EmbedConfig(batch_size=2, shard_size=N_PAIRS, device="cpu"),
                                  root=tmp_path / "reference", progress=False)
    assert path == root / "embeddings" / reference.key
    resumed = load_artifact("embeddings", reference.key, root)
    for name in ("image", "text"):
        assert torch.equal(resumed.tensors[name], getattr(reference, name))
    assert (path / "tensors.safetensors").read_bytes() == (reference.path / "tensors.safetensors").read_bytes()
    assert not temporaries(root), temporaries(root)
    assert not (root / "embeddings.parts").exists()


def test_killed_between_save_and_parts_removal_is_cleaned_by_the_next_run(tiny_clip, synthetic_pairs,
                                                                         artifact_root, monkeypatch):
    ds = synthetic_pairs(6)
    config = EmbedConfig(batch_size=2, shard_size=2, device="cpu")

    def killed(parts: Path) -> None:
        raise KeyboardInterrupt("killed between save_artifact and the removal of the shards")

    real = embed._remove_parts
    monkeypatch.setattr(embed, "_remove_parts", killed)
    with pytest.raises(KeyboardInterrupt):
        embed_dataset(tiny_clip, ds, config, progress=False)
    monkeypatch.setattr(embed, "_remove_parts", real)
    key = embed.embedding_key(tiny_clip, ds, config)
    assert load_artifact("embeddings", key).meta["n"] == 6  # saved ...
    orphan = artifact_root / "embeddings.parts" / f"{key}-s2"
    assert len(list(orphan.iterdir())) == 3  # ... but its shards are still there
    # a resume folder of the same key with another shard size, and one of another key, which must stay
    (artifact_root / "embeddings.parts" / f"{key}-s6").mkdir()
    other = artifact_root / "embeddings.parts" / "0123456789abcdef-s2"
    other.mkdir()

    untouchable = dataclasses.replace(tiny_clip, model=Untouchable())
    hit = embed_dataset(untouchable, ds, dataclasses.replace(config, shard_size=4), progress=False)
    assert hit.key == key
    assert sorted(p.name for p in (artifact_root / "embeddings.parts").iterdir()) == [other.name]
    other.rmdir()
    embed_dataset(untouchable, ds, config, progress=False)
    assert not (artifact_root / "embeddings.parts").exists()  # the empty parent goes too
    assert not temporaries(artifact_root)
