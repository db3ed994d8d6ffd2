"""The evidence of claims 6.1a and 6.1b: the penalty rule, faithfulness tests, the planted positive control and the
lift difference between a spurious and a control world.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from mmlib.companions.splice import SpuriousAudit
from mmlib.companions.splice.evidence import (
    faithfulness_tests,
    lift_difference,
    planted_sparse_recovery,
    sparse_penalty,
)
from mmlib.core.errors import InputError


def test_sparse_penalty_is_the_least_sparse_penalty_under_the_limit():
    sweep = pd.DataFrame(dict(l1_penalty=[0.02, 0.05, 0.1, 0.2], l0_mean=[14.0, 9.5, 6.0, 3.0]))
    assert sparse_penalty(sweep, 10) == 0.05
    assert sparse_penalty(sweep, 5) == 0.2
    assert sparse_penalty(sweep, 2) is None


def _tasks(splice, embeddings, labels):
    """A shape task whose class embeddings are the shape concepts."""
    shapes = torch.stack([splice.dictionary[splice.vocabulary.index(s)]
                          for s in ("circle", "square", "triangle", "cross")])
    return {"shape": (shapes, labels)}


def test_faithfulness_tests_on_planted_images(planted_splice):
    splice, embeddings, labels = planted_splice()
    tests = faithfulness_tests(splice, embeddings, _tasks(splice, embeddings, labels), max_l0=10, min_cosine=0.8,
                               tolerance=0.05)
    assert list(tests.test) == ["mean L0", "mean cosine to the dense embedding", "shape: sparse − dense accuracy"]
    assert list(tests.direction) == ["below", "above", "above"] and list(tests.threshold) == [10, 0.8, -0.05]
    l0, cosine, acc = (tests.iloc[i] for i in range(3))
    assert l0["mean"] < 5 and l0.ci_high < 10  # two concepts planted per image
    assert cosine.ci_low > 0.9 and acc["mean"] == pytest.approx(0.0, abs=0.02)
    assert (tests.ci_low <= tests["mean"]).all() and (tests["mean"] <= tests.ci_high).all()
    # a penalty so large that nothing survives: the cosine falls and shape accuracy collapses to one class
    crushed = faithfulness_tests(splice.with_penalty(5.0), embeddings, _tasks(splice, embeddings, labels), 10, 0.8,
                                 0.05)
    assert crushed.iloc[1].ci_high < 0.8 and crushed.iloc[2].ci_high < -0.05
    with pytest.raises(InputError, match="labels for"):
        faithfulness_tests(splice, embeddings, {"shape": (_tasks(splice, embeddings, labels)["shape"][0],
                                                          labels[:3])}, 10, 0.8, 0.05)


def test_planted_sparse_recovery_is_a_positive_control(planted_splice):
    splice, _, _ = planted_splice()
    good = planted_sparse_recovery(splice, n=60, k=3, seed=1)
    assert good["cosine"] > 0.95 and good["l0"] <= 6 and good["recall"] > 0.9
    # a penalty too large for the planted weights: the control fails, as a powerless instrument should
    bad = planted_sparse_recovery(splice.with_penalty(5.0), n=60, k=3, seed=1)
    assert bad["recall"] < 0.5
    with pytest.raises(InputError, match="planted concepts"):
        planted_sparse_recovery(splice, k=0)


def _audit(tied: np.ndarray, labels: np.ndarray) -> SpuriousAudit:
    return SpuriousAudit(strength=0.0, tie_rate=0.0, hits=0, lift={}, top=pd.DataFrame(), background_accuracy=0.5,
                         tied_weight=tied, labels=labels)


def test_lift_difference_finds_a_planted_lift_and_no_lift_in_its_absence():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 100)
    noise = rng.random((400, 4)) * 0.1
    planted = noise + 0.3 * np.eye(4)[labels]  # each class carries its tied background's weight
    control = rng.random((400, 4)) * 0.1
    out = lift_difference(_audit(planted, labels), _audit(control, labels), n_boot=300)
    assert out["mean"] == pytest.approx(0.3, abs=0.03) and out["ci_low"] > 0.25 and out["ci_high"] < 0.35
    assert out["spurious"] == pytest.approx(0.3, abs=0.03) and abs(out["control"]) < 0.03
    same = lift_difference(_audit(control, labels), _audit(rng.random((400, 4)) * 0.1, labels), n_boot=300)
    assert same["ci_low"] < 0 < same["ci_high"]
    with pytest.raises(InputError, match="no per-image tied weights"):
        lift_difference(dataclasses.replace(_audit(control, labels), tied_weight=None), _audit(control, labels))

