"""Seeded percentile bootstrap, the across-seed aggregation and Wilson intervals, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from mmlib.core.stats import across_seeds, bootstrap_ci, format_ci, mean_bootstrap_ci, proportion_ci


def test_bootstrap_of_a_constant_and_determinism():
    assert bootstrap_ci(np.mean, np.full(10, 3.0)) == (3.0, 3.0)
    x = np.random.default_rng(0).normal(size=50)
    assert bootstrap_ci(np.mean, x, seed=4) == bootstrap_ci(np.mean, x, seed=4)
    low, high = mean_bootstrap_ci(x, n_boot=2000)
    assert low < x.mean() < high
    # the vectorised mean bootstrap and the generic one agree to Monte Carlo error
    g_low, g_high = bootstrap_ci(np.mean, x, n_boot=2000)
    assert low == pytest.approx(g_low, abs=0.05) and high == pytest.approx(g_high, abs=0.05)
    assert np.isnan(mean_bootstrap_ci(np.array([1.0, np.nan]))[0])  # one finite value: no interval


def test_paired_bootstrap_resamples_rows_jointly():
    x = np.arange(20.0)
    low, high = bootstrap_ci(lambda a, b: float(np.all(a == b)), x, x.copy(), n_boot=100)
    assert (low, high) == (1.0, 1.0)
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_ci(np.mean, x, x[:3])


def test_across_seeds_hand_computed():
    table = pd.DataFrame({"seed": [0, 1, 2, 0, 1, 2], "map": ["sae"] * 3 + ["ncl"] * 3,
                          "winrate": [0.6, 0.7, 0.8, 0.5, 0.5, 0.5]})
    out = across_seeds(table, "winrate", by="map").set_index("map")
    half = sps.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)  # std of (0.6, 0.7, 0.8) is 0.1
    assert out.loc["sae", "mean"] == pytest.approx(0.7) and out.loc["sae", "std"] == pytest.approx(0.1)
    assert (out.loc["sae", "ci_low"], out.loc["sae", "ci_high"]) == pytest.approx((0.7 - half, 0.7 + half))
    assert out.loc["ncl", "ci_low"] == pytest.approx(0.5) and out.loc["sae", "n_seeds"] == 3
    with pytest.raises(ValueError, match="at least 3"):
        across_seeds(table[table.seed < 2], "winrate", by="map")
    with pytest.raises(ValueError, match="not in the table"):
        across_seeds(table, "embsim")


def test_format_ci_hand_written():
    row = {"mean": 0.1234, "ci_low": -0.05, "ci_high": 0.3}
    assert format_ci(row) == "0.123 [-0.050, 0.300]"
    assert format_ci(row, digits=1, signed=True) == "+0.1 [-0.1, +0.3]"
    assert format_ci(pd.Series(row), digits=0) == "0 [-0, 0]"
    nan = float("nan")
    assert format_ci({"mean": nan, "ci_low": nan, "ci_high": nan}) == "n/a"
    assert format_ci({"mean": 0.25, "ci_low": nan, "ci_high": nan}, digits=2, signed=True) == "+0.25 (no interval)"
    with pytest.raises(KeyError, match="ci_high"):
        format_ci({"mean": 1.0, "ci_low": 0.0})


def test_proportion_ci():
    low, high = proportion_ci(50, 100)
    assert low < 0.5 < high and high - low == pytest.approx(0.19, abs=0.01)
    assert all(math.isnan(v) for v in proportion_ci(0, 0))


def test_ci_row_interval_side_and_finite_mean():
    import pandas as pd

    from mmlib.core.stats import ci_row, finite_mean, interval_side

    table = pd.DataFrame({"map": ["SAE", "NCL"], "mean": [0.1, 0.2], "ci_low": [0.05, -0.1], "ci_high": [0.2, 0.3]})
    assert ci_row(table, map="NCL")["mean"] == 0.2
    with pytest.raises(KeyError, match="exactly one row"):
        ci_row(table, map="raw")
    with pytest.raises(KeyError, match="not in the table"):
        ci_row(table, model="CLIP")
    assert interval_side(ci_row(table, map="SAE")) == 1 and interval_side(ci_row(table, map="NCL")) == 0
    assert interval_side({"ci_low": -2.0, "ci_high": -1.0}) == -1
    assert interval_side({"ci_low": float("nan"), "ci_high": float("nan")}) == 0
    assert interval_side({"ci_low": 0.6, "ci_high": 0.9}, value=0.5) == 1
    assert finite_mean([1.0, float("nan"), 3.0, float("inf")]) == 2.0
    assert math.isnan(finite_mean([float("nan")]))


def test_format_ci_column_is_a_series_even_for_an_empty_table():
    import pandas as pd

    from mmlib.core.stats import format_ci, format_ci_column

    table = pd.DataFrame({"mean": [0.5, -0.25], "ci_low": [0.25, -0.5], "ci_high": [0.75, float("nan")]},
                         index=["a", "b"])
    cells = format_ci_column(table, digits=2, signed=True)
    assert cells.to_dict() == {"a": "+0.50 [+0.25, +0.75]", "b": format_ci(table.loc["b"], digits=2, signed=True)}
    empty = format_ci_column(table.iloc[:0])
    assert isinstance(empty, pd.Series) and empty.empty
    assert list(table.iloc[:0].assign(cell=empty).columns) == ["mean", "ci_low", "ci_high", "cell"]
    with pytest.raises(TypeError):
        format_ci_column([1, 2])


# ------------------------------------------------------------------------- feasible intervals, cluster bootstrap


def test_percentile_interval_across_seeds_stays_in_range():
    """Three seeds' proportions near 1: the t interval leaves [0, 1], the percentile bootstrap cannot."""
    table = pd.DataFrame({"seed": [0, 1, 2], "share": [0.90, 1.00, 0.99]})
    t_row = across_seeds(table, "share").iloc[0]
    p_row = across_seeds(table, "share", method="percentile").iloc[0]
    assert t_row.ci_high > 1  # the problem the percentile method fixes
    assert 0.90 <= p_row.ci_low <= p_row["mean"] <= p_row.ci_high <= 1.00
    assert p_row["mean"] == pytest.approx(t_row["mean"])
    again = across_seeds(table, "share", method="percentile").iloc[0]
    assert (again.ci_low, again.ci_high) == (p_row.ci_low, p_row.ci_high)  # seeded
    with pytest.raises(ValueError, match="method"):
        across_seeds(table, "share", method="wald")


