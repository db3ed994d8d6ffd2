"""Calibrated categories: the swap test against a brute-force swap, the pairing test's veto of split copies, BH, the
ImgD/TextD symmetry, determinism and errors.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlib.analysis.calibrated_categories import (
    BLOCK_ENTRIES,
    CalibratedCategories,
    PermutationRule,
    benjamini_hochberg,
    calibrated_categories,
)
from mmlib.analysis.categories import Categories
from mmlib.analysis.mds import modality_dominance
from mmlib.analysis.planted_truth import class_accuracy
from mmlib.core.errors import ConfigError, InputError, NonFiniteError

N = 400
FAST = PermutationRule(n_perm=400, n_pairings=50)


def _world(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Eight features over N pairs: image only, text only, exchangeable (iid sides), equal sides, shared but leaning
    to the image side, dead, and a split copy (feature 6 fires on the images, feature 7 on the captions of the same
    pairs).
    """
    rng = np.random.default_rng(seed)
    a_i, a_t = np.zeros((N, 8)), np.zeros((N, 8))
    on = rng.random((N, 4)) < 0.3
    a_i[:, 0] = on[:, 0] * rng.uniform(0.5, 1.5, N)
    a_t[:, 1] = on[:, 1] * rng.uniform(0.5, 1.5, N)
    a_i[:, 2], a_t[:, 2] = on[:, 2] * rng.uniform(0, 1, N), on[:, 2] * rng.uniform(0, 1, N)
    a_i[:, 3] = a_t[:, 3] = on[:, 3] * 0.7
    a_i[:, 4], a_t[:, 4] = 1.2 * on[:, 3], 0.8 * on[:, 3]
    shared = (rng.random(N) < 0.3) * rng.uniform(0.5, 1.5, N)
    a_i[:, 6], a_t[:, 7] = shared, shared  # feature 5 stays dead
    return a_i, a_t


def test_known_answers():
    a_i, a_t = _world()
    cats = calibrated_categories(a_i, a_t, FAST)
    assert isinstance(cats, Categories) and isinstance(cats, CalibratedCategories)
    assert cats.labels.tolist() == ["ImgD", "TextD", "CrossD", "CrossD", "CrossD", "dead", "CrossD", "CrossD"]
    smallest = 1 / (1 + FAST.n_perm)  # ~120 one-sided pairs: no swap reaches the observed MDS of 1
    assert cats.p_image[0] == smallest and cats.p_text[1] == smallest and cats.p_image[6] == smallest
    assert cats.p_image[3] == cats.p_text[3] == 1.0  # r = 1/2 on every pair: every swap ties
    assert np.isnan(cats.scores[5]) and np.isnan(cats.p_image[5]) and np.isnan(cats.q[5])
    assert cats.discoveries()[[0, 1, 4, 6, 7]].all() and not cats.discoveries()[[2, 3]].any()
    # the shared feature and the split copies are vetoed by the pairing test, the modality-specific features are not
    assert cats.vetoed().tolist() == [False] * 4 + [True, False, True, True]
    assert cats.p_pairing[[4, 6, 7]] == pytest.approx([1 / (1 + FAST.n_pairings)] * 3)
    assert cats.p_pairing[0] > 0.05 and cats.p_pairing[1] > 0.05
    assert np.isnan(cats.p_pairing[[2, 3, 5]]).all()  # no discovery, no pairing test
    # the pairing statistic: 1 for the split copies, the brute-force largest |r| with the other side elsewhere
    assert cats.pairing_r[[6, 7]] == pytest.approx([1.0, 1.0], abs=1e-5)
    for k, own, other in ((0, a_i, a_t), (1, a_t, a_i), (4, a_i, a_t)):
        r = [abs(np.corrcoef(own[:, k], other[:, j])[0, 1]) for j in range(8) if other[:, j].std() > 0]
        assert cats.pairing_r[k] == pytest.approx(max(r), abs=1e-5)
    assert np.isnan(cats.pairing_r[[2, 3, 5]]).all()
    assert np.isnan(cats.low) and cats.rule.name == "swap + pairing test (FDR 0.05)"
    swap_only = calibrated_categories(a_i, a_t, dataclasses.replace(FAST, n_pairings=0))
    assert swap_only.labels[[6, 7]].tolist() == ["ImgD", "TextD"] and np.isnan(swap_only.p_pairing).all()
    # accepted wherever categories are
    acc = class_accuracy(cats, ["image", "text", "shared", "shared", "shared", "shared", "shared", "shared"])
    assert acc.accuracy == 1.0 and acc.n_excluded == 1
    assert swap_only.labels[4] == "ImgD"  # without the pairing test, a shared feature that leans is ImgD


