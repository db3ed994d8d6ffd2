"""Smoke tests of the adversarial figures in mmlib.reporting.plots: they draw, label their axes, place the bars and
the reference lines, and colour the categories.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mmlib.reporting.plots import category_ratio_dots, defence_accuracy_figure, steering_bars  # noqa: E402


def test_category_ratio_dots_one_dot_per_seed_and_a_reference_line():
    rows = [dict(world=w, map=m, group=g, seed=s, ratio=1 + 0.1 * s) for w in ("world", "null") for m in ("SAE", "NCL")
            for g in ("ImgD", "TextD", "CrossD") for s in range(3) if not (m == "SAE" and g == "ImgD" and s < 2)]
    fig = category_ratio_dots(pd.DataFrame(rows), maps=("SAE", "NCL"), title="Figure 7.3 - t")
    sae, ncl = fig.axes
    assert sae.get_title() == "SAE" and sae.get_ylabel() and sae.get_xlabel()
    assert [t.get_text() for t in sae.get_xticklabels()] == ["world", "null"]
    offsets = [len(c.get_offsets()) for c in sae.collections if hasattr(c, "get_offsets") and c.get_offsets().ndim == 2]
    assert 1 in offsets and 3 in offsets  # SAE's ImgD has one seed
    assert any(np.allclose(line.get_ydata(), 1.0) for line in sae.get_lines())  # the reference
    assert [t.get_text() for t in sae.get_legend().get_texts()] == ["ImgD", "TextD", "CrossD"]
    plt.close(fig)


def test_defence_accuracy_figure_bars_intervals_and_curves():
    table = pd.DataFrame([dict(map=m, selection=s, clean=0.9, clean_low=0.85, clean_high=0.95, robust=r,
                               robust_low=r - 0.05, robust_high=r + 0.05)
                          for m, s, r in (("-", "none", 0.2), ("SAE", "TextD", 0.5), ("NCL", "TextD", 0.4))])
    histories = {("SAE", "TextD"): list(np.linspace(1, 0.1, 30)), ("NCL", "TextD"): list(np.linspace(2, 0.2, 30))}
    order = [("-", "none"), ("SAE", "TextD"), ("NCL", "TextD")]
    fig = defence_accuracy_figure(table, histories, order, ylabel="zero-shot shape accuracy", title="Figure 7.4 - t")
    bars, curves = fig.axes
    assert len(bars.patches) == 2 * len(order)
    assert [p.get_height() for p in bars.patches[1::2]] == [0.2, 0.5, 0.4]
    assert [t.get_text() for t in bars.get_xticklabels()] == ["no defence", "SAE\nTextD", "NCL\nTextD"]
    assert bars.get_ylabel() == "zero-shot shape accuracy" and bars.get_xlabel()
    assert any(np.allclose(line.get_ydata(), 0.2) for line in bars.get_lines())  # robust accuracy without defence
    solid, dashed = curves.get_lines()
    assert solid.get_linestyle() == "-" and dashed.get_linestyle() == "--"
    assert curves.get_yscale() == "log" and curves.get_xlabel() and curves.get_ylabel()
    plt.close(fig)


def test_steering_bars_one_panel_per_measure_and_the_control():
    rows = [dict(map=m, selection=s, measure=q, mean=v, ci_low=v - 0.1, ci_high=v + 0.1)
            for m, s, v in (("-", "noise", 0.01), ("SAE", "TextD", 0.3), ("SAE", "ImgD", 0.1))
            for q in ("i2t_target_gain", "selectivity")]
    table = pd.DataFrame(rows)
    table.loc[(table.selection == "noise") & (table.measure == "selectivity"), ["mean", "ci_low", "ci_high"]] = np.nan
    fig = steering_bars(table, [("SAE", "TextD"), ("SAE", "ImgD")], ("i2t_target_gain", "selectivity"),
                        ylabels={"selectivity": "benign-std units"}, title="Figure 7.5 - t")
    gain, sel = fig.axes
    assert len(gain.patches) == 2 and gain.patches[0].get_height() == 0.3
    assert gain.get_legend() is not None and sel.get_legend() is None  # the control is undefined for selectivity
    assert sel.get_ylabel() == "benign-std units" and gain.get_ylabel() == "i2t_target_gain" and gain.get_xlabel()
    assert gain.get_title() == "i2t target gain"
    plt.close(fig)
