"""Modality Dominance Score: hand-computed values, both forms, streaming, invariants and errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmlib.analysis.mds import MDSAccumulator, modality_dominance, paired_activations

# 3 pairs x 4 features. Feature 0: image only; 1: text only; 2: mixed; 3: dead.
A_I = torch.tensor([[1.0, 0.0, 3.0, 0.0],
                    [2.0, 0.0, 0.0, 0.0],
                    [0.0, 0.0, 1.0, 0.0]])
A_T = torch.tensor([[0.0, 5.0, 1.0, 0.0],
                    [0.0, 0.0, 2.0, 0.0],
                    [0.0, 1.0, 1.0, 0.0]])


def test_paired_form_hand_computed():
    r = modality_dominance(A_I, A_T)
    # feature 2: pairs 3/(3+1)=0.75, 0/2=0, 1/2=0.5 -> mean 1.25/3
    np.testing.assert_allclose(r.scores[:3], [1.0, 0.0, 1.25 / 3])
    assert np.isnan(r.scores[3])
    assert r.alive.tolist() == [True, True, True, False]
    assert r.n_dead == 1 and r.n_alive == 3 and r.n_pairs == 3
    assert r.n_active_pairs.tolist() == [2, 2, 3, 0]
    assert r.form == "paired" and r.eps == 0.0
    np.testing.assert_allclose(r.alive_scores(), [1.0, 0.0, 1.25 / 3])


def test_aggregate_form_hand_computed():
    r = modality_dominance(A_I, A_T, form="aggregate")
    np.testing.assert_allclose(r.scores[:3], [1.0, 0.0, 4.0 / 8.0])
    assert np.isnan(r.scores[3]) and r.n_dead == 1


def test_eps_excludes_weak_pairs():
    a_i = torch.tensor([[0.05], [1.0]])
    a_t = torch.tensor([[0.0], [1.0]])
    assert modality_dominance(a_i, a_t).scores[0] == pytest.approx(0.75)       # (1 + 0.5) / 2
    r = modality_dominance(a_i, a_t, eps=0.1)
    assert r.scores[0] == pytest.approx(0.5) and r.n_active_pairs[0] == 1


def test_numpy_and_iterable_inputs_and_summary():
    r = modality_dominance(A_I.numpy(), A_T.numpy(), chunk_size=2)
    chunks = [(A_I[:1], A_T[:1]), (A_I[1:], A_T[1:])]
    r2 = modality_dominance(iter(chunks))
    np.testing.assert_allclose(r.scores, r2.scores)
    s = r.summary()
    assert s["n_dead"] == 1 and s["share_low"] == pytest.approx(1 / 3) and s["share_high"] == pytest.approx(1 / 3)
    frame = r.to_frame()
    assert list(frame.columns) == ["feature", "mds", "alive", "n_active_pairs"] and len(frame) == 4


def test_accumulator_merge_equals_one_pass():
    a, b = MDSAccumulator(4), MDSAccumulator(4)
    a.update(A_I[:2], A_T[:2])
    b.update(A_I[2:], A_T[2:])
    merged = a.merge(b).result("aggregate")
    np.testing.assert_allclose(merged.scores, modality_dominance(A_I, A_T, form="aggregate").scores)


class _Relu:
    def encode(self, z, modality):
        return torch.relu(z if modality == "image" else -z)


def test_paired_activations_from_a_feature_map():
    z = torch.tensor([[1.0, -1.0], [2.0, 0.5], [-1.0, -1.0]])
    chunks = list(paired_activations(_Relu(), z, z, chunk_size=2))
    assert len(chunks) == 2 and chunks[0][0].shape == (2, 2)
    r = modality_dominance(iter(chunks))
    # feature 0: image 1,2,0 text 0,0,1 -> 1,1,0; feature 1: image 0,.5,0 text 1,0,1 -> 0,1,0
    np.testing.assert_allclose(r.scores, [2 / 3, 1 / 3])


def test_errors():
    with pytest.raises(ValueError, match="non-negative"):
        modality_dominance(-A_I, A_T)
    with pytest.raises(ValueError, match="differ in shape"):
        modality_dominance(A_I[:, :2], A_T[:, :3])
    with pytest.raises(ValueError, match="a_text is required"):
        modality_dominance(A_I)
    with pytest.raises(ValueError, match="unknown MDS form"):
        modality_dominance(A_I, A_T, form="mean")
    with pytest.raises(ValueError, match="no pairs"):
        modality_dominance(A_I[:0], A_T[:0])
    with pytest.raises(ValueError, match="image activations but"):
        modality_dominance(A_I, A_T[:2])
    with pytest.raises(ValueError, match="shape"):
        MDSAccumulator(3).update(A_I, A_T)


# ------------------------------------------------------------------------------------------ properties
def _pair_arrays(draw_n=st.integers(1, 12), draw_k=st.integers(1, 5)):
    @st.composite
    def strategy(draw):
        n, k = draw(draw_n), draw(draw_k)
        values = st.one_of(st.just(0.0), st.floats(1e-3, 1e3))
        a_i = draw(arrays(np.float64, (n, k), elements=values))
        a_t = draw(arrays(np.float64, (n, k), elements=values))
        return a_i, a_t
    return strategy()


FORM = st.sampled_from(["paired", "aggregate"])


@settings(max_examples=60, deadline=None)
@given(_pair_arrays(), FORM)
def test_swapping_modalities_gives_one_minus_mds(pair, form):
    a_i, a_t = pair
    r, swapped = modality_dominance(a_i, a_t, form=form), modality_dominance(a_t, a_i, form=form)
    np.testing.assert_array_equal(r.alive, swapped.alive)
    np.testing.assert_allclose(swapped.scores[r.alive], 1 - r.scores[r.alive], atol=1e-12)
    assert ((0 <= r.alive_scores()) & (r.alive_scores() <= 1)).all()


@settings(max_examples=60, deadline=None)
@given(_pair_arrays(), FORM, st.floats(1e-3, 1e3))
def test_scaling_both_modalities_leaves_mds_unchanged(pair, form, c):
    a_i, a_t = pair
    r, scaled = modality_dominance(a_i, a_t, form=form), modality_dominance(c * a_i, c * a_t, form=form)
    np.testing.assert_array_equal(r.alive, scaled.alive)
    np.testing.assert_allclose(scaled.scores[r.alive], r.scores[r.alive], rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(_pair_arrays(), FORM, st.integers(1, 5))
def test_chunking_gives_the_same_result(pair, form, chunk_size):
    a_i, a_t = pair
    one = modality_dominance(a_i, a_t, form=form, chunk_size=len(a_i))
    chunked = modality_dominance(a_i, a_t, form=form, chunk_size=chunk_size)
    np.testing.assert_allclose(chunked.scores, one.scores, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(chunked.n_active_pairs, one.n_active_pairs)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, (6, 3), elements=st.floats(0, 10, width=32)), FORM)
def test_image_only_feature_scores_one(a_i, form):
    a_i[0] = 1.0  # every feature fires at least once
    r = modality_dominance(a_i, np.zeros_like(a_i), form=form)
    assert r.n_dead == 0
    np.testing.assert_array_equal(r.scores, np.ones(3))
    np.testing.assert_array_equal(modality_dominance(np.zeros_like(a_i), a_i, form=form).scores, np.zeros(3))


def test_small_blocks_and_read_only_memmaps(tmp_path):
    acc = MDSAccumulator(4, block_rows=2)
    acc.update(A_I, A_T)
    np.testing.assert_allclose(acc.result().scores, modality_dominance(A_I, A_T).scores)
    np.save(tmp_path / "i.npy", A_I.numpy())
    np.save(tmp_path / "t.npy", A_T.numpy())
    a_i, a_t = np.load(tmp_path / "i.npy", mmap_mode="r"), np.load(tmp_path / "t.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable array" warning from torch
        r = modality_dominance(a_i, a_t, chunk_size=2)
    np.testing.assert_allclose(r.scores, modality_dominance(A_I, A_T).scores)


@pytest.mark.parametrize("form", ["paired", "aggregate"])
def test_subnormal_activations_count_like_any_other(form):
    """Regression (found by hypothesis): a pair active only at a subnormal level (1e-45 on the image side) used
    to count as active with a ratio of 0, because the denominator was clamped to the smallest normal float.
    """
    a_i = np.full((6, 3), 1e-45, dtype=np.float32)
    a_i[0] = 1.0
    r = modality_dominance(a_i, np.zeros_like(a_i), form=form)
    np.testing.assert_array_equal(r.scores, np.ones(3))
