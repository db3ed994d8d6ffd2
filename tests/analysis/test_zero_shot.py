"""Zero-shot accuracy and the modality gap against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mmlib.analysis.zero_shot import modality_gap, zero_shot_accuracy


def test_zero_shot_accuracy_hand_computed():
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    images = torch.tensor([[2.0, 0.1], [0.1, 3.0], [1.0, 0.9], [0.2, 1.0]])
    assert zero_shot_accuracy(images, classes, [0, 1, 1, 1]) == 0.75
    with pytest.raises(ValueError, match="labels"):
        zero_shot_accuracy(images, classes, [0, 1])



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
