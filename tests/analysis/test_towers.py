"""The tower feature maps: block-wise stacking of the towers and the per-factor carrier table."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmlib.analysis.categories import categorise
from mmlib.analysis.mds import modality_dominance
from mmlib.analysis.planted_truth import FactorMatch
from mmlib.analysis.towers import factor_columns, stack_towers, tower_factor_row, tower_sentence


@dataclasses.dataclass
class Towers:
    image_tower: torch.Tensor | None
    text_tower: torch.Tensor | None


def test_stack_towers_puts_each_tower_in_its_own_block():
    e = Towers(torch.arange(6.0).reshape(2, 3), -torch.arange(1.0, 5.0).reshape(2, 2))
    image, text = stack_towers(e)
    assert image.shape == text.shape == (2, 5) and image.dtype == torch.float32
    torch.testing.assert_close(image, torch.tensor([[0.0, 1, 2, 0, 0], [3, 4, 5, 0, 0]]))
    torch.testing.assert_close(text, torch.tensor([[0.0, 0, 0, -1, -2], [0, 0, 0, -3, -4]]))
    with pytest.raises(ValueError, match="towers=True"):
        stack_towers(Towers(None, e.text_tower))
    with pytest.raises(ValueError, match="rows"):
        stack_towers(Towers(e.image_tower, e.text_tower[:1]))


def _match(scores, factors=("position=a", "position=b", "owner=x", "shape=c")):
    scores = np.asarray(scores, dtype=float)
    best = scores.argmax(1)
    return FactorMatch(factors=factors, scores=scores, best_factor=np.asarray(factors)[best],
                       best_score=scores.max(1), metric="nmi", binarise="active")


def test_tower_factor_row_counts_alive_carriers():
    # tower features: 0 and 1 carry position (one dead), 2 carries owner, 3 carries nothing
    tower = _match([[0.3, 0.1, 0, 0], [0.0, 0.4, 0, 0], [0, 0, 0.2, 0], [0.01, 0, 0.01, 0.02], [0.1, 0, 0, 0]])
    scores = np.array([0.99, np.nan, 0.0, 0.5, 0.95])
    mds = modality_dominance(torch.tensor([[1.0, 0, 0, 1, 1]] * 2), torch.tensor([[0.01, 0, 1, 1, 0.05]] * 2))
    np.testing.assert_allclose(mds.scores[~np.isnan(scores)], scores[~np.isnan(scores)], atol=0.01)
    cats = categorise(mds, "fixed")
    joint = _match([[0.01, 0.02, 0.0, 0.5]])
    ideal = {"position=a": 1.0, "position=b": 1.0, "owner=x": 0.0, "shape=c": 0.5}
    row = tower_factor_row("position", tower, mds, cats, joint, ideal, 0.05)
    assert row["tower_features"] == 2 and row["ideal_mds"] == 1.0  # features 0 and 4; feature 1 is dead
    assert row["tower_best_nmi"] == 0.4 and row["joint_best_nmi"] == 0.02
    assert row["share_ImgD"] == 1.0 and row["share_TextD"] == 0.0
    assert row["median_mds"] == pytest.approx(np.median(mds.scores[[0, 4]]))
    owner = tower_factor_row("owner", tower, mds, cats, joint, ideal, 0.05)
    assert owner["tower_features"] == 1 and owner["share_TextD"] == 1.0
    none = tower_factor_row("shape", tower, mds, cats, joint, ideal, 0.05)
    assert none["tower_features"] == 0 and np.isnan(none["median_mds"]) and np.isnan(none["share_ImgD"])
    assert factor_columns(tower, "position") == [0, 1]
    with pytest.raises(KeyError, match="mood"):
        factor_columns(tower, "mood")
    text = tower_sentence({**row, "model": "CLIP"}, 0.05)
    assert text.startswith("**CLIP, position** (ideal MDS 1): best NMI 0.020 in the joint space, 0.400 on the towers")
    assert "2 tower features carry it" in text and "100% ImgD / 0% TextD." in text
    assert tower_sentence({**none, "model": "CLIP"}, 0.05).endswith(
        "no tower feature reaches NMI 0.05: the SAE does not isolate it.")
