"""Bad inputs to the analysis layer: non-finite tensors, wrong shapes and bad rules give a named mmlib error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlib.analysis.categories import CategoryRule, categorise
from mmlib.analysis.embsim import embsim, top_samples, win_probability, winrate_between, winrate_vs_random
from mmlib.analysis.mds import MDSAccumulator, check_scores, modality_dominance, paired_activations
from mmlib.analysis.planted_truth import compare_to_null, match_features, mutual_information
from mmlib.analysis.retrieval import recall_at_k, retrieval_ranks, retrieval_recall
from mmlib.analysis.zero_shot import linear_probe_accuracy, modality_gap, zero_shot_accuracy, zero_shot_predict
from mmlib.core.errors import ConfigError, InputError, MmlibError, NonFiniteError

BAD = [float("nan"), float("inf"), float("-inf")]
RNG = np.random.default_rng(0)
A_I = torch.tensor([[1.0, 0.0, 3.0], [2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
A_T = torch.tensor([[0.0, 5.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])


def _with(x: torch.Tensor | np.ndarray, i: int, j: int, value: float):
    y = x.clone() if isinstance(x, torch.Tensor) else np.array(x, dtype=float)
    y[i, j] = value
    return y


# ------------------------------------------------------------------------------------------------ MDS
@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("side", ["a_image", "a_text"])
def test_mds_rejects_non_finite_activations(bad, side):
    a_i, a_t = (_with(A_I, 1, 2, bad), A_T) if side == "a_image" else (A_I, _with(A_T, 1, 2, bad))
    with pytest.raises(NonFiniteError, match=rf"{side} holds 1 non-finite.*row 1, column 2"):
        modality_dominance(a_i, a_t)
    with pytest.raises(NonFiniteError, match=side):
        modality_dominance(a_i.numpy(), a_t.numpy(), form="aggregate", chunk_size=1)


@pytest.mark.parametrize("bad", BAD)
def test_mds_chunked_form_names_the_chunk(bad):
    chunks = [(A_I[:2], A_T[:2]), (_with(A_I[2:], 0, 1, bad), A_T[2:])]
    with pytest.raises(NonFiniteError, match=r"chunk 1, image side"):
        modality_dominance(iter(chunks))


def test_mds_used_to_count_a_nan_pair_as_ratio_zero():
    clean = modality_dominance(A_I, A_T).scores
    assert np.isfinite(clean[0])
    with pytest.raises(NonFiniteError):
        modality_dominance(_with(A_I, 2, 0, float("nan")), A_T)


@pytest.mark.parametrize("call, match", [
    (lambda: modality_dominance(-A_I, A_T), "a_image must be non-negative"),
    (lambda: modality_dominance(A_I, -A_T), "a_text must be non-negative"),
    (lambda: modality_dominance(A_I, A_T[:, :2]), "differ in shape"),
    (lambda: modality_dominance(A_I[0], A_T[0]), "shape"),
    (lambda: modality_dominance(A_I, A_T, eps=float("nan")), "eps"),
    (lambda: modality_dominance(A_I, A_T, eps=-1.0), "eps"),
    (lambda: modality_dominance(A_I, A_T, chunk_size=0), "chunk_size"),
    (lambda: modality_dominance(A_I, A_T, chunk_size=1.5), "chunk_size"),
    (lambda: modality_dominance([(A_I, A_T, A_T)]), "chunk 0"),
    (lambda: modality_dominance([A_I]), "chunk 0"),
    (lambda: modality_dominance(5), "a_image"),
    (lambda: modality_dominance(np.array([["a", "b"]]), np.array([["c", "d"]])), "a_image"),
    (lambda: MDSAccumulator(0), "n_features"),
    (lambda: MDSAccumulator(3, block_rows=0), "block_rows"),
    (lambda: MDSAccumulator(3).merge(MDSAccumulator(4)), "same n_features"),
])
def test_mds_bad_inputs_name_the_input(call, match):
    with pytest.raises(InputError, match=match):
        call()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 8), k=st.integers(1, 4), data=st.data(),
       bad=st.sampled_from(BAD), side=st.sampled_from(["a_image", "a_text"]), chunk=st.integers(1, 4))
def test_mds_any_single_non_finite_entry_raises(n, k, data, bad, side, chunk):
    a_i = RNG.random((n, k))
    a_t = RNG.random((n, k))
    i, j = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, k - 1))
    (a_i if side == "a_image" else a_t)[i, j] = bad
    with pytest.raises(NonFiniteError, match=side):
        modality_dominance(a_i, a_t, chunk_size=chunk)


@pytest.mark.parametrize("bad", BAD)
def test_paired_activations_rejects_non_finite_embeddings(bad):
    class Identity:
        def encode(self, z, modality):
            return z.abs()
    z = torch.ones(3, 2)
    with pytest.raises(NonFiniteError, match="z_text"):
        list(paired_activations(Identity(), z, _with(z, 2, 1, bad)))


# ------------------------------------------------------------------------------------ MDS scores
def test_check_scores_keeps_nan_for_dead_features_but_rejects_inf_and_out_of_range():
    np.testing.assert_array_equal(np.isnan(check_scores(np.array([0.2, np.nan]))), [False, True])
    with pytest.raises(NonFiniteError, match="mds.*index 1"):
        check_scores(np.array([0.2, np.inf]))
    with pytest.raises(InputError, match=r"outside \[0, 1\].*index 0"):
        check_scores(np.array([1.5, 0.2]))
    with pytest.raises(InputError, match="shape"):
        check_scores(np.zeros((2, 2)))


@pytest.mark.parametrize("bad", [float("inf"), -0.1, 2.0])
def test_categorise_rejects_impossible_scores_but_keeps_dead(bad):
    scores = np.array([0.1, 0.5, 0.9, np.nan])
    assert categorise(scores).sizes()["dead"] == 1
    with pytest.raises(InputError, match="mds"):
        categorise(np.array([0.1, bad, 0.9, np.nan]))


def test_compare_to_null_rejects_inf_scores():
    w = np.array([0.1, 0.5, 0.9, np.nan])
    with pytest.raises(NonFiniteError, match="null"):
        compare_to_null(w, np.array([0.1, np.inf, 0.5]))


@pytest.mark.parametrize("kwargs", [dict(k="1"), dict(k=float("nan")), dict(k=-1.0), dict(k=True),
                                    dict(kind="fixed", high=1.5), dict(kind="fixed", low=float("nan")),
                                    dict(kind="fixed", high=0.3, low=0.6), dict(kind="mean"), dict(kind=3)])
def test_category_rule_rejects_bad_fields(kwargs):
    with pytest.raises(ConfigError, match="CategoryRule|rule"):
        CategoryRule(**kwargs)


# -------------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("bad", BAD)
def test_metrics_reject_non_finite_embeddings(bad):
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    c = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    labels = np.array([0, 1, 2, 0, 1, 2])
    cases = [
        (lambda: retrieval_ranks(_with(x, 2, 3, bad), y), "queries.*row 2, column 3"),
        (lambda: recall_at_k(x, _with(y, 1, 0, bad)), "gallery.*row 1, column 0"),
        (lambda: retrieval_recall(_with(x, 0, 0, bad), y), "image"),
        (lambda: zero_shot_predict(_with(x, 4, 1, bad), c), "image_emb.*row 4, column 1"),
        (lambda: zero_shot_accuracy(x, _with(c, 0, 2, bad), labels), "class_emb.*row 0, column 2"),
        (lambda: modality_gap(x, _with(y, 5, 3, bad)), "text_emb.*row 5, column 3"),
        (lambda: linear_probe_accuracy(_with(x, 1, 1, bad).numpy(), labels, x.numpy(), labels), "x_train"),
        (lambda: linear_probe_accuracy(x.numpy(), labels, _with(x, 1, 1, bad).numpy(), labels), "x_test"),
        (lambda: match_features(_with(x.abs(), 3, 2, bad), y.abs(), None, ["f"]), "a_image.*row 3, column 2"),
        (lambda: top_samples(_with(x, 3, 3, bad), m=2), "activations.*row 3, column 3"),
        (lambda: top_samples([x[:3], _with(x[3:], 0, 0, bad)], m=2), r"activations \(chunk 1\)"),
        (lambda: embsim(_with(x, 1, 2, bad), np.array([[0, 1], [2, 3]])), r"embeddings \(row 1\)"),
    ]
    for call, match in cases:
        with pytest.raises(NonFiniteError, match=match):
            call()


def test_shape_mismatches_name_both_inputs():
    x = torch.randn(6, 4)
    with pytest.raises(InputError, match=r"image .*\(6, 4\).*text .*\(5, 4\)"):
        modality_gap(x, x[:5])
    with pytest.raises(InputError, match="x_train.*x_test"):
        linear_probe_accuracy(x.numpy(), np.zeros(6), x[:, :3].numpy(), np.zeros(6))
    with pytest.raises(InputError, match="image_emb"):
        zero_shot_predict(x[0], x)


def test_winrates_drop_nan_but_reject_inf():
    a, b = np.array([0.5, np.nan, 0.7]), np.array([0.1, 0.2])
    assert winrate_vs_random(a, b, n_boot=10).n == 2           # NaN = a feature not scored, documented
    with pytest.raises(NonFiniteError, match="feature_embsim"):
        winrate_vs_random(np.array([0.5, np.inf]), b, n_boot=10)
    with pytest.raises(NonFiniteError, match="embsim_b"):
        winrate_between(a, np.array([0.1, -np.inf]), n_boot=10)
    with pytest.raises(NonFiniteError, match="reference"):
        win_probability(np.array([0.1]), np.array([np.nan]))


def test_mutual_information_rejects_float_codes():
    with pytest.raises(InputError, match="codes"):
        mutual_information(np.array([[0.5], [1.0]]), np.array([0, 1]))


def test_all_errors_are_mmlib_errors():
    with pytest.raises(MmlibError):
        modality_dominance(A_I, A_T, form="mean")
