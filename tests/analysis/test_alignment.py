"""Claim 5.2 against planted truth: expected classes from roles, the matched-feature table, kappa, galleries."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from mmlib.analysis.alignment import (
    ROLE_CLASS,
    ROLE_ORDER,
    class_alignment,
    class_role_counts,
    expected_classes,
    gallery_rows,
    matched_classes,
)
from mmlib.analysis.categories import categorise
from mmlib.analysis.embsim import top_samples
from mmlib.analysis.planted_truth import FactorMatch
from mmlib.data.world import default_factors


def _match(best_factor, best_score):
    best_factor = np.asarray(best_factor, dtype=str)
    return FactorMatch(factors=tuple(sorted(set(best_factor) - {""})), scores=np.zeros((len(best_factor), 1)),
                       best_factor=best_factor, best_score=np.asarray(best_score, dtype=float), metric="nmi",
                       binarise="active")


def test_expected_classes_follow_roles_and_the_binary_values():
    factors = default_factors()
    expected = expected_classes(factors)
    assert expected["shape=circle"] == "CrossD" and expected["position=upper left"] == "ImgD"
    assert expected["owner=alice"] == "TextD" and expected["mood=happy"] == "TextD"
    assert expected["gender=female"] == "ImgD" and expected["gender=male"] == "TextD"  # p_depict 0.9/0.2
    assert len(expected) == sum(len(f.values) for f in factors)
    assert set(ROLE_CLASS) | {"binary"} == set(ROLE_ORDER)
    odd = dataclasses.replace(factors[0], role="mystery")
    with pytest.raises(ValueError, match="mystery"):
        expected_classes([odd])


ROLES = {"shape": "cross", "texture": "image-ladder", "owner": "text-only"}
EXPECTED = {"shape=circle": "CrossD", "texture=plain": "ImgD", "owner=bob": "TextD"}


def test_matched_classes_keeps_alive_matched_features():
    cats = categorise(np.array([0.9, 0.5, 0.1, np.nan, 0.95, 0.5]), "fixed")
    match = _match(["texture=plain", "shape=circle", "owner=bob", "shape=circle", "shape=circle", ""],
                   [0.2, 0.3, 0.1, 0.5, 0.01, 0.0])
    t = matched_classes(cats, match, EXPECTED, ROLES, 0.05)
    assert list(t.feature) == [0, 1, 2]  # dead (3), below the threshold (4) and unmatched (5) left out
    assert list(t.columns) == ["feature", "category", "target", "factor", "role", "expected", "nmi", "mds"]
    assert list(t.category) == ["ImgD", "CrossD", "TextD"] and list(t.expected) == ["ImgD", "CrossD", "TextD"]
    assert list(t.role) == ["image-ladder", "cross", "text-only"] and list(t.mds) == [0.9, 0.5, 0.1]
    with pytest.raises(ValueError, match="categorised"):
        matched_classes(cats, _match(["shape=circle"], [0.3]), EXPECTED, ROLES, 0.05)


def test_class_alignment_kappa_and_shares():
    perfect = pd.DataFrame({"category": ["ImgD", "CrossD", "TextD"], "expected": ["ImgD", "CrossD", "TextD"]})
    a = class_alignment(perfect)
    assert a["kappa"] == pytest.approx(1.0) and a["agreement"] == 1.0 and a["n_matched"] == 3
    assert a["ImgD_n"] == 1 and a["ImgD_as_expected"] == 1.0
    # one expected class: kappa is 0 whatever the MDS classes
    cross = pd.DataFrame({"category": ["ImgD", "CrossD", "TextD", "CrossD"], "expected": ["CrossD"] * 4})
    c = class_alignment(cross)
    assert c["kappa"] == pytest.approx(0.0) and c["agreement"] == 0.5
    assert c["ImgD_as_expected"] == 0.0 and c["CrossD_as_expected"] == 1.0 and c["CrossD_n"] == 2
    assert np.isnan(class_alignment(perfect.iloc[:1])["kappa"])
    empty = class_alignment(perfect.iloc[:0])
    assert empty["n_matched"] == 0 and np.isnan(empty["ImgD_as_expected"]) and empty["TextD_n"] == 0
    counts = class_role_counts(pd.DataFrame({"category": ["ImgD", "ImgD", "TextD"],
                                             "role": ["cross", "binary", "cross"]}))
    assert counts.shape == (3, len(ROLE_ORDER)) and counts.values.sum() == 3
    assert counts.loc["ImgD", "binary"] == 1 and counts.loc["CrossD"].sum() == 0


def test_gallery_rows_falls_back_where_a_class_is_empty():
    scores = np.array([0.85, 0.5, 0.55, 0.05, 0.1])
    cats = categorise(scores, "fixed:0.9/0.2")  # ImgD empty under this rule
    fallback = categorise(scores, "fixed:0.8/0.2")
    match = _match(["texture=plain", "shape=circle", "shape=circle", "owner=bob", "owner=bob"],
                   [0.3, 0.1, 0.2, 0.4, 0.5])
    acts = torch.tensor(np.random.default_rng(0).random((10, 5)), dtype=torch.float32)
    top_i, top_t = top_samples(acts, 3), top_samples(acts, 2)
    index = np.arange(100, 110)
    rows = gallery_rows("SAE", cats, fallback, match, top_i, top_t, index, per_class=2)
    labels = [r[0] for r in rows]
    assert labels[0] == "SAE #0 ImgD (fixed 0.8/0.2: empty under fixed 0.9/0.2), MDS 0.85: texture=plain (NMI 0.30)"
    # TextD = {3, 4}, CrossD = {0, 1, 2} (0.85 is not above 0.9): best matched first, two per class
    assert [lab.split()[1] for lab in labels] == ["#0", "#4", "#3", "#0", "#2"]
    np.testing.assert_array_equal(rows[0][1], 100 + top_i.indices[0].numpy())
    assert len(rows[0][1]) == 3 and len(rows[0][2]) == 2
