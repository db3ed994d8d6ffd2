"""Figures shared by the notebooks (matplotlib; every axis labelled, PNG output)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from mmlib.data.world import World


def gallery(world: World, indices: Sequence[int], cols: int = 4, width: int = 34) -> Figure:
    """Images of ``world`` at ``indices`` with their captions wrapped underneath."""
    rows = int(np.ceil(len(indices) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).ravel(), indices):
        ax.imshow(world.images[i], interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(world.captions[i], width)), fontsize=7.5)
    fig.tight_layout()
    return fig


def training_curves(histories: Mapping[str, Mapping[str, list[float]]]) -> Figure:
    """Training loss (left) and validation zero-shot accuracy per factor (right) of several models."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, h in histories.items():
        steps = np.asarray(h["step"]) + 1
        loss = pd.Series(h["clip_loss"]).rolling(20, min_periods=1).mean()
        ax_loss.plot(steps, loss, label=f"{name}: CLIP loss")
        if any(h.get("ssl_loss", [])):
            ax_loss.plot(steps, pd.Series(h["ssl_loss"]).rolling(20, min_periods=1).mean(), ls=":",
                         label=f"{name}: image SSL")
            ax_loss.plot(steps, pd.Series(h["mlm_loss"]).rolling(20, min_periods=1).mean(), ls="--",
                         label=f"{name}: masked tokens")
        for key in h:
            if key.startswith("val_zs_"):  # joint prompt reading: solid; the class named alone: dashed
                line, = ax_acc.plot(h["eval_step"], h[key], marker="o", label=f"{name}: {key[7:]}")
                single = h.get(f"val_zs1_{key[7:]}")
                if single:
                    ax_acc.plot(h["eval_step"], single, ls="--", marker=".", color=line.get_color(),
                                label=f"{name}: {key[7:]} (class named alone)")
    ax_loss.set(xlabel="training step", ylabel="loss (20-step moving average)", title="Training loss")
    ax_acc.set(xlabel="training step", ylabel="zero-shot accuracy (validation)", ylim=(0, 1.02),
               title="Zero-shot accuracy during training")
    ax_acc.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax_loss.legend(fontsize=7)
    ax_acc.legend(fontsize=7)
    fig.tight_layout()
    return fig


def accuracy_bars(table: pd.DataFrame, group: str, value: str = "accuracy", title: str = "",
                  chance: str | None = "chance") -> Figure:
    """Grouped bars of ``value`` per factor with ``ci_low``/``ci_high`` error bars, one colour per ``group``."""
    factors = list(dict.fromkeys(table["factor"]))
    groups = list(dict.fromkeys(table[group]))
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(factors) * len(groups) ** 0.5 + 2), 3.8))
    for k, g in enumerate(groups):
        sub = table[table[group] == g].set_index("factor").reindex(factors)
        x = np.arange(len(factors)) + (k - (len(groups) - 1) / 2) * width
        err = None
        if {"ci_low", "ci_high"} <= set(sub.columns):
            err = np.vstack([sub[value] - sub["ci_low"], sub["ci_high"] - sub[value]]).clip(min=0)
            err = np.nan_to_num(err)
        ax.bar(x, sub[value], width, yerr=err, capsize=2, label=str(g))
    if chance and chance in table:
        ch = table.drop_duplicates("factor").set_index("factor").reindex(factors)[chance]
        ax.scatter(np.arange(len(factors)), ch, marker="_", s=400, color="black", label="chance", zorder=3)
    ax.set_xticks(np.arange(len(factors)), factors, rotation=30, ha="right")
    ax.set(ylabel=value.replace("_", " "), ylim=(0, 1.05), title=title)
    ax.legend(fontsize=8, ncols=min(4, len(groups) + 1))
    fig.tight_layout()
    return fig


