"""The chapter's evaluation: accuracy under attack and per-image correctness, the aligned feature sets and the first
seed with three categories, the defence table, and the paired accuracy gaps (hand-computed and bootstrap).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import mmlib.case_studies.adversarial as adversarial
from mmlib.analysis.categories import categorise
from mmlib.analysis.zero_shot import zero_shot_predict
from mmlib.case_studies.adversarial.attacks import PGDConfig, image_encoder, zero_shot_attack
from mmlib.case_studies.adversarial.defence import DefenceConfig, TrainedAdapter
from mmlib.case_studies.adversarial.evaluation import (
    GAP_COMPARISONS,
    SELECTIONS,
    accuracy_gap,
    accuracy_under_attack,
    attack_correctness,
    defence_table,
    first_complete_seed,
    robust_gaps,
    selection_masks,
)
from mmlib.core.stats import bootstrap_ci

#: MDS of 10 features under the fixed 0.6/0.4 rule: 3 ImgD, 2 TextD, 3 CrossD, 2 dead.
SCORES = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.5, 0.45, 0.55, np.nan, np.nan])
RULE = "fixed:0.6/0.4"


def test_the_package_re_exports_every_public_name():
    for name in adversarial.__all__:
        assert getattr(adversarial, name) is not None, name
    assert adversarial.zero_shot_attack is zero_shot_attack


# ------------------------------------------------------------------------------------- accuracy under attack
def test_attack_correctness_matches_a_hand_made_attack(tiny_clip, pixels, classes):
    enc, x, cls = image_encoder(tiny_clip), pixels(6), classes(tiny_clip)
    labels = np.array([0, 1, 2, 0, 1, 2])
    config = PGDConfig(eps=0.05, steps=3, seed=4)
    clean, robust = attack_correctness(enc, x, labels, cls, config)
    assert clean.dtype == bool and clean.shape == (6,) and robust.shape == (6,)
    np.testing.assert_array_equal(clean, zero_shot_predict(enc.embed(x), cls).numpy() == labels)
    adv = zero_shot_attack(enc, x, labels, cls, config)
    np.testing.assert_array_equal(robust, zero_shot_predict(enc.embed(adv), cls).numpy() == labels)


def test_accuracy_under_attack_rows_and_budget(tiny_clip, pixels, classes):
    enc, x, cls = image_encoder(tiny_clip), pixels(6), classes(tiny_clip)
    labels = np.array([0, 1, 2, 0, 1, 2])
    table, adv = accuracy_under_attack(enc, x, labels, cls, (0.0, 2 / 255, 8 / 255), steps=2, seed=0)
    assert list(table.eps_255) == [0, 2, 8] and set(adv) == {0.0, 2 / 255, 8 / 255}
    torch.testing.assert_close(adv[0.0], x)
    assert table.max_perturbation_255.iloc[0] == 0.0
    assert (table.max_perturbation_255 <= table.eps * 255 + 1e-4).all()
    clean = zero_shot_predict(enc.embed(x), cls).numpy() == labels
    assert table.accuracy.iloc[0] == pytest.approx(clean.mean())
    assert ((table.ci_low <= table.accuracy) & (table.accuracy <= table.ci_high)).all()


# ------------------------------------------------------------------------------------- feature sets
def test_selection_masks_are_the_categories_all_alive_and_a_textd_sized_random_set():
    cats = categorise(SCORES, RULE)
    masks = selection_masks(cats, seed=3)
    assert tuple(masks) == SELECTIONS
    for g in ("ImgD", "TextD", "CrossD"):
        np.testing.assert_array_equal(masks[g], cats.mask(g))
    np.testing.assert_array_equal(masks["all"], cats.alive)
    assert masks["random"].sum() == cats.mask("TextD").sum() == 2
    assert not (masks["random"] & ~cats.alive).any()
    np.testing.assert_array_equal(masks["random"], selection_masks(cats, seed=3)["random"])
    draws = {tuple(np.flatnonzero(selection_masks(cats, seed=s)["random"])) for s in range(20)}
    assert len(draws) > 1  # the seed matters


def test_first_complete_seed_skips_seeds_with_an_empty_category():
    complete = categorise(SCORES, RULE)
    no_textd = categorise(np.where(SCORES < 0.4, 0.5, SCORES), RULE)
    assert not no_textd.mask("TextD").any()
    assert first_complete_seed({0: no_textd, 1: complete, 2: complete}) == 1
    assert first_complete_seed({5: complete}) == 5
    assert first_complete_seed({0: no_textd}) is None
    assert first_complete_seed({}) is None


def test_defence_table_wilson_intervals_and_training_columns(tiny_clip):
    clean, robust = np.array([1, 1, 1, 0], bool), np.array([1, 0, 0, 0], bool)
    history = {"loss": [1.0] * 12, "align": [float(i) for i in range(12)], "keep": [0.5] * 12}
    trained = TrainedAdapter(image_encoder(tiny_clip), DefenceConfig(), "TextD", 7, history, 12.5)
    table = defence_table({("-", "none"): (clean, robust), ("SAE", "TextD"): (robust, robust)},
                          {("SAE", "TextD"): trained}, {"SAE": 2})
    assert list(table.columns[:8]) == ["map", "selection", "clean", "clean_low", "clean_high", "robust", "robust_low",
                                       "robust_high"]
    none, textd = table.iloc[0], table.iloc[1]
    assert none.clean == 0.75 and none.robust == 0.25 and none.clean_low < 0.75 < none.clean_high
    assert pd.isna(none.seed) and pd.isna(none.n_features) and np.isnan(none.final_align)
    assert textd.seed == 2 and textd.n_features == 7 and textd.train_seconds == 12.5
    assert textd.final_align == pytest.approx(np.mean(range(2, 12))) and textd.final_keep == 0.5


# ------------------------------------------------------------------------------------- paired gaps
def test_accuracy_gap_is_the_margin_over_the_best_other():
    t = np.array([1, 1, 1, 0, 1, 0], bool)  # 4/6
    a = np.array([1, 0, 0, 0, 1, 0], bool)  # 2/6
    b = np.array([1, 1, 0, 1, 0, 0], bool)  # 3/6
    gap, low, high = accuracy_gap(t, a, b, n_boot=200, seed=1)
    assert gap == pytest.approx(4 / 6 - 3 / 6)
    assert (low, high) == bootstrap_ci(lambda x, y, z: float(x.mean() - max(y.mean(), z.mean())), t, a, b,
                                       n_boot=200, seed=1)
    assert low <= gap <= high
    same, lo, hi = accuracy_gap(t, t, n_boot=50)
    assert same == lo == hi == 0.0
    with pytest.raises(ValueError, match="at least one"):
        accuracy_gap(t)


def test_robust_gaps_rows_and_labels():
    rng = np.random.default_rng(0)
    robust = {s: rng.random(40) < p for s, p in zip((*SELECTIONS, "none"), (0.3, 0.6, 0.4, 0.5, 0.35, 0.1))}
    table = robust_gaps(robust, n_boot=100)
    assert list(table.versus) == ["ImgD / CrossD", "ImgD", "CrossD", "all", "random", "no defence"]
    assert len(table) == len(GAP_COMPARISONS)
    row = table.set_index("versus").loc["ImgD / CrossD"]
    assert row.robust_gap == pytest.approx(robust["TextD"].mean() - max(robust["ImgD"].mean(), robust["CrossD"].mean()))
    none = table.set_index("versus").loc["no defence"]
    assert none.robust_gap == pytest.approx(robust["TextD"].mean() - robust["none"].mean())
    with pytest.raises(KeyError, match="none"):
        robust_gaps({s: robust[s] for s in SELECTIONS})
