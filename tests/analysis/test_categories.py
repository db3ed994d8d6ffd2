"""ImgD / TextD / CrossD rules, class sizes, rule agreement, re-running analyses under each rule, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlib.analysis.categories import (
    CategoryRule,
    categorise,
    class_sizes,
    parse_rule,
    rule_agreement,
    rule_grid,
    under_each_rule,
)
from mmlib.analysis.mds import modality_dominance

# mean 0.5, population std sqrt(0.68 / 6) ~ 0.337: mu±sigma = (0.163, 0.837), mu±sigma/2 = (0.332, 0.668)
SCORES = np.array([0.0, 0.2, 0.5, 0.5, 0.8, 1.0, np.nan])
SIGMA = np.sqrt(0.68 / 6)


def test_sigma_rule_hand_computed():
    cats = categorise(SCORES)
    assert cats.low == pytest.approx(0.5 - SIGMA) and cats.high == pytest.approx(0.5 + SIGMA)
    assert cats.labels.tolist() == ["TextD", "CrossD", "CrossD", "CrossD", "CrossD", "ImgD", "dead"]
    assert cats.sizes() == {"ImgD": 1, "TextD": 1, "CrossD": 4, "dead": 1, "rare": 0}
    assert cats.mask("ImgD").tolist() == [False, False, False, False, False, True, False]
    assert cats.alive.sum() == 6 and cats.rule.name == "mu±1σ"
    narrow = categorise(SCORES, "sigma:0.5")
    assert narrow.labels.tolist() == ["TextD", "TextD", "CrossD", "CrossD", "ImgD", "ImgD", "dead"]
    assert categorise(SCORES, "sigma:1.5").sizes()["CrossD"] == 6  # (-0.005, 1.005)


def test_fixed_rule_is_strict():
    cats = categorise(np.array([0.39, 0.4, 0.6, 0.61]), "fixed")
    assert cats.labels.tolist() == ["TextD", "CrossD", "CrossD", "ImgD"]
    assert (cats.low, cats.high) == (0.4, 0.6)
    assert categorise(np.array([0.25, 0.75]), "fixed:0.7/0.3").labels.tolist() == ["TextD", "ImgD"]


def test_accepts_an_mds_result():
    a_i = np.array([[1.0, 0.0, 1.0, 0.0]])
    a_t = np.array([[0.0, 1.0, 1.0, 0.0]])
    cats = categorise(modality_dominance(a_i, a_t), "fixed")
    assert cats.labels.tolist() == ["ImgD", "TextD", "CrossD", "dead"]
    assert list(cats.to_frame().columns) == ["feature", "mds", "category"]


def test_parse_rule_and_grid():
    assert parse_rule("sigma") == CategoryRule()
    assert parse_rule("sigma:0.5") == CategoryRule("sigma", k=0.5)
    assert parse_rule("fixed:0.8/0.2") == CategoryRule("fixed", high=0.8, low=0.2)
    assert [r.name for r in rule_grid()] == ["mu±0.5σ", "mu±1σ", "mu±1.5σ", "fixed 0.6/0.4", "fixed 0.7/0.3",
                                             "fixed 0.8/0.2"]


def test_class_sizes_table():
    table = class_sizes(SCORES, ["sigma", "fixed"])
    assert table["rule"].tolist() == ["mu±1σ", "fixed 0.6/0.4"]
    assert table.loc[1, ["n_ImgD", "n_TextD", "n_CrossD", "n_dead"]].tolist() == [2, 2, 2, 1]
    assert table.loc[0, "share_ImgD"] == pytest.approx(1 / 6)
    assert len(class_sizes(SCORES)) == 6


def test_rule_agreement_hand_computed():
    # sigma:1 -> T C C C C I ; sigma:0.5 -> T T C C I I : 4 of 6 agree
    table = rule_agreement(SCORES, ["sigma", "sigma:0.5"])
    assert len(table) == 4
    off = table[(table.rule_a == "mu±1σ") & (table.rule_b == "mu±0.5σ")].iloc[0]
    assert off.agreement == pytest.approx(4 / 6)
    assert off.jaccard_ImgD == pytest.approx(1 / 2) and off.jaccard_CrossD == pytest.approx(2 / 4)
    diag = table[table.rule_a == table.rule_b]
    assert (diag.agreement == 1).all() and np.allclose(diag.kappa, 1)


def test_under_each_rule_tabulates_any_result():
    n_img = under_each_rule(SCORES, lambda c: c.sizes()["ImgD"], ["sigma", "sigma:0.5"])
    assert n_img["value"].tolist() == [1, 2] and n_img["rule"].tolist() == ["mu±1σ", "mu±0.5σ"]
    as_dict = under_each_rule(SCORES, lambda c: {"low": c.low}, ["fixed"])
    assert as_dict.columns.tolist() == ["rule", "low"]
    frame = under_each_rule(SCORES, lambda c: c.to_frame().head(2), ["fixed", "sigma"])
    assert len(frame) == 4 and frame.columns[0] == "rule"


def test_errors():
    with pytest.raises(ValueError, match="empty"):
        categorise(np.array([]))
    with pytest.raises(ValueError, match="all 2 features are dead"):
        categorise(np.array([np.nan, np.nan]))
    with pytest.raises(ValueError, match="unknown categorisation rule"):
        categorise(SCORES, "median")
    with pytest.raises(ValueError, match="unknown categorisation rule"):
        CategoryRule("quantile")
    with pytest.raises(ValueError, match="cannot parse"):
        parse_rule("fixed:0.7")
    with pytest.raises(ValueError, match="low <= high"):
        CategoryRule("fixed", high=0.3, low=0.7)
    with pytest.raises(ValueError, match="unknown class"):
        categorise(SCORES).mask("Other")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.sampled_from(["sigma", "sigma:0.5", "fixed"]))
def test_partition_and_mirror_symmetry(values, rule):
    scores = np.array(values)
    cats = categorise(scores, rule)
    assert sum(cats.sizes()[c] for c in ("ImgD", "TextD", "CrossD")) == len(scores)
    mirrored = categorise(1 - scores, rule)  # swapping modalities swaps ImgD and TextD
    swap = {"ImgD": "TextD", "TextD": "ImgD", "CrossD": "CrossD"}
    # equal up to floating-point ties at the thresholds
    near = (np.abs(scores - cats.low) < 1e-9) | (np.abs(scores - cats.high) < 1e-9)
    assert all(swap[a] == b for a, b, n in zip(cats.labels, mirrored.labels, near) if not n)


# 4 pairs x 4 features: 0 fires on one pair (image), 1 on four (text only), 2 on four (image only), 3 on four
# (half and half): support [1, 4, 4, 4], MDS [1, 0, 1, 0.5]
MS_I = np.array([[1.0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]])
MS_T = np.array([[0.0, 1, 0, 1], [0, 1, 0, 1], [0, 1, 0, 1], [0, 1, 0, 1]])


def test_min_support_hand_computed():
    mds = modality_dominance(MS_I, MS_T)
    # min_support 0: mu = 0.625, sigma = sqrt(0.6875 / 4) = 0.4146 -> (0.210, 1.040): no ImgD, 1 TextD
    every = categorise(mds)
    assert every.labels.tolist() == ["CrossD", "TextD", "CrossD", "CrossD"]
    assert every.high == pytest.approx(0.625 + np.sqrt(0.6875 / 4)) and every.min_support == 0
    # min_support 2: feature 0 is rare; over [0, 1, 0.5] mu = 0.5, sigma = sqrt(0.5 / 3) = 0.408 -> feature 2 ImgD
    cut = categorise(mds, min_support=2)
    assert cut.labels.tolist() == ["rare", "TextD", "ImgD", "CrossD"]
    assert cut.high == pytest.approx(0.5 + np.sqrt(0.5 / 3)) and cut.min_support == 2
    assert cut.sizes() == {"ImgD": 1, "TextD": 1, "CrossD": 1, "dead": 0, "rare": 1}
    assert cut.alive.tolist() == [False, True, True, True]  # a rare feature takes part in nothing
    assert cut.support.tolist() == [1, 4, 4, 4] and cut.mass.tolist() == [1.0, 4.0, 4.0, 8.0]
    assert categorise(mds, min_support=1).labels.tolist() == every.labels.tolist()
    table = class_sizes(mds, ["sigma"], min_support=2).iloc[0]
    assert (table.n_alive, table.n_rare, table.n_dead, table.min_support, table.n_ImgD) == (3, 1, 0, 2, 1)
    assert categorise(SCORES).support is None and categorise(SCORES).mass is None


def test_min_support_errors():
    mds = modality_dominance(MS_I, MS_T)
    with pytest.raises(ValueError, match="pass the MDSResult, not bare scores"):
        categorise(SCORES, min_support=2)
    with pytest.raises(ValueError, match="no feature fires on at least min_support=5 pairs"):
        categorise(mds, min_support=5)
    with pytest.raises(ValueError, match="non-negative integer"):
        categorise(mds, min_support=-1)
