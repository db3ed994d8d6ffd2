"""Smoke tests of the CLIP-InterpreT chapter's figures in mmlib.reporting.plots: they draw and label their axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mmlib.reporting.plots import (  # noqa: E402
    direct_effects_figure,
    null_distribution_figure,
    signed_heatmap,
    titled_image_grid,
)


def test_direct_effects_figure_colours_by_kind():
    effects = pd.DataFrame({"term": ["L0H0", "L0 MLP", "ln_post bias"], "kind": ["head", "mlp", "other"],
                            "effect": [0.5, 0.4, 0.1]})
    fig = direct_effects_figure(effects, title="Figure 10.1 - t")
    ax = fig.axes[0]
    assert len(ax.patches) == 3 and ax.get_ylabel() and ax.get_xlabel()
    assert ax.patches[0].get_facecolor() != ax.patches[1].get_facecolor()
    plt.close(fig)


def test_null_distribution_figure_marks_the_observed_value():
    fig = null_distribution_figure(np.random.default_rng(0).random(100), 0.9, xlabel="association",
                                   null_label="random", observed_label="TextSpan", bins=10)
    ax = fig.axes[0]
    assert len(ax.patches) == 10 and ax.get_xlabel() == "association" and ax.get_ylabel() == "draws"
    assert list(ax.get_lines()[0].get_xdata()) == [0.9, 0.9]
    assert sorted(ax.get_legend_handles_labels()[1]) == ["TextSpan", "random"]
    plt.close(fig)


def test_titled_image_grid_titles_every_image_and_blanks_missing_ones():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    fig = titled_image_grid([[image, image, image], [image]], [["q", "a", "b"], ["c"]],
                            row_labels=["a long row label that wraps", "second"], title="Figure 10.3 - t")
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_title() for ax in axes[0]] == ["q", "a", "b"] and axes[1, 0].get_title() == "c"
    assert not axes[1, 2].axison and "\n" in axes[0, 0].get_ylabel()
    with pytest.raises(ValueError, match="at least one image"):
        titled_image_grid([], [])
    plt.close(fig)


def test_signed_heatmap_is_symmetric_around_zero():
    table = pd.DataFrame([[0.2, -0.5], [0.1, 0.3]], index=["ImgD", "TextD"], columns=["L0H0", "L0H1"])
    fig = signed_heatmap(table, xlabel="head", ylabel="feature category", colorbar="share")
    ax = fig.axes[0]
    low, high = ax.images[0].get_clim()
    assert low == -high == -0.5 and ax.get_xlabel() == "head" and ax.get_ylabel() == "feature category"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ImgD", "TextD"]
    plt.close(fig)