def test_bounded_interval_is_the_t_interval_inside_the_range():
    """Hand values: the t interval of (0.90, 1.00, 0.99) is 0.963 +- 0.136; bounded to a proportion its top is 1."""
    from mmlib.core.stats import CORRELATION, NON_NEGATIVE, PROPORTION

    table = pd.DataFrame({"seed": [0, 1, 2], "share": [0.90, 1.00, 0.99], "count": [0.0, 1.0, 5.0],
                          "gap": [-0.5, 0.2, 0.4]})
    t_rows = across_seeds(table, ["share", "count", "gap"]).set_index("value")
    rows = across_seeds(table, ["share", "count", "gap"],
                        bounds={"share": PROPORTION, "count": NON_NEGATIVE}).set_index("value")
    half = sps.t.ppf(0.975, 2) * np.std([0.90, 1.00, 0.99], ddof=1) / np.sqrt(3)
    assert rows.loc["share", "ci_low"] == pytest.approx(0.9633 - half, abs=1e-4)
    assert rows.loc["share", "ci_high"] == 1.0 and t_rows.loc["share", "ci_high"] > 1
    assert rows.loc["count", "ci_low"] == 0.0 and t_rows.loc["count", "ci_low"] < 0
    assert rows.loc["count", "ci_high"] == t_rows.loc["count", "ci_high"]  # an open top is left alone
    assert rows.loc["gap"].equals(t_rows.loc["gap"])  # a column without bounds is the t interval
    one = across_seeds(table, "gap", bounds=CORRELATION).iloc[0]
    assert -1 <= one.ci_low <= one["mean"] <= one.ci_high <= 1
    for bad, match in (({"share": (1, 0)}, "low < high"), ({"share": 0.5}, "pair"), ({"nope": PROPORTION}, "nope"),
                       ({"count": PROPORTION}, "outside its feasible range")):
        with pytest.raises(ValueError, match=match):
            across_seeds(table, ["share", "count"], bounds=bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=6), st.sampled_from([0.8, 0.95, 0.99]))
def test_bounded_interval_never_leaves_its_range_and_holds_the_mean(values, confidence):
    from mmlib.core.stats import PROPORTION

    table = pd.DataFrame({"seed": range(len(values)), "share": values})
    row = across_seeds(table, "share", min_seeds=2, confidence=confidence, bounds=PROPORTION).iloc[0]
    t_row = across_seeds(table, "share", min_seeds=2, confidence=confidence).iloc[0]
    assert 0.0 <= row.ci_low <= row["mean"] + 1e-12 and row["mean"] - 1e-12 <= row.ci_high <= 1.0
    assert row.ci_low >= t_row.ci_low and row.ci_high <= t_row.ci_high  # never wider than the t interval


def test_cluster_bootstrap_is_wider_than_a_row_bootstrap_for_clustered_rows():
    """30 rows in 3 clusters of identical rows: a row bootstrap sees 30 independent points, a cluster bootstrap 3."""
    from mmlib.core.stats import cluster_bootstrap_ci

    rng = np.random.default_rng(0)
    centres = rng.normal(size=3)
    x = np.repeat(centres, 10)
    clusters = np.repeat(["a", "b", "c"], 10)
    rows = bootstrap_ci(np.mean, x, n_boot=500)
    whole = cluster_bootstrap_ci(np.mean, x, clusters=clusters, n_boot=500)
    assert whole[1] - whole[0] > 1.5 * (rows[1] - rows[0])
    # each resample mean is a mean of the 3 centres drawn with replacement (equal cluster sizes)
    assert centres.min() - 1e-12 <= whole[0] <= whole[1] <= centres.max() + 1e-12
    assert cluster_bootstrap_ci(np.mean, x, clusters=clusters, n_boot=500) == whole  # seeded


def test_cluster_bootstrap_keeps_pairs_together_and_validates():
    from mmlib.core.stats import cluster_bootstrap_ci

    x = np.arange(6.0)
    seen = []
    cluster_bootstrap_ci(lambda a, b: seen.append((a.copy(), b.copy())) or 0.0, x, 10 * x,
                         clusters=[0, 0, 1, 1, 2, 2], n_boot=20)
    assert all(np.array_equal(b, 10 * a) and len(a) % 2 == 0 for a, b in seen)
    assert all(math.isnan(v) for v in cluster_bootstrap_ci(np.mean, x, clusters=np.zeros(6)))  # one cluster
    with pytest.raises(ValueError, match="length"):
        cluster_bootstrap_ci(np.mean, x, clusters=[0, 1])
    with pytest.raises(ValueError, match="at least one sample"):
        cluster_bootstrap_ci(np.mean, clusters=[0, 1])
    with pytest.raises(ValueError, match="n_boot"):
        cluster_bootstrap_ci(np.mean, x, clusters=[0, 0, 1, 1, 2, 2], n_boot=0)