def modality_gap_figure(image_emb: torch.Tensor, text_emb: torch.Tensor, title: str = "") -> Figure:
    """Left: the first two principal components of L2-normalised image and text embeddings.
    Right: histograms of cosine similarity for matched and unmatched (shifted) pairs.
    """
    img = F.normalize(image_emb.double(), dim=-1)
    txt = F.normalize(text_emb.double(), dim=-1)
    both = torch.cat([img, txt])
    centred = both - both.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    pcs = (centred @ v[:2].T).numpy()
    n = len(img)
    fig, (ax_pca, ax_cos) = plt.subplots(1, 2, figsize=(11, 4))
    ax_pca.scatter(pcs[:n, 0], pcs[:n, 1], s=3, alpha=0.4, label="images")
    ax_pca.scatter(pcs[n:, 0], pcs[n:, 1], s=3, alpha=0.4, label="captions")
    ax_pca.set(xlabel="PC 1", ylabel="PC 2", title=f"Joint embedding space {title}".strip())
    ax_pca.legend(markerscale=4)
    matched = (img * txt).sum(1).numpy()
    unmatched = (img * txt.roll(1, 0)).sum(1).numpy()
    bins = np.linspace(min(matched.min(), unmatched.min()), max(matched.max(), unmatched.max()), 50)
    ax_cos.hist(matched, bins, alpha=0.6, label="matched pairs")
    ax_cos.hist(unmatched, bins, alpha=0.6, label="unmatched pairs")
    ax_cos.set(xlabel="cosine similarity (image, caption)", ylabel="number of pairs",
               title="Image-caption similarity")
    ax_cos.legend()
    fig.tight_layout()
    return fig


def probe_heatmap(table: pd.DataFrame, value: str = "accuracy", title: str = "") -> Figure:
    """Heatmap of probe accuracy: rows = feature sets, columns = factors."""
    pivot = table.pivot(index="features", columns="factor", values=value)
    pivot = pivot[list(dict.fromkeys(table["factor"]))]
    fig, ax = plt.subplots(figsize=(1.0 * pivot.shape[1] + 2, 0.6 * pivot.shape[0] + 1.6))
    im = ax.imshow(pivot.values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (r, c), v in np.ndenumerate(pivot.values):
        if np.isfinite(v):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(pivot.shape[1]), pivot.columns, rotation=30, ha="right")
    ax.set_yticks(range(pivot.shape[0]), pivot.index)
    ax.set(xlabel="factor", ylabel="features probed", title=title)
    fig.colorbar(im, ax=ax, label=value.replace("_", " "))
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ MDS chapters
def mds_histogram(ax: plt.Axes, world: np.ndarray, null: np.ndarray | None = None, bins: int = 20,
                  label: str = "world", null_label: str = "null world",
                  thresholds: Sequence[float] = ()) -> plt.Axes:
    """One panel: the MDS histogram of the alive features (``world``, filled) against its null-world
    baseline (``null``, black outline), as shares of the alive features; NaN (dead) scores are dropped.

    ``thresholds`` draws vertical dotted lines (e.g. a categorisation rule's low / high).
    """
    edges = np.linspace(0, 1, bins + 1)
    w = np.asarray(world, dtype=float)
    w = w[np.isfinite(w)]
    ax.hist(w, edges, weights=np.full(len(w), 1 / max(1, len(w))), alpha=0.75, label=f"{label} (n={len(w)})")
    if null is not None:
        z = np.asarray(null, dtype=float)
        z = z[np.isfinite(z)]
        ax.hist(z, edges, weights=np.full(len(z), 1 / max(1, len(z))), histtype="step", color="black", lw=1.3,
                label=f"{null_label} (n={len(z)})")
    for t in thresholds:
        ax.axvline(t, color="grey", ls=":", lw=1)
    ax.set(xlabel="MDS (0 = text only, 1 = image only)", ylabel="share of alive features", xlim=(0, 1))
    return ax


def mds_grid(panels: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray | None]], bins: int = 20,
             title: str = "", thresholds: Mapping[tuple[str, str], Sequence[float]] | None = None) -> Figure:
    """A grid of :func:`mds_histogram` panels, keyed ``(row, column)`` -> ``(world scores, null scores)``."""
    rows = list(dict.fromkeys(r for r, _ in panels))
    cols = list(dict.fromkeys(c for _, c in panels))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.6 * len(cols), 2.9 * len(rows)), squeeze=False,
                             sharex=True)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            if (r, c) not in panels:
                ax.axis("off")
                continue
            world, null = panels[(r, c)]
            mds_histogram(ax, world, null, bins, thresholds=(thresholds or {}).get((r, c), ()))
            ax.set_title(f"{r} · {c}", fontsize=10)
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return fig