@pytest.mark.parametrize("form", ["paired", "aggregate"])
def test_swap_p_values_match_a_brute_force_swap(form):
    rng = np.random.default_rng(3)
    n, k = 30, 4
    a_i = rng.exponential(1, (n, k)) * (rng.random((n, k)) < 0.5)
    a_t = rng.exponential(1, (n, k)) * (rng.random((n, k)) < 0.5) * [0.2, 1, 3, 1]
    rule = PermutationRule(n_perm=64, n_pairings=0, seed=5, form=form)
    cats = calibrated_categories(a_i, a_t, rule)
    swaps = np.random.default_rng([rule.seed, 0]).random((rule.n_perm, n)) < 0.5  # the same draws, one block
    observed = modality_dominance(a_i, a_t, form=form).scores
    null = np.array([modality_dominance(np.where(s[:, None], a_t, a_i), np.where(s[:, None], a_i, a_t),
                                        form=form).scores for s in swaps])
    assert cats.scores == pytest.approx(observed)
    above, below = (null >= observed - 1e-9).sum(0), (null <= observed + 1e-9).sum(0)
    assert cats.p_image == pytest.approx((1 + above) / (1 + rule.n_perm))
    assert cats.p_text == pytest.approx((1 + below) / (1 + rule.n_perm))


def test_swap_p_value_of_a_single_pair_feature():
    """Fires on one pair, image side only: its swapped MDS is 1 (as observed) with probability 1/2."""
    a_i, a_t = np.zeros((50, 1)), np.zeros((50, 1))
    a_i[7, 0] = 1.0
    cats = calibrated_categories(a_i, a_t, PermutationRule(n_perm=4000, n_pairings=0))
    assert cats.p_image[0] == pytest.approx(0.5, abs=0.03) and cats.p_text[0] == 1.0
    assert cats.labels.tolist() == ["CrossD"]


def test_blocks_of_swaps_agree_with_one_block(monkeypatch):
    a_i, a_t = _world(1)
    one = calibrated_categories(a_i, a_t, FAST)
    monkeypatch.setattr("mmlib.analysis.calibrated_categories.BLOCK_ENTRIES", N * 7)  # blocks of 7 swaps
    blocks = calibrated_categories(a_i, a_t, FAST)
    assert BLOCK_ENTRIES > N * FAST.n_perm  # the first call drew the swaps at once
    # other draws, the same null: the decisions agree and the p-values are close
    assert blocks.labels.tolist() == one.labels.tolist()
    alive = np.isfinite(one.p_image)
    assert np.abs(blocks.p_image[alive] - one.p_image[alive]).max() < 0.1


def test_deterministic_for_a_seed():
    a_i, a_t = _world(2)
    a, b = calibrated_categories(a_i, a_t, FAST), calibrated_categories(a_i, a_t, FAST)
    for field in ("labels", "p_image", "p_text", "q", "p_pairing"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    other = calibrated_categories(a_i, a_t, dataclasses.replace(FAST, seed=1))
    assert not np.array_equal(np.nan_to_num(other.p_image[:3]), np.nan_to_num(a.p_image[:3]))


def test_benjamini_hochberg_hand_computed():
    # sorted 0.01, 0.03, 0.04, 0.2 -> p * 4 / rank = 0.04, 0.0533, 0.06, 0.2 -> running minimum from the top
    adjusted = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.2]))
    assert adjusted == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])
    assert benjamini_hochberg(np.array([0.5])) == pytest.approx([0.5])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_benjamini_hochberg_properties(p):
    p = np.array(p)
    q = benjamini_hochberg(p)
    assert (q >= p - 1e-12).all() and (q <= 1).all()
    order = np.argsort(p, kind="stable")
    assert (np.diff(q[order]) >= -1e-12).all()  # monotone in p
    assert np.all((q <= 0.05) <= (p <= 0.05))  # no more discoveries than uncorrected tests


def test_fdr_under_the_global_null():
    """A hundred exchangeable features: uncorrected tests find some (P ~ 0.994), the BH-corrected swap test none
    (P >= 0.95), and its discoveries are BH's of the two-sided p-values.
    """
    rng = np.random.default_rng(11)
    on = rng.random((N, 100)) < 0.2
    a_i, a_t = on * rng.uniform(0, 1, (N, 100)), on * rng.uniform(0, 1, (N, 100))
    cats = calibrated_categories(a_i, a_t, PermutationRule(n_perm=2000, n_pairings=0))
    raw = np.minimum(1, 2 * np.minimum(cats.p_image, cats.p_text))
    assert (raw < 0.05).any() and not cats.discoveries().any()
    assert (cats.labels == "CrossD").all()
    np.testing.assert_array_equal(cats.q, benjamini_hochberg(raw))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31), st.integers(4, 40), st.integers(1, 5), st.sampled_from(["paired", "aggregate"]))
