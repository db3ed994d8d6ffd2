"""Artifact store (atomicity, corruption) and evaluation metrics against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mmlib.core.artifacts import (CorruptArtifactError, artifact_path, load_artifact, load_or_compute, save_artifact,
                             stable_hash)
from mmlib.analysis.zero_shot import modality_gap, proportion_ci, zero_shot_accuracy


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


def test_zero_shot_accuracy_hand_computed():
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    images = torch.tensor([[2.0, 0.1], [0.1, 3.0], [1.0, 0.9], [0.2, 1.0]])
    assert zero_shot_accuracy(images, classes, [0, 1, 1, 1]) == 0.75
    with pytest.raises(ValueError, match="labels"):
        zero_shot_accuracy(images, classes, [0, 1])


def test_proportion_ci():
    low, high = proportion_ci(50, 100)
    assert low < 0.5 < high and high - low == pytest.approx(0.19, abs=0.01)
    assert all(math.isnan(v) for v in proportion_ci(0, 0))


def test_modality_gap_hand_computed():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    txt = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    gap = modality_gap(img, txt)
    assert gap["gap"] == pytest.approx(math.sqrt(2))
    assert gap["cos_matched"] == pytest.approx(0.0) and gap["cos_centroids"] == pytest.approx(0.0)
    same = modality_gap(img, img * 3)
    assert same["gap"] == pytest.approx(0.0) and same["cos_matched"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        modality_gap(img, torch.zeros(3, 2))
