"""The modality gap's bootstrap interval and the inputs of chapter 01's probes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlib.analysis.embedding_checks import modality_gap_interval, probe_inputs
from mmlib.analysis.zero_shot import modality_gap
from mmlib.data.embeddings import Embeddings
from mmlib.data.world import WorldConfig, generate_world


def test_gap_interval_brackets_the_gap_and_is_seeded():
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(200, 8, generator=gen) + torch.tensor([2.0] + [0.0] * 7)
    text = torch.randn(200, 8, generator=gen) - torch.tensor([2.0] + [0.0] * 7)
    gap, (low, high) = modality_gap_interval(image, text, n_boot=50, seed=1)
    assert gap == modality_gap(image, text)
    assert low <= gap["gap"] <= high and high - low < 0.5
    assert modality_gap_interval(image, text, n_boot=50, seed=1)[1] == (low, high)
    assert modality_gap_interval(image, text, n_boot=50, seed=2)[1] != (low, high)


def test_gap_interval_of_identical_modalities_is_zero():
    z = torch.randn(30, 4)
    gap, (low, high) = modality_gap_interval(z, z * 2, n_boot=10)
    assert gap["gap"] == pytest.approx(0.0) and low == pytest.approx(0.0) and high == pytest.approx(0.0)
    with pytest.raises(ValueError, match="n_boot"):
        modality_gap_interval(z, z, n_boot=1)


def _embeddings(n: int, towers: bool = True) -> Embeddings:
    gen = torch.Generator().manual_seed(n)
    extra = dict(image_tower=torch.randn(n, 6, generator=gen), text_tower=torch.randn(n, 5, generator=gen)) if towers \
        else {}
    return Embeddings(image=torch.randn(n, 4, generator=gen), text=torch.randn(n, 4, generator=gen), key=f"k{n}",
                      meta={}, **extra)


def test_probe_inputs_subset_and_feature_sets():
    world = generate_world(WorldConfig(n_train=60, n_val=10, n_test=20, seed=1))
    train, test = _embeddings(60), _embeddings(20)
    split, feats = probe_inputs(world, train, test, n_train=25, seed=0)
    assert len(split) == 25 and split.name == "train"
    sub = np.sort(np.random.default_rng(0).choice(60, 25, replace=False))
    assert np.array_equal(split.index, world.indices("train")[sub])
    assert list(feats) == ["image (joint)", "image tower", "text (joint)", "text tower"]
    assert torch.equal(feats["image tower"][0], train.image_tower[sub]) and feats["text (joint)"][1] is test.text
    assert feats["text tower"][0].shape == (25, 5)
    with pytest.raises(ValueError, match="towers"):
        probe_inputs(world, _embeddings(60, towers=False), test, n_train=10)
    with pytest.raises(ValueError, match="n_train"):
        probe_inputs(world, train, test, n_train=61)
