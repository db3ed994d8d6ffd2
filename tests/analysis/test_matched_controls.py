"""Activity-matched and size-matched control sets: size, exclusion, matching, determinism, fallback, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlib.analysis.categories import categorise, random_feature_mask
from mmlib.analysis.matched_controls import (
    ActivityMatched,
    MatchFallbackWarning,
    SizeMatched,
    match_quality,
    matched_group_masks,
    quality_table,
)
from mmlib.analysis.mds import modality_dominance
from mmlib.core.errors import InputError

# 200 features: 10 near-silent group features (support 2-4), 30 near-silent others (support 1-5) and 160 active
# ones (support 100-1000); mass = 0.5 x support.
RNG = np.random.default_rng(0)
SUPPORT = np.concatenate([[2, 3, 4, 2, 3, 4, 2, 3, 4, 3], RNG.integers(1, 6, 30), RNG.integers(100, 1001, 160)])
MASS = 0.5 * SUPPORT
POOL = np.ones(200, bool)
GROUP = np.zeros(200, bool)
GROUP[:10] = True


def matcher(**kw) -> ActivityMatched:
    return ActivityMatched(SUPPORT, MASS, POOL, **kw)


def test_draw_has_the_group_size_and_excludes_the_group():
    draw = matcher().draw(np.random.default_rng(1), GROUP)
    assert draw.mask.shape == (200,) and draw.mask.dtype == bool and draw.mask.sum() == 10
    assert not (draw.mask & GROUP).any() and draw.excludes_group and draw.n_fallback == 0


def test_activity_matching_matches_support_where_size_matching_does_not():
    rng_a, rng_s = np.random.default_rng(2), np.random.default_rng(2)
    activity = [matcher().draw(rng_a, GROUP).mask for _ in range(50)]
    size = [SizeMatched(POOL & ~GROUP).draw(rng_s, GROUP).mask for _ in range(50)]
    qa, qs = match_quality(GROUP, activity, SUPPORT, MASS), match_quality(GROUP, size, SUPPORT, MASS)
    assert qa["support_group"] == 3.0 and qa["mass_group"] == 1.5
    assert qs["support_control"] >= 100  # uniform draws are mostly active features
    assert qa["support_control"] <= 5 and qa["mass_control"] <= 2.5  # near-silent, like the group
    assert max(SUPPORT[m].max() for m in activity) <= 5


def test_draws_are_deterministic_per_seed():
    a = matcher().draw(np.random.default_rng([3, 0]), GROUP).mask
    b = matcher().draw(np.random.default_rng([3, 0]), GROUP).mask
    others = [matcher().draw(np.random.default_rng([4, s]), GROUP).mask for s in range(5)]
    assert np.array_equal(a, b) and any(not np.array_equal(a, o) for o in others)


def test_strata_hand_computed():
    # support bins of a factor 2: 0 and 1 -> 0, 3 -> floor(log2 3) = 1, 7 -> 2, 8 -> 3; mass ignored (ratio inf)
    m = ActivityMatched(np.array([0, 1, 3, 7, 8]), np.array([0.0, 1.0, 2.0, 3.0, 4.0]), np.ones(5, bool),
                        mass_ratio=np.inf)
    assert m.strata().tolist() == [[0, 0], [0, 0], [1, 0], [2, 0], [3, 0]]
    # factor-4 support bins (1 and 3 -> 0, 7 and 8 -> 1); factor-10 mass bins (0.5 -> -1, 5 -> 0, 50 -> 1)
    four = ActivityMatched(np.array([1, 3, 7, 8]), np.array([0.5, 5.0, 50.0, 5.0]), np.ones(4, bool),
                           support_ratio=4, mass_ratio=10)
    assert four.strata().tolist() == [[0, -1], [0, 0], [1, 1], [1, 0]]


def test_an_exhausted_stratum_falls_back_to_the_nearest_with_a_warning():
    # group: features 0 and 1 (support 1); candidates: feature 2 (support 1), 3 (support 10), 4 (support 1000)
    support = np.array([1, 1, 1, 10, 1000])
    m = ActivityMatched(support, support.astype(float), np.ones(5, bool))
    group = np.array([True, True, False, False, False])
    with pytest.warns(MatchFallbackWarning, match="1 of 2 group features"):
        draw = m.draw(np.random.default_rng(0), group)
    assert draw.n_fallback == 1 and np.flatnonzero(draw.mask).tolist() == [2, 3]  # 3 is nearer than 4


def test_exclude_group_auto_allows_overlap_only_when_needed():
    support = np.array([5, 5, 5, 5, 6, 6])
    group = np.array([True, True, True, True, False, False])
    with pytest.raises(ValueError, match="outside the group holds only 2"):
        ActivityMatched(support, support * 1.0, np.ones(6, bool)).draw(np.random.default_rng(0), group)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MatchFallbackWarning)
        draw = ActivityMatched(support, support * 1.0, np.ones(6, bool), exclude_group="auto").draw(
            np.random.default_rng(0), group)
    assert draw.mask.sum() == 4 and not draw.excludes_group
    small = np.array([True, False, False, False, False, False])
    assert ActivityMatched(support, support * 1.0, np.ones(6, bool), exclude_group="auto").draw(
        np.random.default_rng(0), small).excludes_group


def test_size_matched_is_the_chapters_random_feature_mask():
    pool = np.array([False, True, True, False, True, True])
    group = np.array([True, True, False, False, False, False])
    draw = SizeMatched(pool).draw(np.random.default_rng([0, 1]), group)
    expected = random_feature_mask(np.random.default_rng([0, 1]), np.flatnonzero(pool), 2, 6)
    assert np.array_equal(draw.mask, expected) and draw.n_fallback == 0


def test_match_quality_hand_computed():
    support, mass = np.array([1, 3, 5, 7]), np.array([1.0, 2.0, 4.0, 8.0])
    group = np.array([True, True, False, False])
    q = match_quality(group, [np.array([False, True, True, False]), np.array([False, False, True, True])],
                      support, mass)
    # drawn: 1, 2, 2, 3 -> supports 3, 5, 5, 7 (median 5), masses 2, 4, 4, 8 (median 4); overlap (1/2 + 0) / 2
    assert q == dict(n_group=2, n_draws=2, support_group=2.0, support_control=5.0, mass_group=1.5,
                     mass_control=4.0, overlap=0.25)
    t = quality_table([dict(group="g", **q)])
    assert t.support_ratio.iloc[0] == 2.5 and t.mass_ratio.iloc[0] == pytest.approx(4.0 / 1.5)


def test_errors():
    with pytest.raises(ValueError, match="boolean mask"):
        matcher().draw(np.random.default_rng(0), GROUP.astype(int))
    with pytest.raises(ValueError, match="shape"):
        matcher().draw(np.random.default_rng(0), GROUP[:5])
    with pytest.raises(ValueError, match="group is empty"):
        matcher().draw(np.random.default_rng(0), np.zeros(200, bool))
    with pytest.raises(ValueError, match="non-negative integer counts"):
        ActivityMatched(-SUPPORT, MASS, POOL)
    with pytest.raises(ValueError, match="non-negative integer counts"):
        ActivityMatched(SUPPORT + 0.5, MASS, POOL)
    with pytest.raises(ValueError, match="mass must be"):
        ActivityMatched(SUPPORT, np.full(200, np.nan), POOL)
    with pytest.raises(ValueError, match="mass must be"):
        ActivityMatched(SUPPORT, MASS[:3], POOL)
    with pytest.raises(ValueError, match="pool is empty"):
        ActivityMatched(SUPPORT, MASS, np.zeros(200, bool))
    with pytest.raises(ValueError, match="support_ratio must be a number > 1"):
        matcher(support_ratio=1.0)
    with pytest.raises(ValueError, match="exclude_group"):
        matcher(exclude_group="sometimes")
    with pytest.raises(ValueError, match="pool holds only 1"):
        SizeMatched(np.array([True, False, False])).draw(np.random.default_rng(0), np.array([True, True, False]))
    with pytest.raises(ValueError, match="at least one control"):
        match_quality(GROUP, [], SUPPORT, MASS)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=4, max_size=40), st.integers(0, 2 ** 16), st.data())
def test_property_size_and_exclusion(support, seed, data):
    support = np.array(support)
    n = len(support)
    k = data.draw(st.integers(1, n // 2))
    group = np.zeros(n, bool)
    group[data.draw(st.permutations(range(n)))[:k]] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MatchFallbackWarning)
        draw = ActivityMatched(support, support * 2.0, np.ones(n, bool)).draw(
            np.random.default_rng(seed), group)
    assert draw.mask.sum() == k and not (draw.mask & group).any()
    assert 0 <= draw.n_fallback <= k


def test_matched_group_masks_draw_random_groups_with_the_sampler():
    acts = np.zeros((100, 6), np.float32)
    acts[:60, 0], acts[:60, 1] = 1.0, 0.0  # feature 0: image only, busy; feature 1: text only, busy
    acts_t = np.zeros_like(acts)
    acts_t[:60, 1] = 1.0
    acts[:60, 2] = acts_t[:60, 2] = 1.0  # features 2, 3: shared, as busy as 0 and 1
    acts[:60, 3] = acts_t[:60, 3] = 1.0
    acts[:2, 4] = acts_t[:2, 4] = 1.0  # features 4, 5: shared and nearly silent
    acts[:2, 5] = acts_t[:2, 5] = 1.0
    cats = categorise(modality_dominance(torch.from_numpy(acts), torch.from_numpy(acts_t)), "fixed:0.7/0.3")
    assert list(cats.labels) == ["ImgD", "TextD", "CrossD", "CrossD", "CrossD", "CrossD"]
    sampler = ActivityMatched(cats.support, cats.mass, cats.alive)
    groups = ("ImgD", "random:ImgD", "random:TextD")
    for seed in range(10):
        masks = matched_group_masks(cats, groups, sampler, seed=seed)
        assert list(masks) == list(groups) and masks["ImgD"].tolist() == [True] + [False] * 5
        for g in ("random:ImgD", "random:TextD"):  # one busy feature outside the class, never a silent one
            assert masks[g].sum() == 1 and not masks[g][4:].any() and not (masks[g] & cats.mask(g[7:])).any()
    assert matched_group_masks(cats, groups, sampler, seed=3)["random:ImgD"].tolist() == \
        matched_group_masks(cats, groups, sampler, seed=3)["random:ImgD"].tolist()
    with pytest.raises(InputError, match="unknown feature group"):
        matched_group_masks(cats, ("random:Foo",), sampler)


def test_matched_group_masks_count_fallbacks_instead_of_warning():
    # the pool holds the near-silent group and active features only: every group feature falls back
    sampler = ActivityMatched(SUPPORT, MASS, GROUP | (SUPPORT >= 100))
    acts = np.zeros((1000, 200), np.float32)
    for k, n in enumerate(SUPPORT):
        acts[:n, k] = 1.0
    acts_t = acts.copy()
    acts[:, :10] *= 9.0  # the group: image-dominant, so that the fixed rule labels it ImgD
    cats = categorise(modality_dominance(torch.from_numpy(acts), torch.from_numpy(acts_t)), "fixed:0.8/0.2")
    assert cats.mask("ImgD").tolist() == GROUP.tolist()
    counts: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", MatchFallbackWarning)
        masks = matched_group_masks(cats, ("random:ImgD",), sampler, seed=0, n_fallback=counts)
    assert masks["random:ImgD"].sum() == 10 and not (masks["random:ImgD"] & GROUP).any()
    assert counts == {"random:ImgD": 10}
    with pytest.warns(MatchFallbackWarning):
        matched_group_masks(cats, ("random:ImgD",), sampler, seed=0)
