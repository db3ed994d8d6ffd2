"""Which category moves: the per-feature scale and the category shift against random sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlib.case_studies.adversarial.shift import category_shift, feature_scale


# ------------------------------------------------------------------------------------ category shift
def test_category_shift_finds_the_group_that_moved():
    rng = np.random.default_rng(0)
    h = torch.from_numpy(rng.random((50, 6))).float()
    adv = h.clone()
    adv[:, :2] += 1.0  # only features 0 and 1 move
    groups = {"moved": np.array([1, 1, 0, 0, 0, 0], bool), "still": np.array([0, 0, 1, 1, 0, 0], bool)}
    t = category_shift(h, adv, groups, n_random=50).set_index("group")
    assert t.loc["still", "change"] == 0.0
    expected = float((1.0 / h[:, :2].std(0)).mean())  # |dh| / s_k, averaged over the group
    assert t.loc["moved", "change"] == pytest.approx(expected, rel=1e-5)
    assert t.loc["moved", "ratio"] > 1 and t.loc["moved", "p_greater"] < 0.05
    assert t.loc["moved", "ci_low"] - 1e-5 <= t.loc["moved", "change"] <= t.loc["moved", "ci_high"] + 1e-5
    rel = category_shift(h, adv, groups, n_random=10, normalise="relative").set_index("group")
    assert rel.loc["moved", "change"] == pytest.approx(float((2.0 / h[:, :2].sum(1)).mean()), rel=1e-5)


def test_category_shift_bad_inputs():
    h = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="group 'ImgD' is empty"):
        category_shift(h, h, {"ImgD": np.zeros(4, bool)})
    with pytest.raises(ValueError, match="no feature groups"):
        category_shift(h, h, {})
    with pytest.raises(ValueError, match="same"):
        category_shift(h, torch.zeros(3, 5), {"a": np.ones(4, bool)})
    with pytest.raises(ValueError, match="unknown normalise"):
        category_shift(h, h, {"a": np.ones(4, bool)}, normalise="max")


def test_feature_scale_marks_constant_features():
    s = feature_scale(torch.tensor([[1.0, 2.0], [1.0, 4.0]]))
    assert torch.isinf(s[0]) and s[1] == pytest.approx(np.sqrt(2.0))