def test_swapping_the_modalities_swaps_imgd_and_textd(seed, n, k, form):
    rng = np.random.default_rng(seed)
    a_i = rng.exponential(1, (n, k)) * (rng.random((n, k)) < 0.4)
    a_t = rng.exponential(1, (n, k)) * (rng.random((n, k)) < 0.4) * rng.choice([0, 0.1, 1], k)
    a_i[0] += 0.5  # one pair where every feature fires: none dead
    rule = PermutationRule(n_perm=100, n_pairings=10, seed=seed % 7, form=form)
    cats, swapped = calibrated_categories(a_i, a_t, rule), calibrated_categories(a_t, a_i, rule)
    flip = {"ImgD": "TextD", "TextD": "ImgD", "CrossD": "CrossD", "dead": "dead"}
    assert swapped.labels.tolist() == [flip[c] for c in cats.labels]
    np.testing.assert_allclose(swapped.p_image, cats.p_text)
    np.testing.assert_allclose(swapped.p_pairing, cats.p_pairing)
    np.testing.assert_allclose(swapped.pairing_r, cats.pairing_r, atol=1e-6)


def test_minimum_support_leaves_rare_features_untested():
    """Feature 8 fires on the images of 12 pairs only: ImgD when tested; below a minimum support of 20 pairs it is
    rare, out of the Benjamini-Hochberg family, and the other features keep their labels.
    """
    a_i, a_t = (np.hstack([x, np.zeros((N, 1))]) for x in _world())
    a_i[:12, 8] = 1.0
    tested = calibrated_categories(a_i, a_t, FAST)
    assert tested.labels[8] == "ImgD" and tested.min_support == 0 and tested.support[8] == 12
    rule = dataclasses.replace(FAST, min_support=20)
    cats = calibrated_categories(a_i, a_t, rule)
    assert cats.labels[8] == "rare" and np.isnan(cats.q[8]) and not cats.alive[8]
    assert cats.labels[:8].tolist() == tested.labels[:8].tolist()
    assert cats.min_support == 20 and cats.rule.name == "swap + pairing test (FDR 0.05, support >= 20)"
    assert cats.support.tolist() == ((a_i + a_t) > 0).sum(0).tolist()
    assert cats.mass == pytest.approx((a_i + a_t).sum(0))
    # BH over the tested features only: their two-sided p-values, feature 8 (and the dead one) left out
    keep = np.isfinite(cats.q)
    raw = np.minimum(1, 2 * np.minimum(cats.p_image, cats.p_text))
    assert keep.sum() == 7 and cats.q[keep] == pytest.approx(benjamini_hochberg(raw[keep]))
    with pytest.raises(InputError, match="min_support=1000 pairs \\(largest support"):
        calibrated_categories(a_i, a_t, dataclasses.replace(FAST, min_support=1000))


def test_errors():
    a_i, a_t = _world()
    with pytest.raises(InputError, match="same n >= 2 pairs"):
        calibrated_categories(a_i, a_t[:, :3])
    with pytest.raises(InputError, match="same n >= 2 pairs"):
        calibrated_categories(a_i[:1], a_t[:1])
    with pytest.raises(NonFiniteError, match="a_text"):
        calibrated_categories(a_i, np.where(a_t > 1.4, np.nan, a_t))
    with pytest.raises(InputError, match="non-negative"):
        calibrated_categories(-a_i, a_t)
    with pytest.raises(InputError, match="real numbers"):
        calibrated_categories(a_i.astype(str), a_t)
    with pytest.raises(InputError, match="all 3 features are dead"):
        calibrated_categories(np.zeros((5, 3)), np.zeros((5, 3)))
    with pytest.raises(InputError, match="PermutationRule"):
        calibrated_categories(a_i, a_t, "sigma")
    for bad in (dict(alpha=0.0), dict(alpha=1.0), dict(n_perm=0), dict(n_pairings=-1), dict(form="mean"),
                dict(eps=-1.0), dict(n_perm=10.5), dict(min_support=-1), dict(min_support=2.5)):
        with pytest.raises(ConfigError, match="PermutationRule"):
            PermutationRule(**bad)
    with pytest.raises(InputError, match="in \\[0, 1\\]"):
        benjamini_hochberg(np.array([0.2, 1.2]))
    with pytest.raises(InputError, match="non-empty"):
        benjamini_hochberg(np.array([]))
