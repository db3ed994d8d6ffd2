"""Smoke tests of chapter 04's figures in mmlib.reporting.plots: count heatmaps and agreement matrices."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mmlib.reporting.plots import agreement_matrices, count_heatmaps  # noqa: E402


def test_count_heatmaps_annotate_counts_and_colour_row_shares():
    tab = pd.DataFrame([[2, 0], [0, 0], [1, 3]], index=["ImgD", "TextD", "CrossD"], columns=["cross", "binary"])
    fig = count_heatmaps({("SAE", "world"): tab, ("SAE", "null"): tab * 2}, xlabel="role", ylabel="class",
                         title="Figure 4.1 - t")
    ax = fig.axes[0]
    assert ax.get_title() == "SAE · world" and ax.get_xlabel() == "role" and ax.get_ylabel() == "class"
    assert [t.get_text() for t in ax.texts] == ["2", "0", "0", "0", "1", "3"]
    image = np.ma.filled(np.ma.asarray(ax.images[0].get_array(), dtype=float), np.nan)
    assert image[0, 0] == 1.0 and image[2, 1] == 0.75
    assert np.isnan(image[1]).all()  # an empty row has no shares
    assert len(fig.axes) == 3  # two panels and the colour bar
    plt.close(fig)


def test_agreement_matrices_label_axes():
    names = ["a", "b"]
    m = pd.DataFrame([[1.0, 0.3], [0.3, 1.0]], index=pd.Index(names, name="rule_a"),
                     columns=pd.Index(names, name="rule_b"))
    fig = agreement_matrices({"SAE · world": m, "SAE · null": m}, xlabel="rule", ylabel="rule", title="Figure 4.5")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "rule" and ax.get_title() == "SAE · world"
    assert [t.get_text() for t in ax.texts] == ["1.00", "0.30", "0.30", "1.00"]
    fig2 = agreement_matrices({"x": m})
    assert fig2.axes[0].get_xlabel() == "rule_b" and fig2.axes[0].get_ylabel() == "rule_a"
    plt.close(fig)
    plt.close(fig2)