def line_with_ci(tables: Mapping[str, pd.DataFrame], x: str, y: str, low: str = "ci_low", high: str = "ci_high",
                 xlabel: str = "", ylabel: str = "", title: str = "", ax: plt.Axes | None = None,
                 reference: float | None = None) -> Figure:
    """One line per table (``y`` against ``x``) with its ``low``–``high`` interval as a band."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.8))
    for name, t in tables.items():
        line, = ax.plot(t[x], t[y], marker="o", label=name)
        if low in t and high in t:
            ax.fill_between(t[x], t[low], t[high], alpha=0.2, color=line.get_color())
    if reference is not None:
        ax.axhline(reference, color="grey", ls="--", lw=0.8)
    ax.set(xlabel=xlabel or x, ylabel=ylabel or y, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def top_samples_gallery(world: World, rows: Sequence[tuple[str, Sequence[int], Sequence[int]]],
                        n_images: int = 6, n_captions: int = 4, width: int = 60) -> Figure:
    """One row per feature: its top ``n_images`` images and, beside them, its top ``n_captions`` captions.

    Parameters
    ----------
    rows : ``(label, image indices into world, caption indices into world)`` per feature, most activating
        first.
    """
    fig = plt.figure(figsize=(1.25 * n_images + 5.5, 1.45 * len(rows) + 0.3))
    grid = fig.add_gridspec(len(rows), n_images + 1, width_ratios=[1] * n_images + [4.4], wspace=0.05,
                            hspace=0.35)
    for r, (label, images, captions) in enumerate(rows):
        for j in range(n_images):
            ax = fig.add_subplot(grid[r, j])
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images):
                ax.imshow(world.images[int(images[j])], interpolation="nearest")
            if j == 0:
                ax.set_ylabel("\n".join(textwrap.wrap(label, 16)), fontsize=7.5, rotation=0, ha="right",
                              va="center")
        ax = fig.add_subplot(grid[r, n_images])
        ax.axis("off")
        text = "\n".join("· " + textwrap.shorten(world.captions[int(i)], width) for i in list(captions)[:n_captions])
        ax.text(0.02, 0.5, text, fontsize=7, va="center", family="monospace")
    return fig


def removal_panels(table: pd.DataFrame, random_drops: pd.DataFrame, title: str = "") -> Figure:
    """Per metric: each group's drop (red dot) against the drops of size-matched random removals (box).

    ``table`` and ``random_drops`` as in :class:`mmlib.case_studies.removal.RemovalReport` (a ``task`` column, if any,
    is folded into the metric name).
    """
    def key(frame: pd.DataFrame) -> pd.Series:
        return (frame["task"] + " · " + frame["metric"]) if "task" in frame else frame["metric"]
    table, random_drops = table.assign(panel=key(table)), random_drops.assign(panel=key(random_drops))
    panels = list(dict.fromkeys(table["panel"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.6), squeeze=False)
    for ax, p in zip(axes[0], panels):
        sub = table[table["panel"] == p]
        groups = list(dict.fromkeys(sub["group"]))
        data = [random_drops[(random_drops["panel"] == p) & (random_drops["group"] == g)]["drop"].to_numpy()
                for g in groups]
        ax.boxplot(data, positions=range(len(groups)), widths=0.5, showfliers=False)
        ax.scatter(range(len(groups)), sub.set_index("group").loc[groups, "drop"], color="red", zorder=3,
                   label="group removed")
        ax.set_xticks(range(len(groups)),
                      [f"{g}\n(n={int(n)})" for g, n in zip(groups, sub.set_index("group").loc[groups, "n_removed"])])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(ylabel="drop (base - removed)", title=p)
    axes[0, 0].legend(fontsize=7, title="box: random, same size", title_fontsize=7)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ feature maps
def feature_map_curves(histories: Mapping[str, Mapping[str, Sequence[float]]],
                       panels: Sequence[tuple[str, str]] = (("loss", "training loss"),
                                                            ("l0", "active features per sample (L0)"),
                                                            ("dead", "dead fraction")),
                       logy: Sequence[str] = ("loss", "l0"), title: str = "") -> Figure:
    """Training curves of feature maps (the ``history`` of :func:`mmlib.feature_maps.base.load_or_train_feature_map`):
    one panel per ``(key, y label)`` in ``panels``, one line per history (e.g. ``"SAE seed 0"``) against
    ``step``; histories without a key are skipped in that panel; keys in ``logy`` get a log y axis.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 3.3), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for name, h in histories.items():
            if h.get(key):
                ax.plot(h["step"], h[key], label=name, lw=1.2)
        if key in logy:
            ax.set_yscale("log")
        ax.set(xlabel="training step", ylabel=label)
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def splice_sweep_figure(tables: Mapping[str, pd.DataFrame], title: str = "") -> Figure:
    """SpLiCE's sparsity sweep: cosine to the dense embedding and zero-shot accuracy against mean L0.

    ``tables``: task name -> :func:`mmlib.companions.splice.sparsity_sweep` table (``l0_mean``, ``cosine``, ``accuracy``,
    ``ci_low``, ``ci_high``, ``dense_accuracy``).
    """
    fig, (ax_c, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))
    first = next(iter(tables.values()))
    ax_c.plot(first["l0_mean"], first["cosine"], "o-", color="k")
    ax_c.set(xscale="log", xlabel="mean L0 (non-zero concepts per image)", ylabel="cosine(recomposed, dense)",
             title="faithfulness")
    ax_c.grid(alpha=0.3)
    for i, (name, t) in enumerate(tables.items()):
        color = f"C{i}"
        ax_a.errorbar(t["l0_mean"], t["accuracy"], yerr=[t["accuracy"] - t["ci_low"], t["ci_high"] - t["accuracy"]],
                      fmt="o-", color=color, capsize=2, label=f"{name} (SpLiCE)")
        ax_a.axhline(float(t["dense_accuracy"].iloc[0]), color=color, ls="--", lw=1, label=f"{name} (dense)")
    ax_a.set(xscale="log", xlabel="mean L0 (non-zero concepts per image)", ylabel="zero-shot accuracy",
             title="zero-shot accuracy (95 % Wilson CI)")
    ax_a.legend(fontsize=7)
    ax_a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def concept_bars(images: Sequence[np.ndarray], tables: Sequence[pd.DataFrame], captions: Sequence[str] = (),
                 title: str = "", width: int = 40) -> Figure:
    """Images (top row) and the bar chart of their top concept weights (bottom row).

    ``tables``: one :func:`mmlib.companions.splice.top_concepts` table per image (``concept``, ``weight``).
    """
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 6.0), gridspec_kw=dict(height_ratios=[1, 1.2]))
    axes = np.asarray(axes).reshape(2, n)
    for j in range(n):
        axes[0, j].imshow(images[j], interpolation="nearest")
        axes[0, j].axis("off")
        if j < len(captions):
            axes[0, j].set_title("\n".join(textwrap.wrap(captions[j], width)), fontsize=7)
        t = tables[j]
        ax = axes[1, j]
        ax.barh(np.arange(len(t))[::-1], t["weight"], color="C0")
        ax.set_yticks(np.arange(len(t))[::-1], t["concept"], fontsize=7)
        ax.set_xlabel("concept weight")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def heatmap_overlays(images: Sequence[np.ndarray], heatmaps: np.ndarray | torch.Tensor, row_labels: Sequence[str],
                     col_titles: Sequence[str] = (), title: str = "", cmap: str = "RdBu_r") -> Figure:
    """A grid of images with heatmaps overlaid: ``heatmaps`` ``(rows, n, H, W)`` already at image size.

    Column 0 shows the images; each row one heatmap per image, on a symmetric colour scale shared by the row.
    """
    maps = np.asarray(heatmaps)
    rows, n = maps.shape[:2]
    fig, axes = plt.subplots(rows + 1, n, figsize=(2.2 * n, 2.2 * (rows + 1)))
    axes = np.asarray(axes).reshape(rows + 1, n)
    for j in range(n):
        axes[0, j].imshow(images[j], interpolation="nearest")
        if j < len(col_titles):
            axes[0, j].set_title(col_titles[j], fontsize=7)
    axes[0, 0].set_ylabel("image", fontsize=8)
    for r in range(rows):
        lim = float(np.abs(maps[r]).max()) or 1.0
        for j in range(n):
            axes[r + 1, j].imshow(np.asarray(images[j]).mean(-1), cmap="gray", interpolation="nearest")
            im = axes[r + 1, j].imshow(maps[r, j], cmap=cmap, vmin=-lim, vmax=lim, alpha=0.6)
        axes[r + 1, 0].set_ylabel("\n".join(textwrap.wrap(row_labels[r], 22)), fontsize=7)
        fig.colorbar(im, ax=axes[r + 1, :].tolist(), shrink=0.8, label="score")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------------- bias (06)
