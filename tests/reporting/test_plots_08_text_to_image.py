"""Smoke tests of the text-to-image figures in mmlib.reporting.plots: they draw, label their axes, style the groups."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mmlib.reporting.plots import EDIT_GROUP_COLOURS, edit_examples, edit_strength_curves  # noqa: E402


def _curve(groups, alphas=(0.0, 0.5, 1.0)):
    return pd.DataFrame([dict(group=g, alpha=a, mean=a / 2, ci_low=a / 4, ci_high=a) for g in groups for a in alphas],
                        columns=["group", "alpha", "mean", "ci_low", "ci_high"])


def test_edit_strength_curves_styles_classes_and_their_random_controls():
    curves = {"control": _curve(["TextD", "random:TextD"]), "preserved": _curve([]), "shift": _curve(["ImgD"])}
    fig = edit_strength_curves(curves, ylabels={"control": "control"}, notes={"preserved": "not measurable"},
                               title="Figure 8.4 - t")
    a0, a1, a2 = fig.axes
    solid, dotted = a0.get_lines()
    assert solid.get_label() == "TextD" and solid.get_linestyle() == "-"
    assert dotted.get_label() == "random:TextD" and dotted.get_linestyle() == ":"
    assert matplotlib.colors.same_color(solid.get_color(), EDIT_GROUP_COLOURS["TextD"])
    assert matplotlib.colors.same_color(dotted.get_color(), EDIT_GROUP_COLOURS["TextD"])
    assert a0.get_ylabel() == "control" and a2.get_ylabel() == "shift" and "α" in a0.get_xlabel()
    assert a1.texts[0].get_text() == "not measurable" and not a1.get_lines() and not a1.get_xticks().size
    assert a0.get_legend() is not None and fig._suptitle.get_text() == "Figure 8.4 - t"
    plt.close(fig)


def test_edit_examples_lays_out_groups_and_strengths():
    img = np.zeros((3, 4, 4, 3), np.uint8)
    images = {("reference", 0.0): img, ("TextD", 0.5): img + 1, ("TextD", 1.0): img + 2, ("ImgD", 1.0): img}
    fig = edit_examples(images, ["ImgD", "TextD"], refs=[0, 2], alphas=(0.0, 0.5, 1.0),
                        ref_labels=["ref 0 → red", "ref 2 → blue"], title="Figure 8.3 - t")
    axes = fig.axes
    assert len(axes) == 6  # ImgD has no image at 0.5: only TextD is shown, 2 refs x 3 strengths
    assert axes[0].get_ylabel() == "TextD"
    assert [ax.get_title() for ax in axes] == ["ref 0 → red\nα = 0.00", "α = 0.50", "α = 1.00",
                                               "ref 2 → blue\nα = 0.00", "α = 0.50", "α = 1.00"]
    assert axes[2].get_images()[0].get_array()[0, 0, 0] == 2  # (TextD, 1.0) of ref 0
    plt.close(fig)
    with pytest.raises(ValueError, match="none of the groups"):
        edit_examples(images, ["CrossD"], refs=[0], alphas=(0.0, 1.0))
