"""World-against-null comparisons: paired differences across seeds, several maps against their null, interval words."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmlib.analysis.null_world import NULL_METRICS, compare_maps_to_null, interval_word, paired_differences
from mmlib.analysis.planted_truth import compare_to_null


def _summary():
    rows = []
    for world, shift in (("world", 0.2), ("null", 0.0)):
        for model, extra in (("CLIP", 0.0), ("DeCLIP-like", 0.1)):
            for seed in (0, 1, 2):
                rows.append(dict(world=world, model=model, map="SAE", seed=seed, mean=0.5 + shift + seed / 100,
                                 share_extreme=0.3 + extra * (world == "world") + seed / 100))
    return pd.DataFrame(rows)


def test_paired_differences_world_minus_null_and_a_difference_of_differences():
    s = _summary()
    d = paired_differences(s, ["mean", "share_extreme"], "world", "world", "null", ["model", "map", "seed"])
    assert list(d.columns) == ["model", "map", "seed", "mean", "share_extreme"] and len(d) == 6
    np.testing.assert_allclose(d["mean"], 0.2)
    np.testing.assert_allclose(d.set_index("model").loc["DeCLIP-like", "share_extreme"], 0.1)
    sep = paired_differences(s, "share_extreme", "model", "DeCLIP-like", "CLIP", ["world", "map", "seed"])
    dd = paired_differences(sep, "share_extreme", "world", "world", "null", ["map", "seed"])
    np.testing.assert_allclose(dd["share_extreme"], 0.1)
    assert list(dd.seed) == [0, 1, 2]


def test_paired_differences_errors():
    s = _summary()
    with pytest.raises(KeyError, match="nope"):
        paired_differences(s, "nope", "world", "world", "null", ["seed"])
    with pytest.raises(ValueError, match="'mars'"):
        paired_differences(s, "mean", "world", "mars", "null", ["model", "map", "seed"])


def test_compare_maps_to_null_keeps_the_chosen_metrics():
    rng = np.random.default_rng(0)
    world, null = rng.beta(0.3, 0.3, 200), rng.beta(5, 5, 200)
    t = compare_maps_to_null({("CLIP", "SAE"): (world, null), ("CLIP", "NCL"): (null, null)})
    assert list(t.columns) == ["model", "map", "metric", "world", "null", "statistic", "p_value"]
    assert len(t) == 2 * len(NULL_METRICS) and list(t.metric[:len(NULL_METRICS)]) == list(NULL_METRICS)
    ref = compare_to_null(world, null).set_index("metric")
    row = t[(t["map"] == "SAE") & (t.metric == "share extreme")].iloc[0]
    assert row.world == ref.loc["share extreme", "world"] and row.p_value == ref.loc["share extreme", "p_value"]
    assert t[(t["map"] == "NCL") & (t.metric == "KS distance")].statistic.iloc[0] == 0.0
    with pytest.raises(KeyError, match="not computed"):
        compare_maps_to_null({("CLIP", "SAE"): (world, null)}, metrics=("median",))
    with pytest.raises(ValueError, match="parts"):
        compare_maps_to_null({("SAE",): (world, null)})


def test_interval_word():
    words = ("more than", "no different from", "fewer than")
    assert interval_word({"ci_low": 0.01, "ci_high": 0.2}, *words) == "more than"
    assert interval_word({"ci_low": -0.2, "ci_high": -0.01}, *words) == "fewer than"
    assert interval_word({"ci_low": -0.2, "ci_high": 0.2}, *words) == "no different from"
    assert interval_word({"ci_low": np.nan, "ci_high": np.nan}, *words) == "no different from"
    assert interval_word({"ci_low": 0.6, "ci_high": 0.7}, *words, value=0.5) == "more than"


def test_paired_differences_keeps_undefined_values_and_drops_unpaired_keys():
    t = pd.DataFrame({"world": ["world", "null", "world", "null", "world"], "seed": [0, 0, 1, 1, 2],
                      "kappa": [0.4, 0.1, np.nan, 0.0, 0.3]})
    d = paired_differences(t, "kappa", "world", "world", "null", ["seed"])
    assert list(d.seed) == [0, 1]  # seed 2 has no null row
    assert d.kappa[0] == pytest.approx(0.3) and np.isnan(d.kappa[1])