def excess_by_value(table: pd.DataFrame, panel: str = "map", worlds: Sequence[str] = ("world", "null"),
                    groups: Sequence[str] = ("ImgD", "TextD", "CrossD"), measure: str = "excess",
                    title: str = "") -> Figure:
    """Per panel (e.g. feature map): each value's ``measure`` (excess drop) per removed group, one dot per seed
    (filled: first world, hollow: the others, e.g. the null world) and a line at the mean.

    ``table`` has columns ``panel``, ``world``, ``value``, ``group``, ``measure`` (one row per seed).
    """
    panels = list(dict.fromkeys(table[panel]))
    values = list(dict.fromkeys(table["value"]))
    colours = dict(zip(groups, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 + 1.15 * len(values) * len(worlds) * len(panels), 3.6),
                             squeeze=False, sharey=True)
    for ax, p in zip(axes[0], panels):
        ticks, labels = [], []
        for v_i, value in enumerate(values):
            for w_i, world in enumerate(worlds):
                base = (v_i * len(worlds) + w_i) * (len(groups) + 1)
                ticks.append(base + (len(groups) - 1) / 2)
                labels.append(f"{value}\n({world})")
                for g_i, g in enumerate(groups):
                    sub = table[(table[panel] == p) & (table["world"] == world) & (table["value"] == value)
                                & (table["group"] == g)]
                    x = base + g_i
                    face = colours[g] if w_i == 0 else "none"
                    ax.scatter(np.full(len(sub), x), sub[measure], s=20, facecolors=face, edgecolors=colours[g],
                               label=g if (v_i == 0 and w_i == 0) else None)
                    if len(sub):
                        ax.hlines(sub[measure].mean(), x - 0.35, x + 0.35, color=colours[g])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(ticks, labels, fontsize=8)
        ax.set(title=str(p), ylabel=f"{measure} drop (group − random)" if measure == "excess" else measure)
    axes[0, 0].legend(fontsize=7, title="group removed", title_fontsize=7)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def image_grid(images: np.ndarray | Sequence[Sequence[np.ndarray]], row_labels: Sequence[str] = (),
               col_labels: Sequence[str] = (), cell: float = 1.1, title: str = "") -> Figure:
    """A grid of uint8 images ``(rows, cols, H, W, 3)`` (or nested lists), with row and column labels."""
    grid = [list(r) for r in images]
    n_rows, n_cols = len(grid), max((len(r) for r in grid), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ValueError("image_grid needs at least one image")
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols + 1.2, cell * n_rows + 0.4), squeeze=False)
    for i, row in enumerate(grid):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                ax.imshow(row[j], interpolation="nearest")
            else:
                ax.axis("off")
            if j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=8, rotation=0, ha="right", va="center")
            if i == 0 and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=8)
    if title:
        fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------- adversarial (07)
