"""Smoke tests of chapter 03's figures in mmlib.reporting.plots: they draw, label their axes and drop dead features."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mmlib.reporting.plots import (  # noqa: E402
    matched_vs_planted,
    mds_forms_scatter,
    planted_mds_figure,
    rho_threshold_figure,
)


def test_planted_mds_figure_stacks_the_groups():
    scores = np.array([0.95, 0.9, 0.5, 0.05, np.nan, 0.6])
    groups = {"image atoms": np.array([1, 1, 0, 0, 0, 0], bool), "text atoms": np.array([0, 0, 0, 1, 1, 0], bool),
              "matches no atom": np.array([0, 0, 1, 0, 0, 1], bool)}
    fig = planted_mds_figure(scores, groups, np.array([0.5, 0.4, np.nan]), thresholds=(0.3, 0.7), bins=10,
                             title="Figure 3.1 - t")
    ax_a, ax_b = fig.axes
    assert ax_a.get_ylabel() == "number of SAE features" and "MDS" in ax_a.get_xlabel()
    heights = [p.get_height() for p in ax_a.patches]
    assert sum(heights) == 5  # the dead feature is dropped
    assert len(ax_a.lines) == 2 and ax_a.get_legend() is not None
    assert "n=2" in ax_b.get_legend_handles_labels()[1][1]  # null: two alive features
    assert fig._suptitle.get_text() == "Figure 3.1 - t"
    plt.close(fig)


def test_mds_forms_scatter_reports_spearman():
    fig, ax = plt.subplots()
    p = np.array([0.1, 0.5, 0.9, np.nan])
    mds_forms_scatter(ax, {"world": (p, np.array([0.2, 0.4, 0.8, np.nan])), "null": (p, np.array([0.8, 0.5, 0.1, 0]))},
                      styles={"null": {"color": "black", "alpha": 0.25}})
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["world (Spearman 1.00)", "null (Spearman -1.00)"]
    assert len(ax.collections[0].get_offsets()) == 3 and ax.collections[1].get_alpha() == 0.25
    assert ax.get_xlabel() == "paired MDS (default)" and ax.get_ylabel() == "aggregate MDS"
    plt.close(fig)


def test_rho_threshold_figure_and_matched_vs_planted():
    t = pd.DataFrame({"threshold": [0.0, 0.05, 0.1], "rho": [0.2, 0.5, np.nan], "ci_low": [0.1, 0.3, np.nan],
                      "ci_high": [0.3, 0.7, np.nan], "n_matched": [100, 30, 2]})
    fig = rho_threshold_figure({"CLIP · SAE": t, "CLIP · NCL": t.assign(rho=0.1)}, title="Figure 3.4 - t")
    ax_r, ax_n = fig.axes
    assert ax_r.get_ylabel().startswith("Spearman") and ax_n.get_yscale() == "log" and len(ax_n.lines) == 2
    plt.close(fig)
    fig, ax = plt.subplots()
    m = pd.DataFrame({"planted": [0.5, 0.5, 1.0], "mds": [0.1, 0.9, 0.8], "role": ["cross", "cross", "image-only"]})
    matched_vs_planted(ax, m, title="CLIP · SAE · world")
    assert len(ax.collections) == 2 and ax.get_title() == "CLIP · SAE · world"
    offsets = ax.collections[0].get_offsets()
    assert np.all(np.abs(offsets[:, 0] - 0.5) <= 0.015)  # jittered around the planted value
    assert ax.get_xlabel().startswith("ideal MDS") and ax.get_ylabel() == "feature MDS"
    plt.close(fig)
