"""Real-data controls: shuffled pairs, modality swaps and the exact swap-null z statistic, against hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlib.analysis.controls import CONTROLS, SwapTest, shuffle_pairs, swap_modalities, swap_z
from mmlib.analysis.mds import modality_dominance
from mmlib.core.errors import InputError, NonFiniteError
from mmlib.data.embeddings import Embeddings


def _emb(n: int = 6, d: int = 3, towers: bool = True) -> Embeddings:
    g = torch.Generator().manual_seed(1)
    tower = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 2) if towers else None
    return Embeddings(image=torch.randn(n, d, generator=g), text=torch.arange(n * d, dtype=torch.float32).view(n, d),
                      key="k0", meta={"n": n}, image_tower=tower, text_tower=tower)


def test_controls_are_named_in_order():
    assert CONTROLS == ("random-init", "shuffled", "swapped")


def test_shuffle_pairs_permutes_captions_only_and_rekeys():
    e = _emb()
    s = shuffle_pairs(e, seed=3)
    assert torch.equal(s.image, e.image)
    order = (s.text[:, 0] / 3).long()  # row i of e.text starts with 3 i
    assert sorted(order.tolist()) == list(range(6)) and order.tolist() != list(range(6))
    assert torch.equal(s.text, e.text[order]) and torch.equal(s.text_tower, e.text_tower[order])
    assert torch.equal(s.image_tower, e.image_tower)
    assert s.key == "k0:shuffled-3" and s.meta["control"] == "shuffled" and s.path is None
    assert torch.equal(shuffle_pairs(e, seed=3).text, s.text)  # deterministic
    assert not torch.equal(shuffle_pairs(e, seed=4).text, s.text)
    assert shuffle_pairs(_emb(towers=False), 0).text_tower is None


@pytest.mark.parametrize("bad, match", [(dict(n=1), "at least 2 pairs"), (dict(seed=1.5), "seed must be"),
                                        (dict(seed=True), "seed must be"), (dict(obj=[1, 2]), "takes Embeddings")])
def test_shuffle_pairs_refuses_bad_input(bad, match):
    obj = bad.get("obj", _emb(n=bad.get("n", 4)))
    with pytest.raises(InputError, match=match):
        shuffle_pairs(obj, seed=bad.get("seed", 0))


def test_swap_modalities_exchanges_whole_rows():
    a_i = torch.arange(40, dtype=torch.float32).view(20, 2)
    a_t = -a_i - 1 + 100
    s_i, s_t = swap_modalities(a_i, a_t, seed=0)
    kept = (s_i == a_i).all(1)
    flipped = (s_i == a_t).all(1)
    assert bool((kept ^ flipped).all()) and 0 < int(flipped.sum()) < 20
    assert torch.equal(s_i + s_t, a_i + a_t)
    assert torch.equal(s_t[flipped], a_i[flipped]) and torch.equal(s_t[kept], a_t[kept])
    assert torch.equal(swap_modalities(a_i, a_t, seed=0)[0], s_i)
    with pytest.raises(InputError, match="same pairs"):
        swap_modalities(a_i, a_t[:3])


def test_swap_z_hand_values():
    # feature 0: image only on 9 pairs -> z = sqrt(9) = 3; feature 1: r = 3/4 and 1/4 -> sum 0 -> z = 0;
    # feature 2: dead -> NaN; feature 3: r = 1/2 on every active pair -> no variance -> NaN
    # feature 4: r = 1, 1, 0 -> sum(r - 1/2) = 1/2, sum((r - 1/2)^2) = 3/4 -> z = 0.5 / sqrt(0.75)
    a_i = torch.zeros(9, 5)
    a_t = torch.zeros(9, 5)
    a_i[:, 0] = 1.0
    a_i[0, 1], a_t[0, 1], a_i[1, 1], a_t[1, 1] = 3.0, 1.0, 1.0, 3.0
    a_i[:4, 3] = a_t[:4, 3] = 2.0
    a_i[0, 4], a_i[1, 4], a_t[2, 4] = 1.0, 5.0, 2.0
    test = swap_z(a_i, a_t, chunk_size=2)
    np.testing.assert_allclose(test.z[[0, 1, 4]], [3.0, 0.0, 0.5 / math.sqrt(0.75)], atol=1e-12)
    assert np.isnan(test.z[2]) and np.isnan(test.z[3])
    assert test.n_active.tolist() == [9, 2, 0, 4, 3]
    assert test.significant(0.05).tolist() == [True, False, False, False, False]
    assert test.min_active_for(1.96) == 4
    with pytest.raises(InputError, match="alpha"):
        test.significant(1.5)


def test_swap_z_refuses_bad_activations():
    ok = torch.ones(3, 2)
    with pytest.raises(InputError, match="non-negative"):
        swap_z(-ok, ok)
    with pytest.raises(NonFiniteError):
        swap_z(ok * float("nan"), ok)
    with pytest.raises(InputError, match="same pairs"):
        swap_z(ok, torch.ones(2, 2))
    with pytest.raises(InputError, match="chunk_size"):
        swap_z(ok, ok, chunk_size=0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_swap_null_matches_its_exact_moments(seed):
    """Over many swaps, each feature's paired MDS has mean 1/2 + 0 and the variance swap_z assumes."""
    g = torch.Generator().manual_seed(seed)
    a_i = torch.rand(12, 3, generator=g) * (torch.rand(12, 3, generator=g) < 0.7)
    a_t = torch.rand(12, 3, generator=g) * (torch.rand(12, 3, generator=g) < 0.4)
    test = swap_z(a_i, a_t)
    draws = np.stack([modality_dominance(*swap_modalities(a_i, a_t, seed=s)).scores for s in range(400)])
    n = test.n_active
    t = a_i + a_t
    r = torch.where(t > 0, a_i / torch.where(t > 0, t, 1.0) - 0.5, 0.0).double()
    var = (r.square().sum(0) / torch.as_tensor(n).clamp(min=1).double() ** 2).numpy()
    alive = n > 0
    assert np.all(np.abs(draws.mean(0)[alive] - 0.5) <= 4 * np.sqrt(var[alive] / 400) + 1e-9)
    np.testing.assert_allclose(draws.var(0)[alive], var[alive], rtol=0.35, atol=1e-9)


def test_swap_test_is_a_plain_record():
    t = SwapTest(z=np.array([np.nan]), n_active=np.array([0]))
    assert t.significant().tolist() == [False]
