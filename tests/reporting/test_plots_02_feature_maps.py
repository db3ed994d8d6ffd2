"""Smoke tests of chapter 02's figures in mmlib.reporting.plots: they draw every panel with labelled axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mmlib.reporting.plots import planted_recovery_figure, purity_figure, sparsity_frontier_figure  # noqa: E402


def _planted_table() -> pd.DataFrame:
    rows = []
    for kind, setting, rec in (("relu_l1", "λ=0.03", 0.5), ("relu_l1", "λ=0.3", 1.0), ("topk", "k=1", 0.4),
                               ("relu_l1 (seed)", "λ=0.3, seed 1", 0.95)):
        rows.append(dict(kind=kind, setting=setting, l0_image=3.0, l0_text=4.0, recovered=rec, recovered_shared=rec,
                         recovered_image=rec, recovered_text=rec))
    return pd.DataFrame(rows)


def test_planted_recovery_figure_panels():
    cosines = {"λ=0.3": np.linspace(0.5, 1, 8), "k=1": np.linspace(0, 1, 8)}
    fig = planted_recovery_figure(_planted_table(), cosines, planted_l0=3.0, atom_counts={"shared": 4, "image": 2,
                                  "text": 2}, curves={"λ=0.3": "-", "k=1": ":"}, groups=("λ=0.03", "λ=0.3", "k=1"),
                                  title="t")
    ax_a, ax_b, ax_c = fig.axes
    assert len(ax_a.lines) == 2 + 1 and all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    labels = ax_c.get_legend_handles_labels()[1]
    assert labels == ["λ=0.03", "λ=0.3 (2 seeds)", "k=1"]       # the seed variant joins its setting
    assert [t.get_text() for t in ax_c.get_xticklabels()] == ["shared (4 atoms)", "image (2 atoms)", "text (2 atoms)"]
    plt.close(fig)


def test_sparsity_frontier_figure_draws_both_kinds_and_the_default():
    frontier = pd.DataFrame({"kind": ["relu_l1", "relu_l1", "topk"], "setting": ["λ=0.1", "λ=1", "k=8"],
                             "l0": [7.0, 1.0, 8.0], "fvu": [0.03, 0.3, 0.01], "dead_both": [0.6, 0.9, 0.8]})
    default = pd.DataFrame({"l0": [7.0, 7.5], "fvu": [0.03, 0.04], "dead_both": [0.6, 0.7]})
    fig = sparsity_frontier_figure(frontier, default, seed=0, title="t")
    ax_f, ax_d = fig.axes
    assert ax_f.get_xscale() == "log" and ax_f.get_yscale() == "log" and ax_d.get_yscale() == "linear"
    assert "default SAE, 2 seeds (± 1 sd)" in ax_f.get_legend_handles_labels()[1]
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    plt.close(fig)


def test_purity_figure_histograms_and_shares():
    rng = np.random.default_rng(0)
    purity = pd.DataFrame({"map": np.repeat(["raw", "SAE"], 20), "side": np.tile(["image", "text"], 20),
                           "purity": rng.uniform(0.5, 1.0, 40), "factor": np.tile(["shape", "colour"], 20)})
    fig = purity_figure(purity, rng.uniform(0.4, 0.7, 100), m=20, n_features={"raw": 8, "SAE": 16}, n_seeds=2,
                        factors=["shape", "colour", "size"], title="t")
    axes = fig.axes
    assert len(axes) >= 3 and all(ax.get_xlabel() and ax.get_ylabel() for ax in axes[:3])
    assert "random 20-sets" in axes[0].get_legend_handles_labels()[1]
    assert [t.get_text().split("\n")[0] for t in axes[2].get_xticklabels()] == ["raw", "SAE"]
    plt.close(fig)
