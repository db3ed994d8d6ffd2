"""Smoke tests of the MDS-chapter figures in mmlib.reporting.plots: they draw, label their axes and keep NaN out."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mmlib.data.world import WorldConfig, generate_world  # noqa: E402
from mmlib.reporting.plots import line_with_ci, mds_grid, mds_histogram, removal_panels, top_samples_gallery  # noqa: E402


def test_mds_histogram_shares_drop_dead_features():
    fig, ax = plt.subplots()
    mds_histogram(ax, np.array([0.05, 0.95, np.nan, 0.5]), np.array([0.5, 0.5]), bins=10, thresholds=(0.3, 0.7))
    bars = [p.get_height() for p in ax.patches[:10]]
    assert np.isclose(sum(bars), 1.0)  # shares of the 3 alive features
    assert "MDS" in ax.get_xlabel() and ax.get_ylabel()
    assert "n=3" in ax.get_legend_handles_labels()[1][0]
    plt.close(fig)


def test_mds_grid_lays_out_rows_and_columns():
    rng = np.random.default_rng(0)
    panels = {(r, c): (rng.random(20), rng.random(20)) for r in ("A", "B") for c in ("x", "y", "z")}
    del panels[("B", "z")]
    fig = mds_grid(panels, bins=5, title="t", thresholds={("A", "x"): (0.2, 0.8)})
    axes = fig.axes
    assert len(axes) == 6 and not axes[5].axison  # the missing panel is blank
    assert axes[0].get_title() == "A · x"
    plt.close(fig)


def test_line_with_ci_and_removal_panels():
    t = pd.DataFrame({"m": [5, 10], "v": [0.2, 0.3], "ci_low": [0.1, 0.2], "ci_high": [0.3, 0.4]})
    fig = line_with_ci({"a": t}, "m", "v", xlabel="m", ylabel="value", reference=0.5)
    assert fig.axes[0].get_xlabel() == "m" and fig.axes[0].get_ylabel() == "value"
    plt.close(fig)
    table = pd.DataFrame({"group": ["A", "B"], "metric": ["zero_shot"] * 2, "task": ["shape"] * 2,
                          "drop": [0.1, 0.0], "n_removed": [3, 5]})
    draws = pd.DataFrame({"group": ["A"] * 4 + ["B"] * 4, "metric": ["zero_shot"] * 8, "task": ["shape"] * 8,
                          "drop": [0.0, 0.05, 0.1, 0.02, 0.1, 0.2, 0.15, 0.12]})
    fig = removal_panels(table, draws, title="r")
    ax = fig.axes[0]
    assert ax.get_title() == "shape · zero_shot" and "drop" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A\n(n=3)", "B\n(n=5)"]
    plt.close(fig)


def test_top_samples_gallery_draws_images_and_captions():
    world = generate_world(WorldConfig(n_train=8, n_val=0, n_test=0, seed=3))
    fig = top_samples_gallery(world, [("feature 1", [0, 1, 2], [3, 4]), ("feature 2", [5], [6, 7])], n_images=3,
                              n_captions=2)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(world.captions[3][:20] in t for t in texts)
    assert sum(len(ax.images) for ax in fig.axes) == 4
    plt.close(fig)


def test_excess_by_value_one_dot_per_seed_and_a_mean_line():
    from mmlib.reporting.plots import excess_by_value
    rows = [dict(map=m, world=w, value=v, group=g, seed=s, excess=0.1 * s)
            for m in ("SAE", "NCL") for w in ("world", "null") for v in ("female", "male")
            for g in ("ImgD", "TextD", "CrossD") for s in range(3)]
    fig = excess_by_value(pd.DataFrame(rows), title="t")
    axes = fig.axes
    assert [a.get_title() for a in axes] == ["SAE", "NCL"]
    # 2 values x 2 worlds x 3 groups scatter collections of 3 seeds each, per panel
    assert len(axes[0].collections) >= 12
    assert sum(len(c.get_offsets()) for c in axes[0].collections if c.get_offsets().ndim == 2
               and len(c.get_offsets()) == 3) == 36
    assert [t.get_text() for t in axes[0].get_xticklabels()][:2] == ["female\n(world)", "female\n(null)"]
    plt.close(fig)


def test_adversarial_examples_three_rows_and_stretched_perturbation():
    import torch

    from mmlib.reporting.plots import adversarial_examples
    clean = torch.full((2, 3, 8, 8), 0.5)
    adv = clean.clone()
    adv[0, 0, 0, 0] += 4 / 255
    fig = adversarial_examples(clean, adv, ["a", "b"], ["c", "d"], title="t")
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:4]] == ["a", "b", "c", "d"]
    assert fig.axes[4].get_ylabel().startswith("perturbation") and "4.0/255" in fig.axes[4].get_ylabel()
    stretched = fig.axes[4].images[0].get_array()
    assert float(np.max(stretched)) == 1.0  # the largest change fills the grey range
    plt.close(fig)
    fig = adversarial_examples((np.ones((1, 8, 8, 3)) * 255).astype(np.uint8), np.zeros((1, 8, 8, 3), np.uint8),
                               ["x"], ["y"])
    assert len(fig.axes) == 3
    plt.close(fig)


def test_image_grid_labels_rows_and_columns_and_leaves_ragged_cells_empty():
    import pytest

    from mmlib.reporting.plots import image_grid
    imgs = np.zeros((2, 3, 4, 4, 3), np.uint8)
    fig = image_grid([list(imgs[0]), list(imgs[1][:2])], ["a", "b"], ["x", "y", "z"], title="T")
    axes = np.array(fig.axes).reshape(2, 3)
    assert axes[0, 0].get_ylabel() == "a" and axes[1, 0].get_ylabel() == "b"
    assert [ax.get_title() for ax in axes[0]] == ["x", "y", "z"]
    assert len(axes[0, 2].images) == 1 and not axes[1, 2].axison  # the missing cell is blank
    plt.close(fig)
    with pytest.raises(ValueError, match="at least one image"):
        image_grid([])
