"""Diagnostics of feature maps against hand-computed values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from mmlib.feature_maps.base import FeatureMap
from mmlib.feature_maps.diagnostics import (
    dead_fraction,
    downstream_retention,
    effective_rank,
    fvu,
    l0,
    mean_cosine,
    mse,
    reconstruction_report,
    top_m_purity,
)
from mmlib.feature_maps.raw import RawConfig, RawDims


class IdentityMap(FeatureMap):
    """A map with a perfect decoder: ``h = ReLU(z)`` on the first half, ``ReLU(-z)`` on the second."""

    kind = "identity"
    has_decoder = True

    def __init__(self, dim: int) -> None:
        super().__init__(dim, 2 * dim)

    def _encode(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        return torch.cat([torch.relu(z), torch.relu(-z)], 1)

    def _decode(self, h: torch.Tensor, modality: str) -> torch.Tensor:
        return h[:, :self.input_dim] - h[:, self.input_dim:]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"dim": torch.tensor([self.input_dim])}

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> IdentityMap:
        return cls(int(config["input_dim"]))


def test_mse_and_fvu_hand_values():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    z_hat = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert mse(z, z_hat) == pytest.approx(0.5)                 # (0 + 1) / 2 samples
    assert fvu(z, z_hat) == pytest.approx(0.5)                 # 1 / (1 + 1) around the mean (1, 0)
    assert mse(np.array([[1.0, 2.0]]), np.zeros((1, 2))) == pytest.approx(5.0)
    assert fvu(z, z.mean(0).expand_as(z)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        mse(z, z[:1])


def test_l0_dead_fraction_and_cosine_hand_values():
    h = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    assert l0(h) == pytest.approx(1.0)
    assert dead_fraction(h) == pytest.approx(1 / 3)
    assert l0(h, eps=1.5) == pytest.approx(0.5)
    z, z_hat = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert mean_cosine(z, z_hat) == pytest.approx(0.5)                # cosines 1 and 0
    with pytest.raises(ValueError, match=r"\(n, K\)"):
        l0(torch.ones(3))


def test_effective_rank_hand_values():
    assert effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0]))) == pytest.approx(2.0)
    p = np.array([0.75, 0.25])
    assert effective_rank(np.diag([3.0, 1.0])) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert effective_rank(torch.ones(5, 3)) == pytest.approx(1.0)
    # centring removes the common offset: rank-1 data plus a constant has centred rank 1
    x = torch.outer(torch.arange(5.0), torch.tensor([1.0, 2.0])) + torch.tensor([3.0, -1.0])
    assert effective_rank(x, center=True) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(3, 2)) == 0.0


def test_effective_rank_matches_the_svd_definition():
    """The Gram-matrix route gives the SVD's value on tall and wide matrices, with and without centring."""
    gen = torch.Generator().manual_seed(0)
    for shape in ((40, 7), (7, 40)):
        x = torch.randn(*shape, generator=gen).double() * torch.linspace(0.1, 3.0, shape[1]).double()
        for center in (False, True):
            y = x - x.mean(0) if center else x
            p = torch.linalg.svdvals(y)
            p = p / p.sum()
            assert effective_rank(x, center=center) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-9)


IMAGE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
TEXT = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0]])


def test_reconstruction_report_and_retention_of_a_perfect_map():
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(20, 4, generator=gen)
    text = image + 0.3 * torch.randn(20, 4, generator=gen)
    fmap = IdentityMap(4)
    report = reconstruction_report(fmap, image, text)
    assert list(report.modality) == ["image", "text"]
    assert report.mse.max() == pytest.approx(0.0, abs=1e-10) and report.cosine.min() == pytest.approx(1.0)
    assert report.fvu.max() == pytest.approx(0.0, abs=1e-10)
    assert report.l0.iloc[0] == pytest.approx(4.0)            # each coordinate is active on exactly one side
    classes = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    labels = image[:, :2].argmax(1)
    table = downstream_retention(fmap, image, text, classes, labels).set_index("metric")
    assert list(table.index) == ["zero_shot", "i2t@1", "i2t@5", "t2i@1", "t2i@5"]
    assert table.loc["zero_shot", "original"] == pytest.approx(1.0)
    assert np.allclose(table.retention, 1.0) and set(table.space) == {"reconstruction"}


def test_retention_maps_prompt_sets_row_by_row():
    """Class embeddings ``(c, p, d)`` (several prompts per class) are mapped prompt by prompt, for maps with
    and without a decoder (whose features have another width than ``d``).
    """
    image = torch.tensor([[1.0, 0.1], [0.1, 1.0], [0.9, 0.0]])
    prompts = torch.tensor([[[1.0, 0.0], [0.0, -1.0]], [[0.0, 1.0], [-1.0, 0.0]]])   # (2 classes, 2 prompts, d)
    labels = torch.tensor([0, 1, 0])
    for fmap in (IdentityMap(2), RawDims(2, RawConfig("relu"))):
        table = downstream_retention(fmap, image, image, prompts, labels).set_index("metric")
        assert table.loc["zero_shot", "original"] == pytest.approx(1.0)
        assert table.loc["zero_shot", "mapped"] == pytest.approx(1.0)


def test_retention_of_a_map_without_decoder_uses_features():
    raw = RawDims(2, RawConfig("relu"))
    table = downstream_retention(raw, IMAGE, TEXT).set_index("metric")
    # ReLU leaves these non-negative embeddings unchanged
    assert np.allclose(table.mapped, table.original) and set(table.space) == {"features"}
    report = reconstruction_report(raw, IMAGE, TEXT)
    assert "mse" not in report and report.dead_both.iloc[0] == 0.0


def test_top_m_purity_hand_values():
    acts = torch.tensor([[3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 3.0, 5.0]])
    labels = {"shape": np.array([0, 0, 1, 1]), "color": np.array([0, 1, 0, 1])}
    table = top_m_purity(acts, labels, m=2)
    # feature 0: top-2 samples {0, 1}: shape (0, 0) pure; feature 1: {3, 2}: shape (1, 1) pure
    assert table.purity.tolist()[:2] == [1.0, 1.0] and table.factor.tolist()[:2] == ["shape", "shape"]
    # feature 2 fires on one sample only: fewer than m, not scored
    assert math.isnan(table.purity.iloc[2]) and table.factor.iloc[2] == ""
    assert table.chance.iloc[0] == pytest.approx(0.5)
    table3 = top_m_purity(acts, labels, m=3)
    assert table3.purity.iloc[0] == pytest.approx(2 / 3)       # samples {0, 1, 2}: shape 0, 0, 1
    with pytest.raises(ValueError, match="labels"):
        top_m_purity(acts, {"shape": np.zeros(3)}, m=2)