def adversarial_examples(clean: np.ndarray | torch.Tensor, adv: np.ndarray | torch.Tensor,
                         clean_titles: Sequence[str], adv_titles: Sequence[str], title: str = "",
                         cell: float = 1.5) -> Figure:
    """Benign images (top row), their adversarial versions (middle) and the perturbation (bottom, stretched to
    the full grey range; mid-grey = 0), with one title per image.

    ``clean`` and ``adv`` are pixels ``(n, 3, H, W)`` in [0, 1] or uint8 ``(n, H, W, 3)``.
    """
    def hwc(x: np.ndarray | torch.Tensor) -> np.ndarray:
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return (x.transpose(0, 2, 3, 1) if x.shape[1] == 3 and x.shape[-1] != 3 else x.astype(float) / 255)
    a, b = hwc(clean), hwc(adv)
    delta = b - a
    span = max(float(np.abs(delta).max()), 1e-12)
    rows = [(a, clean_titles, "benign"), (b, adv_titles, "adversarial"),
            (0.5 + 0.5 * delta / span, [""] * len(a), f"perturbation\n(±{span * 255:.1f}/255)")]
    fig, axes = plt.subplots(3, len(a), figsize=(cell * len(a) + 1.0, cell * 3 + 0.6), squeeze=False)
    for r, (images, titles, label) in enumerate(rows):
        for j in range(len(a)):
            ax = axes[r, j]
            ax.imshow(np.clip(images[j], 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(titles[j], fontsize=7.5)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return fig
