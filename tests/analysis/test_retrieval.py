"""Retrieval ranks and recall@k against hand-computed cosines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlib.analysis.retrieval import recall_at_k, retrieval_ranks, retrieval_recall

IMAGE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
TEXT = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0]])


def test_paired_ranks_and_recall_hand_values():
    # cosines worked out by hand: image 0 retrieves text 0; image 1 ranks its text behind text 2; image 2
    # ties text 0 with its own text 2 (ties count in its favour) and ranks behind text 1
    assert retrieval_ranks(IMAGE, TEXT).tolist() == [0, 1, 1]
    assert retrieval_ranks(TEXT, IMAGE).tolist() == [0, 2, 1]
    rec = retrieval_recall(IMAGE, TEXT, ks=(1, 2))
    assert rec == pytest.approx({"i2t@1": 1 / 3, "i2t@2": 1.0, "t2i@1": 1 / 3, "t2i@2": 2 / 3})
    assert retrieval_ranks(IMAGE, TEXT, chunk=1).tolist() == [0, 1, 1]  # chunking changes nothing


def test_ranks_with_explicit_targets():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = torch.tensor([[1.0, 0.1], [1.0, 0.1]])
    # query ~ (1, 0.1): most similar to item 0, then item 2, then item 1
    assert retrieval_ranks(queries, gallery, np.array([0, 1])).tolist() == [0, 2]
    with pytest.raises(ValueError, match="index the gallery"):
        retrieval_ranks(queries, gallery, np.array([0, 3]))
    with pytest.raises(ValueError, match="targets of shape"):
        retrieval_ranks(queries, gallery, np.array([0]))


def test_recall_at_1_hand_computed():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    txt = torch.tensor([[2.0, 0.1], [1.0, 0.0], [1.0, 1.2]])
    # image 0 is closer to caption 1 (cos 1 > 0.999), image 1 to caption 2 (0.77); image 2 finds its own (0.996)
    assert recall_at_k(img, txt, (1,)) == pytest.approx({1: 1 / 3})
    assert np.isnan(recall_at_k(img[:0], txt[:0], (1,))[1])


def test_bad_shapes_and_k():
    with pytest.raises(ValueError, match=r"\(n, d\) and \(m, d\)"):
        retrieval_ranks(IMAGE, TEXT[:, :1])
    with pytest.raises(ValueError, match="positive"):
        recall_at_k(IMAGE, TEXT, (0,))
    with pytest.raises(ValueError, match="paired"):
        retrieval_recall(IMAGE, TEXT[:2])


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_recall_is_monotone_in_k_and_one_at_n(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    rec = recall_at_k(x, y, ks=range(1, n + 1))
    values = [rec[k] for k in range(1, n + 1)]
    assert values == sorted(values) and values[-1] == 1.0
    ranks = retrieval_ranks(x, y)
    assert ranks.min() >= 0 and ranks.max() <= n - 1


def test_ties_against_score_a_collapsed_gallery_as_missed():
    # every caption collapsed onto one vector: all tie for every image
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    txt = torch.ones(3, 2)
    assert retrieval_ranks(img, txt).tolist() == [0, 0, 0]  # in the match's favour: all "retrieved"
    assert retrieval_ranks(img, txt, ties="against").tolist() == [2, 2, 2]
    assert recall_at_k(img, txt, (1, 3), ties="against") == {1: 0.0, 3: 1.0}
    # without ties both rules agree
    untied = retrieval_ranks(IMAGE[:2], TEXT[:2])
    assert retrieval_ranks(IMAGE[:2], TEXT[:2], ties="against").tolist() == untied.tolist()
    with pytest.raises(ValueError, match="ties must be one of"):
        retrieval_ranks(img, txt, ties="random")
