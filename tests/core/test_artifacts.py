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




def test_code_version_covers_the_import_closure(tmp_path, monkeypatch):
    import mmlib.core.artifacts as artifacts
    from mmlib.core.imports import import_closure, module_file

    closure = import_closure("mmlib.models.training")
    # the tiny architecture and the world it trains on are part of what produces a trained model
    assert {"mmlib.models.clip", "mmlib.data.world", "mmlib.core.artifacts"} <= closure
    assert "mmlib.companions.splice" not in closure
    artifacts.code_version.cache_clear()
    before = artifacts.code_version("mmlib.models.training")
    edited = tmp_path / "clip.py"
    edited.write_bytes(module_file("mmlib.models.clip").read_bytes() + b"\n# an edit of the architecture\n")
    monkeypatch.setattr(artifacts, "module_file",
                        lambda name: edited if name == "mmlib.models.clip" else module_file(name))
    artifacts.code_version.cache_clear()
    try:
        assert artifacts.code_version("mmlib.models.training") != before
        assert artifacts.code_version("mmlib.companions.splice") == artifacts.code_version("mmlib.companions.splice")
    finally:
        artifacts.code_version.cache_clear()
    with pytest.raises(ValueError, match="not a module of the mmlib package"):
        artifacts.code_version("mmlib.nothing_here")


def test_trained_keys_depend_on_the_thread_count():
    from mmlib.data.world import WorldConfig, generate_world
    from mmlib.models.training import TrainConfig, model_key

    world = generate_world(WorldConfig(n_train=8, n_val=0, n_test=0))
    one, two = TrainConfig(threads=1), TrainConfig(threads=2)
    from mmlib.models.clip import TinyClipArch

    assert model_key(world, TinyClipArch(), one) != model_key(world, TinyClipArch(), two)
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(threads=0)
