"""Feature-group removal on a tiny exact feature map, against hand-computed accuracies and random removal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlib.analysis.categories import random_feature_mask
from mmlib.case_studies.removal import RemovalData, group_removal, remove_features


class SignSplit:
    """Identity with ReLU: ``h = [ReLU(z), ReLU(-z)]`` (K = 2d), decoded exactly by ``h[:, :d] - h[:, d:]``."""

    def __init__(self, has_decoder: bool = True) -> None:
        self.has_decoder = has_decoder

    def encode(self, z, modality):
        return torch.cat([torch.relu(z), torch.relu(-z)], 1)

    def decode(self, h, modality):
        d = h.shape[1] // 2
        return h[:, :d] - h[:, d:]


# Features: 0 = +dim0, 1 = +dim1, 2 = -dim0, 3 = -dim1.
DATA = RemovalData(image_emb=torch.tensor([[2.0, 0.5], [0.5, 2.0]]),
                   text_emb=torch.tensor([[1.5, -0.2], [0.2, 1.5]]),
                   class_emb=torch.tensor([[1.0, 0.0], [0.0, 1.0]]), labels=np.array([0, 1]))
GROUP = np.array([True, False, False, False])


def test_remove_features_decodes_or_returns_features():
    z = torch.tensor([[1.0, -2.0]])
    torch.testing.assert_close(remove_features(SignSplit(), z, "image", np.zeros(4, bool)), z)
    torch.testing.assert_close(remove_features(SignSplit(), z, "image", GROUP), torch.tensor([[0.0, -2.0]]))
    torch.testing.assert_close(remove_features(SignSplit(False), z, "image", np.array([0, 0, 0, 1], bool)),
                               torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("has_decoder", [True, False])
def test_group_removal_hand_computed(has_decoder):
    # Removing +dim0: image 0 -> (0, .5) and class 0 -> 0: image 0 is misclassified and retrieves caption 1.
    # Random single features: +dim1 breaks the same amount, -dim0 and -dim1 break nothing.
    report = group_removal(SignSplit(has_decoder), DATA, {"g": GROUP}, n_random=400, seed=0)
    table = report.table.set_index("metric")
    assert set(table.index) == {"zero_shot", "recall@1"}
    for metric in ("zero_shot", "recall@1"):
        row = table.loc[metric]
        assert (row["original"], row["base"], row["removed"], row["drop"]) == (1.0, 1.0, 0.5, 0.5)
        assert row.n_removed == 1 and row.n_random == 400
        assert row.random_drop_mean == pytest.approx(0.25, abs=0.06)
        assert row.p_greater == pytest.approx(0.5, abs=0.06) and row.p_less == 1.0
        assert (row.random_drop_low, row.random_drop_high) == (0.0, 0.5)
    drops = report.random_drops
    assert len(drops) == 800 and set(drops["drop"]) == {0.0, 0.5}
    again = group_removal(SignSplit(has_decoder), DATA, {"g": GROUP}, n_random=400, seed=0)
    assert again.random_drops["drop"].equals(drops["drop"])


def test_random_draws_only_from_alive_features():
    alive = np.array([True, False, True, False])   # random removals can only take +dim0 or -dim0
    row = group_removal(SignSplit(), DATA, {"g": GROUP}, alive=alive, n_random=200).table.iloc[0]
    assert row.random_drop_mean == pytest.approx(0.25, abs=0.08)


def test_only_retrieval_or_only_zero_shot():
    only_retrieval = RemovalData(image_emb=DATA.image_emb, text_emb=DATA.text_emb)
    assert group_removal(SignSplit(), only_retrieval, {"g": GROUP}, n_random=5).table.metric.tolist() == ["recall@1"]


def test_errors():
    with pytest.raises(ValueError, match="is empty"):
        group_removal(SignSplit(), DATA, {"g": np.zeros(4, bool)})
    with pytest.raises(ValueError, match="mask of shape"):
        group_removal(SignSplit(), DATA, {"g": np.ones(3, bool)})
    with pytest.raises(ValueError, match="boolean"):
        group_removal(SignSplit(), DATA, {"g": np.array([1, 0, 0, 0])})
    with pytest.raises(ValueError, match="only 1 are alive"):
        group_removal(SignSplit(), DATA, {"g": np.array([1, 1, 0, 0], bool)}, alive=GROUP)
    with pytest.raises(ValueError, match="no groups"):
        group_removal(SignSplit(), DATA, {})
    with pytest.raises(ValueError, match="nothing to measure"):
        RemovalData(image_emb=DATA.image_emb)
    with pytest.raises(ValueError, match="both class_emb and labels"):
        RemovalData(image_emb=DATA.image_emb, class_emb=DATA.class_emb)
    with pytest.raises(ValueError, match="paired captions"):
        RemovalData(image_emb=DATA.image_emb, text_emb=DATA.text_emb[:1])


def test_random_feature_mask_draws_k_alive_features_reproducibly():
    alive_idx = np.array([1, 3, 4, 8])
    mask = random_feature_mask(np.random.default_rng([0, 2]), alive_idx, 3, 10)
    assert mask.shape == (10,) and mask.dtype == bool and mask.sum() == 3
    assert set(np.flatnonzero(mask)) <= set(alive_idx.tolist())
    # the same generator state gives the same set (the draw every chapter's random control relies on)
    expected = np.zeros(10, bool)
    expected[np.random.default_rng([0, 2]).choice(alive_idx, size=3, replace=False)] = True
    assert np.array_equal(mask, expected)
    with pytest.raises(ValueError):
        random_feature_mask(np.random.default_rng(0), alive_idx, 5, 10)  # more than alive
