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


# ------------------------------------------------------------------- the blocked update against a reference
def _reference_sums(a_i: np.ndarray, a_t: np.ndarray, eps: float):
    """The accumulator's four sums by the formula, in float64: ``sum_i [t > eps] a_I / t``, ``sum_i [t > eps]``,
    ``sum_i a_I``, ``sum_i a_T`` with ``t = a_I + a_T`` (compared with ``eps`` in the input dtype, as documented).
    """
    total = a_i + a_t                                      # in the input dtype
    active = total > np.asarray(eps, dtype=total.dtype)
    i64, t64 = a_i.astype(np.float64), a_t.astype(np.float64)
    ratio = np.zeros_like(i64)
    np.divide(i64, i64 + t64, out=ratio, where=active)
    return ratio.sum(0), active.sum(0), i64.sum(0), t64.sum(0)


@st.composite
def _blocked_case(draw):
    n, k = draw(st.integers(1, 40)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    values = st.one_of(st.just(0.0), st.just(0.0), st.just(1e-45), st.floats(float(np.float32(1e-30)), 1e3, width=32))
    a_i = draw(arrays(dtype, (n, k), elements=values))
    a_t = draw(arrays(dtype, (n, k), elements=values))
    eps = draw(st.sampled_from([0.0, 1e-3, 0.5, 3.0]))
    block_rows = draw(st.one_of(st.none(), st.integers(1, 9)))
    return a_i, a_t, eps, block_rows


@settings(max_examples=150, deadline=None)
@given(_blocked_case())
def test_blocked_update_equals_the_formula(case):
    a_i, a_t, eps, block_rows = case
    acc = MDSAccumulator(a_i.shape[1], eps=eps, block_rows=block_rows)
    half = len(a_i) // 2                                   # two updates: blocks restart at each chunk
    acc.update(a_i[:half], a_t[:half])
    acc.update(a_i[half:], a_t[half:])
    ratio, n_active, image, text = _reference_sums(a_i, a_t, eps)
    rtol = 1e-5 if a_i.dtype == np.float32 else 1e-12
    np.testing.assert_array_equal(acc.n_active.numpy(), n_active)
    np.testing.assert_allclose(acc.ratio_sum.numpy(), ratio, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(acc.image_sum.numpy(), image, rtol=rtol, atol=0)
    np.testing.assert_allclose(acc.text_sum.numpy(), text, rtol=rtol, atol=0)
    assert acc.n_pairs == len(a_i)


@pytest.mark.parametrize("block_rows", [None, 1, 3, 64])
def test_blocked_update_is_deterministic(block_rows):
    gen = torch.Generator().manual_seed(0)
    a_i = torch.rand(300, 7, generator=gen).sub_(0.7).relu_()
    a_t = torch.rand(300, 7, generator=gen).sub_(0.7).relu_()
    one, two = MDSAccumulator(7, block_rows=block_rows), MDSAccumulator(7, block_rows=block_rows)
    for acc in (one, two):
        acc.update(a_i, a_t)
    for name in ("ratio_sum", "n_active", "image_sum", "text_sum"):
        assert torch.equal(getattr(one, name), getattr(two, name)), name


def test_default_block_rows_follow_the_tile_rule():
    from mmlib.analysis.mds import TILE_BYTES, _tile_rows
    assert _tile_rows(1024, 4) == TILE_BYTES // 4096 == 256
    assert _tile_rows(4096, 8) == TILE_BYTES // (4096 * 8)
    assert _tile_rows(1, 4) == 4096 and _tile_rows(10 ** 7, 8) == 8      # clamped to [8, 4096]


def test_huge_activations_do_not_overflow_float32_sums():
    """A float32 ``a_I + a_T`` or block sum past the float32 range used to give inf (or a ratio of 0)."""
    big = np.float32(3e38)
    a_i = np.array([[big, big], [0.0, big]], dtype=np.float32)
    a_t = np.array([[big, 0.0], [0.0, 0.0]], dtype=np.float32)
    acc = MDSAccumulator(2)
    acc.update(a_i, a_t)
    np.testing.assert_allclose(acc.ratio_sum.numpy(), [0.5, 2.0])
    np.testing.assert_allclose(acc.image_sum.numpy(), [float(big), 2 * float(big)])
    np.testing.assert_allclose(acc.result("aggregate").scores, [0.5, 1.0])


def test_column_major_inputs_give_the_same_sums():
    gen = torch.Generator().manual_seed(1)
    a_i = torch.rand(50, 6, generator=gen).sub_(0.5).relu_()
    a_t = torch.rand(50, 6, generator=gen).sub_(0.5).relu_()
    one, two = MDSAccumulator(6, block_rows=7), MDSAccumulator(6, block_rows=7)
    one.update(a_i, a_t)
    two.update(a_i.T.contiguous().T, np.asfortranarray(a_t.numpy()))   # column-major: other summation order
    assert torch.equal(one.n_active, two.n_active)
    for name in ("ratio_sum", "image_sum", "text_sum"):
        np.testing.assert_allclose(getattr(two, name).numpy(), getattr(one, name).numpy(), rtol=1e-6, err_msg=name)


# ----------------------------------------------------------------- validation reaches every block, atomically
@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 30), k=st.integers(1, 4), block_rows=st.integers(1, 5), data=st.data(),
       bad=st.sampled_from([-1.0, -1e-30, float("nan"), float("inf"), -float("inf")]),
       side=st.sampled_from(["a_image", "a_text"]))
