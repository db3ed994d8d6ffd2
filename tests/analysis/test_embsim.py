"""Top-m samples, EmbSim, WinRate (a) and (b), purity and the m sweep, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlib.analysis.embsim import (
    best_purity,
    embsim,
    m_sweep,
    purity,
    random_embsim,
    top_samples,
    win_probability,
    winrate_between,
    winrate_vs_random,
)

EMB = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 0.0], [0.0, -1.0]])
ACT = torch.tensor([[3.0, 0.0, 0.0],
                    [2.0, 0.0, 0.0],
                    [1.0, 0.0, 1.0],
                    [0.0, 1.0, 2.0],
                    [0.0, 2.0, 3.0]])


def test_top_samples_and_embsim_hand_computed():
    top = top_samples(ACT, m=3)
    assert top.indices[0].tolist() == [0, 1, 2] and top.indices[2].tolist() == [4, 3, 2]
    assert top.n_active.tolist() == [3, 2, 3] and top.complete.tolist() == [True, False, True]
    sims = embsim(EMB, top)
    # feature 0: cos(e0,e1)=0, cos(e0,e2)=cos(e1,e2)=1/sqrt2 -> sqrt2/3; feature 2: the negatives
    np.testing.assert_allclose(sims[[0, 2]], [np.sqrt(2) / 3, -np.sqrt(2) / 3])
    assert np.isnan(sims[1])  # fires on 2 < 3 samples
    assert np.isfinite(embsim(EMB, top, require_active=False)[1])
    np.testing.assert_allclose(embsim(EMB, [[0, 1, 2]]), [np.sqrt(2) / 3])
    assert top.first(2).indices.shape == (3, 2)


def test_embsim_of_identical_and_opposite_vectors():
    e = torch.tensor([[1.0, 1.0], [2.0, 2.0], [-1.0, -1.0]])
    np.testing.assert_allclose(embsim(e, [[0, 1], [0, 2], [1, 2]]), [1.0, -1.0, -1.0])


def test_random_embsim_seeded():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(50, 4))
    r1, r2 = random_embsim(e, 5, 100, seed=1), random_embsim(e, 5, 100, seed=1)
    np.testing.assert_array_equal(r1, r2)
    assert r1.shape == (100,) and (np.abs(r1) <= 1).all()
    np.testing.assert_allclose(random_embsim(np.ones((10, 3)), 4, 5), np.ones(5))


def test_winrate_hand_computed():
    random = np.array([0.1, 0.3, 0.5])
    np.testing.assert_allclose(win_probability([0.5, 0.2], random), [2.5 / 3, 1 / 3])
    w = winrate_vs_random(np.array([0.5, 0.2, np.nan]), random, n_boot=200)
    assert w.value == pytest.approx(7 / 12) and w.n == 2 and w.kind == "vs_random"
    assert 1 / 3 <= w.ci_low <= w.value <= w.ci_high <= 5 / 6
    a, b = np.array([0.5, 0.2]), np.array([0.3, 0.1, 0.2])
    assert winrate_between(a, b).value == pytest.approx(4.5 / 6)            # all pairs
    assert winrate_between(a, b, pairing="rank").value == pytest.approx(0.75)  # (win + tie) / 2
    assert winrate_between(b, a).value == pytest.approx(1.5 / 6)
    with pytest.raises(ValueError, match="unknown pairing"):
        winrate_between(a, b, pairing="best")
    with pytest.raises(ValueError, match="no finite"):
        winrate_vs_random(np.array([np.nan]), random)


def test_purity_hand_computed():
    idx = np.array([[0, 1, 2], [2, 3, 4]])
    np.testing.assert_allclose(purity(idx, [0, 0, 1, 1, 1]), [2 / 3, 1.0])
    table = best_purity(idx, {"a": np.array([0, 0, 1, 1, 1]), "b": np.arange(5)})
    assert table.factor.tolist() == ["a", "a"] and table.chance.tolist() == [0.6, 0.6]
    top = top_samples(ACT, m=3)
    assert np.isnan(purity(top, [0, 0, 1, 1, 1])[1])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 7), st.integers(2, 6))
def test_streamed_top_samples_equal_one_pass(seed, chunk, m):
    a = torch.from_numpy(np.random.default_rng(seed).permutation(40 * 3).reshape(40, 3).astype(np.float32))
    one = top_samples(a, m)
    streamed = top_samples((a[s:s + chunk] for s in range(0, 40, chunk)), m)
    assert torch.equal(one.indices, streamed.indices) and torch.equal(one.n_active, streamed.n_active)


def test_top_samples_errors():
    with pytest.raises(ValueError, match="at least 2"):
        top_samples(ACT, m=1)
    with pytest.raises(ValueError, match="only 5 samples"):
        top_samples(ACT, m=6)
    with pytest.raises(ValueError, match="no samples"):
        top_samples(iter([]), m=3)
    with pytest.raises(ValueError, match="out of range"):
        embsim(EMB, [[0, 9]])


def test_m_sweep_on_planted_clusters():
    rng = np.random.default_rng(0)
    label = np.repeat(np.arange(4), 50)
    centres = rng.normal(size=(4, 8))
    emb = centres[label] + 0.3 * rng.normal(size=(200, 8))
    act = np.zeros((200, 5), np.float32)
    act[np.arange(200), label] = rng.uniform(0.5, 1, 200)   # feature k fires on cluster k
    act[:, 4] = rng.uniform(0, 1, 200)                       # feature 4 fires everywhere at random
    table = m_sweep(act, emb, (5, 20), labels={"cluster": label}, n_random=200, n_boot=200)
    assert table.m.tolist() == [5, 20] and (table.n_scored == 5).all()
    assert (table.winrate > 0.7).all() and (table.embsim > table.random_embsim).all()
    assert (table.purity > 0.75).all() and table.purity_chance[0] == pytest.approx(0.25)
    assert (table.winrate_ci_low <= table.winrate).all() and (table.winrate <= table.winrate_ci_high).all()


def test_class_interpretability_per_class():
    from mmlib.analysis.categories import categorise
    from mmlib.analysis.embsim import class_interpretability

    cats = categorise(np.array([0.9, 0.95, 0.5, 0.45, 0.05, np.nan]), "fixed")
    sims = np.array([0.8, 0.6, 0.4, np.nan, 0.3, np.nan])
    pur = np.array([1.0, 0.5, 0.7, 0.2, 0.9, np.nan])
    rand = np.array([0.1, 0.5, 0.7])
    t = class_interpretability(sims, pur, cats, rand, n_boot=20).set_index("category")
    assert list(t.index) == ["ImgD", "TextD", "CrossD"]
    assert t.loc["ImgD"].n_scored == 2 and t.loc["ImgD"].embsim == pytest.approx(0.7)
    assert t.loc["ImgD"].purity == pytest.approx(0.75)
    assert t.loc["ImgD"].winrate == pytest.approx(winrate_vs_random(sims[:2], rand, n_boot=20).value)
    assert t.loc["CrossD"].n_scored == 1 and np.isnan(t.loc["CrossD"].embsim)  # feature 3 has no EmbSim
    assert t.loc["TextD"].n_scored == 1 and np.isnan(t.loc["TextD"].winrate)
    assert class_interpretability(sims, pur, cats, rand, min_features=1).set_index("category").loc[
        "TextD"].embsim == pytest.approx(0.3)
    with pytest.raises(ValueError, match="purities"):
        class_interpretability(sims[:3], pur, cats, rand)
