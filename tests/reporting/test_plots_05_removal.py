"""The removal chapter's figure: excess drops per map and task, world against null."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mmlib.reporting.plots import excess_drop_grid  # noqa: E402


def test_excess_drop_grid_one_panel_per_map_and_task():
    rows = [dict(map=m, task=t, world=w, group=g, seed=s, excess=0.1 * s - 0.05)
            for m in ("SAE", "NCL") for t in ("a", "b", "c") for w in ("world", "null")
            for g in ("ImgD", "TextD", "CrossD") for s in range(3)]
    fig = excess_drop_grid(pd.DataFrame(rows), title="Figure 5.3 - test")
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_title() for ax in axes[0]] == ["SAE · a", "SAE · b", "SAE · c"]
    assert axes[1, 0].get_title() == "NCL · a"
    ax = axes[0, 0]
    assert ax.get_ylabel() == "excess drop (group − random)" and ax.get_xlabel() == "world (3 groups each)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["world", "null"]
    assert len(ax.collections) == 2 * 3 * 2  # a scatter and a mean line per world and group
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ImgD", "TextD", "CrossD"]
    assert fig._suptitle.get_text() == "Figure 5.3 - test"
    plt.close(fig)