def test_a_bad_entry_in_any_block_is_caught_and_leaves_the_sums(n, k, block_rows, data, bad, side):
    from mmlib.core.errors import InputError, NonFiniteError
    rng = np.random.default_rng(n * 100 + k)
    a_i, a_t = rng.random((n, k)) * 5, rng.random((n, k)) * 5
    i, j = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, k - 1))
    (a_i if side == "a_image" else a_t)[i, j] = bad
    acc = MDSAccumulator(k, block_rows=block_rows)
    acc.update(np.ones((2, k)), np.zeros((2, k)))
    before = [getattr(acc, name).clone() for name in ("ratio_sum", "n_active", "image_sum", "text_sum")]
    error = NonFiniteError if not np.isfinite(bad) else InputError
    with pytest.raises(error, match=rf"{side}.*row {i}, column {j}") as info:
        acc.update(a_i, a_t)
    assert np.isfinite(bad) != isinstance(info.value, NonFiniteError)
    assert acc.n_pairs == 2
    for old, name in zip(before, ("ratio_sum", "n_active", "image_sum", "text_sum")):
        assert torch.equal(old, getattr(acc, name)), name


def test_a_tiny_negative_text_activation_next_to_a_large_image_one_is_caught():
    """``1 + (-1e-30)`` rounds to 1, so only the minimum of the input itself shows the sign."""
    from mmlib.core.errors import InputError
    a_i = np.ones((10, 2), dtype=np.float32)
    a_t = np.zeros((10, 2), dtype=np.float32)
    a_t[7, 1] = -1e-30
    with pytest.raises(InputError, match=r"a_text must be non-negative.*row 7, column 1"):
        MDSAccumulator(2, block_rows=3).update(a_i, a_t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_fused_pass_equals_the_blocked_one_across_kernel_blocks(dtype):
    """The default CPU path (one fused numba loop, KERNEL_BLOCK rows per partial sum) against the torch blocks and the
    formula, on more rows than a kernel block; a bad entry past the first kernel block is still caught.
    """
    from mmlib.analysis.mds import KERNEL_BLOCK
    from mmlib.core.errors import InputError
    gen = torch.Generator().manual_seed(3)
    n = 2 * KERNEL_BLOCK + 37
    a_i = torch.rand(n, 9, generator=gen, dtype=dtype).sub_(0.6).relu_()
    a_t = torch.rand(n, 9, generator=gen, dtype=dtype).sub_(0.6).relu_()
    fused, blocked = MDSAccumulator(9), MDSAccumulator(9, block_rows=64)
    fused.update(a_i, a_t)
    blocked.update(a_i, a_t)
    ratio, n_active, image, text = _reference_sums(a_i.numpy(), a_t.numpy(), 0.0)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.equal(fused.n_active, blocked.n_active) and np.array_equal(fused.n_active.numpy(), n_active)
    for name, want in (("ratio_sum", ratio), ("image_sum", image), ("text_sum", text)):
        np.testing.assert_allclose(getattr(fused, name).numpy(), want, rtol=rtol)
        np.testing.assert_allclose(getattr(fused, name).numpy(), getattr(blocked, name).numpy(), rtol=rtol)
    for bad in (-1e-6, float("nan"), float("inf")):
        broken = a_t.clone()
        broken[KERNEL_BLOCK + 5, 4] = bad
        before = fused.ratio_sum.clone()
        with pytest.raises(InputError, match=r"a_text"):
            fused.update(a_i, broken)
        assert torch.equal(fused.ratio_sum, before)


def test_support_and_mass_hand_computed():
    r = modality_dominance(A_I, A_T)
    assert r.support().tolist() == [2, 2, 3, 0] and r.support().dtype == np.int64
    # feature 0: 1 + 2; feature 1: 5 + 1; feature 2: (3 + 1) + (0 + 2) + (1 + 1); feature 3: dead
    np.testing.assert_allclose(r.mass(), [3.0, 6.0, 8.0, 0.0])
    assert r.supported().tolist() == [True, True, True, False]
    assert r.supported(3).tolist() == [False, False, True, False]
    assert not r.supported(4).any()
    agg = modality_dominance(A_I, A_T, form="aggregate")
    np.testing.assert_allclose(agg.mass(), r.mass())


def test_support_errors():
    r = modality_dominance(A_I, A_T)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="min_support must be a non-negative integer"):
            r.supported(bad)
    import dataclasses
    with pytest.raises(ValueError, match="carries no activation mass"):
        dataclasses.replace(r, activation_mass=None).mass()
