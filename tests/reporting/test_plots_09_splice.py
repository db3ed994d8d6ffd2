"""Smoke tests of the SpLiCE chapter's figures in mmlib.reporting.plots: they draw and label their axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mmlib.reporting.plots import grouped_bars  # noqa: E402


def test_grouped_bars_one_bar_per_cell_and_a_zero_line():
    table = pd.DataFrame({"world": [0.1, -0.05, 0.2], "control": [0.0, 0.02, 0.01]},
                         index=pd.Index(["circle", "square", "cross"], name="shape class"))
    fig = grouped_bars(table, xlabel="shape class", ylabel="lift", title="Figure 9.3 - t")
    ax = fig.axes[0]
    assert len(ax.patches) == 6 and ax.get_xlabel() == "shape class" and ax.get_ylabel() == "lift"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["circle", "square", "cross"]
    assert any(list(line.get_ydata()) == [0, 0] for line in ax.get_lines())
    assert ax.get_title() == "Figure 9.3 - t" and ax.get_legend() is not None
    plt.close(fig)
