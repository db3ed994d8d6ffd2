"""The artifact store: stable keys, atomic writes, corruption detected and recomputed, code versions."""

from __future__ import annotations

import json

import pytest
import torch

from mmlib.core.artifacts import (
    CorruptArtifactError,
    artifact_path,
    load_artifact,
    load_or_compute,
    save_artifact,
    stable_hash,
)


def test_stable_hash_is_order_and_type_stable():
    assert stable_hash({"a": 1, "b": (1, 2)}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_save_load_and_corruption_recompute(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(4.0)}, {"note": "hi"}

    art = load_or_compute("k", "key1", compute, root=tmp_path)
    assert torch.equal(art.tensors["x"], torch.arange(4.0)) and art.meta["note"] == "hi"
    load_or_compute("k", "key1", compute, root=tmp_path)
    assert len(calls) == 1
    # corrupt the tensor file: detected, warned, recomputed
    (artifact_path("k", "key1", tmp_path) / "tensors.safetensors").write_bytes(b"garbage")
    with pytest.raises(CorruptArtifactError):
        load_artifact("k", "key1", tmp_path)
    with pytest.warns(RuntimeWarning, match="recomputing"):
        load_or_compute("k", "key1", compute, root=tmp_path)
    assert len(calls) == 2
    assert not [p for p in (tmp_path / "k").iterdir() if p.name.startswith(".")]


def test_failed_compute_leaves_nothing(tmp_path):
    def boom():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        load_or_compute("k", "key2", boom, root=tmp_path)
    assert not (tmp_path / "k" / "key2").exists()
    save_artifact("k", "key3", {"x": torch.zeros(1)}, {}, root=tmp_path)
    assert json.loads((tmp_path / "k" / "key3" / "meta.json").read_text())["key"] == "key3"


