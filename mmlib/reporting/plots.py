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
             title: str = "", thresholds: Mapping[tuple[str, str], Sequence[float]] | None = None,
             label: str = "world", null_label: str = "null world") -> Figure:
    """A grid of :func:`mds_histogram` panels, keyed ``(row, column)`` -> ``(world scores, null scores)``; ``label``
    and ``null_label`` name the two in each legend (e.g. ``"corpus"`` and ``"random-init control"``).
    """
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
            mds_histogram(ax, world, null, bins, label=label, null_label=null_label,
                          thresholds=(thresholds or {}).get((r, c), ()))
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
    """Training curves of feature maps (the ``history`` of :func:`mmlib.feature_maps.store.load_or_train_feature_map`):
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

    ``tables``: task name -> :func:`mmlib.companions.splice.sparsity_sweep` table (``l0_mean``, ``cosine``,
    ``accuracy``, ``ci_low``, ``ci_high``, ``dense_accuracy``).
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


def excess_drop_grid(table: pd.DataFrame, rows: str = "map", cols: str = "task",
                     worlds: Sequence[str] = ("world", "null"), groups: Sequence[str] = ("ImgD", "TextD", "CrossD"),
                     measure: str = "excess", title: str = "") -> Figure:
    """One panel per (``rows`` value, ``cols`` value): each group's ``measure`` (excess drop) in each world, one dot
    per seed and a line at the mean; the panels of a row share the y axis.

    ``table`` has columns ``rows``, ``cols``, ``world``, ``group`` and ``measure`` (one row per seed), e.g. the
    removal table of chapter 05.
    """
    row_keys, col_keys = list(dict.fromkeys(table[rows])), list(dict.fromkeys(table[cols]))
    colours = dict(zip(groups, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(len(row_keys), len(col_keys), figsize=(4 * len(col_keys), 3.3 * len(row_keys)),
                             squeeze=False, sharey="row")
    step = len(groups) + 1
    for i, r in enumerate(row_keys):
        for j, c in enumerate(col_keys):
            ax = axes[i, j]
            for k, world in enumerate(worlds):
                for g_i, g in enumerate(groups):
                    sub = table[(table[rows] == r) & (table[cols] == c) & (table["world"] == world)
                                & (table["group"] == g)]
                    x = k * step + g_i
                    ax.scatter(np.full(len(sub), x), sub[measure], color=colours[g], s=18, alpha=0.8,
                               label=g if (k == 0 and i == 0 and j == 0) else None)
                    if len(sub):
                        ax.hlines(sub[measure].mean(), x - 0.3, x + 0.3, color=colours[g])
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xticks([k * step + (len(groups) - 1) / 2 for k in range(len(worlds))], list(worlds))
            ax.set(title=f"{r} · {c}", xlabel=f"world ({len(groups)} groups each)",
                   ylabel=f"{measure} drop (group − random)" if measure == "excess" else measure)
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title, y=1.01)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ MDS and categories (03, 04)
def planted_mds_figure(planted_scores: np.ndarray, groups: Mapping[str, np.ndarray], null_scores: np.ndarray,
                       thresholds: Sequence[float] = (), bins: int = 20, null_label: str = "shared-only dictionary",
                       map_name: str = "SAE", title: str = "") -> Figure:
    """Two panels on planted dictionaries: (a) the MDS ``(K,)`` of a map's alive features, stacked by ``groups``
    (label -> ``(K,)`` mask, e.g. the class of the atom each feature matches), with ``thresholds`` dotted;
    (b) the same map's MDS against its run on a dictionary without modality-specific atoms (``null_scores``).
    """
    scores = np.asarray(planted_scores, dtype=float)
    alive = np.isfinite(scores)
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax_a.hist([scores[np.asarray(m) & alive] for m in groups.values()], np.linspace(0, 1, bins + 1), stacked=True,
              label=list(groups))
    for t in thresholds:
        ax_a.axvline(t, color="grey", ls=":")
    ax_a.set(xlabel="MDS (0 = text only, 1 = image only)", ylabel=f"number of {map_name} features",
             title=f"Planted dictionary: {map_name} features by the atom they match")
    ax_a.legend(fontsize=8)
    mds_histogram(ax_b, scores, null_scores, bins, label="planted (image/text/shared atoms)", null_label=null_label)
    ax_b.set_title(f"Same {map_name} on a dictionary without modality-specific atoms")
    ax_b.legend(fontsize=8)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def mds_forms_scatter(ax: plt.Axes, forms: Mapping[str, tuple[np.ndarray, np.ndarray]],
                      styles: Mapping[str, Mapping[str, object]] | None = None) -> plt.Axes:
    """The two MDS forms feature by feature: one scatter per entry ``label -> (paired (K,), aggregate (K,))``
    (features alive in the paired form; ``styles``: label -> scatter keywords such as ``color`` and ``alpha``),
    with the Spearman correlation in the legend and the diagonal.
    """
    from scipy.stats import spearmanr

    for label, (paired, aggregate) in forms.items():
        p, a = np.asarray(paired, dtype=float), np.asarray(aggregate, dtype=float)
        ok = np.isfinite(p)
        rho = spearmanr(p[ok], a[ok]).statistic
        style = {"alpha": 0.5, **dict((styles or {}).get(label, {}))}
        ax.scatter(p[ok], a[ok], s=6, label=f"{label} (Spearman {rho:.2f})", **style)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    ax.set(xlabel="paired MDS (default)", ylabel="aggregate MDS", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, markerscale=2)
    return ax


def rho_threshold_figure(tables: Mapping[str, pd.DataFrame], title: str = "") -> Figure:
    """Two panels per matching threshold: Spearman ρ(MDS, ideal MDS) with its interval (``threshold``, ``rho``,
    ``ci_low``, ``ci_high``) and the number of matched features (``n_matched``, log scale), one line per table.
    """
    fig, (ax_r, ax_n) = plt.subplots(1, 2, figsize=(11, 3.8))
    line_with_ci(tables, "threshold", "rho", xlabel="matching threshold (normalised MI)",
                 ylabel="Spearman ρ(MDS, ideal MDS)", title="Rank agreement with the planted dominance", ax=ax_r,
                 reference=0.0)
    for name, t in tables.items():
        ax_n.plot(t["threshold"], t["n_matched"], marker="o", label=name)
    ax_n.set(xlabel="matching threshold (normalised MI)", ylabel="matched alive features", yscale="log",
             title="Features kept")
    ax_n.legend(fontsize=8)
    if title:
        fig.suptitle(title, y=1.03)
    fig.tight_layout()
    return fig


def matched_vs_planted(ax: plt.Axes, matched: pd.DataFrame, title: str = "", jitter: float = 0.015,
                       seed: int = 0) -> plt.Axes:
    """Matched features' MDS (``mds``) against the ideal MDS planted for their factor value (``planted``), one
    colour per factor ``role`` (the table of :func:`mmlib.analysis.planted_truth.annotate_matched`); the planted
    values are jittered horizontally (seeded) so that features on one value stay visible.
    """
    rng = np.random.default_rng(seed)
    for role, g in matched.groupby("role"):
        ax.scatter(g["planted"] + rng.uniform(-jitter, jitter, len(g)), g["mds"], s=14, alpha=0.7, label=role)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="ideal MDS of the factor value in the world's design", ylabel="feature MDS", xlim=(-0.05, 1.05),
           title=title)
    ax.legend(fontsize=7, title="factor role", title_fontsize=7)
    return ax


def count_heatmaps(panels: Mapping[tuple[str, str], pd.DataFrame], xlabel: str = "", ylabel: str = "",
                   colorbar: str = "share of the row", title: str = "") -> Figure:
    """A grid of count tables (``(row, column)`` -> DataFrame of counts), each coloured by the share of its row
    and annotated with the counts; the tables' index and columns label the axes.
    """
    rows = list(dict.fromkeys(r for r, _ in panels))
    cols = list(dict.fromkeys(c for _, c in panels))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(5.5 * len(cols), 3.7 * len(rows)), squeeze=False,
                             layout="constrained")
    im = None
    for (r, c), tab in panels.items():
        ax = axes[rows.index(r), cols.index(c)]
        share = tab.div(tab.sum(axis=1).replace(0, np.nan), axis=0)
        im = ax.imshow(share.values, vmin=0, vmax=1, cmap="Blues", aspect="auto")
        for (i, j), v in np.ndenumerate(tab.values):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                    color="white" if share.values[i, j] > 0.6 else "black")
        ax.set_xticks(range(tab.shape[1]), [str(x) for x in tab.columns], rotation=25, ha="right")
        ax.set_yticks(range(tab.shape[0]), [str(x) for x in tab.index])
        ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{r} · {c}")
    if im is not None:
        fig.colorbar(im, ax=axes, label=colorbar, shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def agreement_matrices(matrices: Mapping[str, pd.DataFrame], label: str = "Cohen's κ", vmin: float = -0.2,
                       vmax: float = 1.0, xlabel: str | None = None, ylabel: str | None = None,
                       title: str = "") -> Figure:
    """Square agreement matrices side by side (title -> DataFrame with the same index and columns, e.g. rules),
    annotated with their values; the axes are labelled ``xlabel`` / ``ylabel`` (default: the column and index
    names).
    """
    fig, axes = plt.subplots(1, len(matrices), figsize=(6 * len(matrices), 5), layout="constrained", squeeze=False)
    im = None
    for ax, (name, m) in zip(axes[0], matrices.items()):
        im = ax.imshow(m.values, vmin=vmin, vmax=vmax, cmap="viridis")
        for (i, j), v in np.ndenumerate(m.values):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
        ax.set_xticks(range(m.shape[1]), [str(x) for x in m.columns], rotation=30, ha="right")
        ax.set_yticks(range(m.shape[0]), [str(x) for x in m.index])
        ax.set(xlabel=xlabel if xlabel is not None else m.columns.name or "",
               ylabel=ylabel if ylabel is not None else m.index.name or "", title=name)
    if im is not None:
        fig.colorbar(im, ax=axes, label=label, shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------- text-to-image (08)
#: Colour of each feature class in the editing figures; its size-matched random control (``"random:<class>"``)
#: has the same colour, dotted.
EDIT_GROUP_COLOURS = {"ImgD": "tab:blue", "TextD": "tab:orange", "CrossD": "tab:green"}


def edit_strength_curves(curves: Mapping[str, pd.DataFrame], ylabels: Mapping[str, str] | None = None,
                         notes: Mapping[str, str] | None = None, xlabel: str = "intervention strength α",
                         title: str = "") -> Figure:
    """One panel per measure of an editing sweep against the strength α, one line per edited group.

    Parameters
    ----------
    curves : mapping
        Measure -> table with ``group``, ``alpha``, ``mean``, ``ci_low``, ``ci_high`` (drawn as a band); a class
        solid in :data:`EDIT_GROUP_COLOURS`'s colour, its ``"random:<class>"`` control dotted in the same colour.
    ylabels : mapping, optional
        Measure -> y-axis label (default: the measure's name).
    notes : mapping, optional
        Measure -> a text written across its panel instead of ticks (e.g. why it has no curve).
    xlabel, title : str
    """
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.8), squeeze=False)
    for ax, (name, table) in zip(axes[0], curves.items()):
        for g, t in table.groupby("group", sort=False):
            base = g.split(":", 1)[1] if g.startswith("random:") else g
            colour, ls = EDIT_GROUP_COLOURS.get(base, "tab:grey"), ":" if g.startswith("random:") else "-"
            ax.plot(t.alpha, t["mean"], color=colour, ls=ls, marker="o", label=g)
            ax.fill_between(t.alpha, t.ci_low, t.ci_high, color=colour, alpha=0.12)
        ax.set(xlabel=xlabel, ylabel=(ylabels or {}).get(name, name))
        if (notes or {}).get(name):
            ax.text(0.5, 0.5, notes[name], ha="center", va="center", transform=ax.transAxes)
            ax.set(xticks=[], yticks=[])
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def edit_examples(images: Mapping[tuple[str, float], np.ndarray], groups: Sequence[str], refs: Sequence[int],
                  alphas: Sequence[float], ref_labels: Sequence[str] = (), cell: float = 0.95,
                  title: str = "") -> Figure:
    """Edits of a few references: one row per edited group, the strengths growing to the right within each reference.

    Parameters
    ----------
    images : mapping
        ``(group, alpha)`` -> uint8 ``(n_ref, H, W, 3)``, with ``alpha = 0`` stored once as ``("reference", 0.0)``
        (:attr:`mmlib.case_studies.t2i.editing.EditResult.images`).
    groups : sequence of str
        The groups to show; those without images at every non-zero strength (empty classes) are left out.
    refs : sequence of int
        Positions of the references shown.
    alphas : sequence of float
        The strengths, ``0`` first for the reference.
    ref_labels : sequence of str
        One label per shown reference, written over its ``alpha = 0`` column.
    cell, title
        As for :func:`image_grid`.
    """
    shown = [g for g in groups if all((g, float(a)) in images for a in alphas if a != 0)]
    if not shown:
        raise ValueError(f"none of the groups {list(groups)} has images at every strength {list(alphas)}")
    rows = [[images[("reference", 0.0)][r] if a == 0 else images[(g, float(a))][r] for r in refs for a in alphas]
            for g in shown]
    labels = list(ref_labels) or [f"ref {r}" for r in refs]
    cols = [f"{labels[i]}\nα = {a:.2f}" if a == 0 else f"α = {a:.2f}" for i, _ in enumerate(refs) for a in alphas]
    return image_grid(rows, shown, cols, cell=cell, title=title)


# ------------------------------------------------------------------------------------- companions (09, 10)
def grouped_bars(table: pd.DataFrame, xlabel: str, ylabel: str, title: str = "",
                 figsize: tuple[float, float] = (6, 3.2)) -> Figure:
    """One group of bars per row of ``table`` (its index on the x axis), one bar per column, a line at 0."""
    fig, ax = plt.subplots(figsize=figsize)
    table.plot.bar(ax=ax, rot=0)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.tight_layout()
    return fig


def direct_effects_figure(effects: pd.DataFrame, title: str = "") -> Figure:
    """Bars of each term's direct effect (:func:`mmlib.companions.clip_interpret.direct_effects`), coloured by
    kind: heads blue, MLPs orange, fixed terms grey.
    """
    colours = {"head": "C0", "mlp": "C1", "other": "C7"}
    fig, ax = plt.subplots(figsize=(max(7, 0.35 * len(effects)), 3.8))
    ax.bar(effects["term"], effects["effect"], color=[colours[k] for k in effects["kind"]])
    ax.set(ylabel="mean projection on\nthe unit embedding", xlabel="term (blue: heads, orange: MLPs)", title=title)
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    fig.tight_layout()
    return fig


def null_distribution_figure(null: np.ndarray | Sequence[float], observed: float, xlabel: str,
                             null_label: str = "baseline", observed_label: str = "observed", title: str = "",
                             bins: int = 30) -> Figure:
    """A histogram of baseline draws with a vertical line at the observed value."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(np.asarray(null, dtype=float), bins=bins, color="C7", label=null_label)
    ax.axvline(observed, color="C3", lw=2, label=observed_label)
    ax.set(xlabel=xlabel, ylabel="draws", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def titled_image_grid(images: Sequence[Sequence[np.ndarray]], titles: Sequence[Sequence[str]],
                      row_labels: Sequence[str] = (), title: str = "", cell: tuple[float, float] = (1.8, 2.0),
                      fontsize: float = 8, wrap: int = 14) -> Figure:
    """Rows of images, each with its own title; ``row_labels`` (wrapped) label the first column."""
    n_rows, n_cols = len(images), max((len(r) for r in images), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ValueError("titled_image_grid needs at least one image")
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell[0] * n_cols, cell[1] * n_rows), squeeze=False)
    for i in range(n_rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(images[i]):
                ax.axis("off")
                continue
            ax.imshow(images[i][j], interpolation="nearest")
            ax.set_title(titles[i][j], fontsize=fontsize)
        if i < len(row_labels):
            axes[i, 0].set_ylabel("\n".join(textwrap.wrap(row_labels[i], wrap)), fontsize=fontsize)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def signed_heatmap(table: pd.DataFrame, xlabel: str, ylabel: str, colorbar: str, title: str = "") -> Figure:
    """A table as a heatmap on a symmetric diverging scale (0 white), rows and columns labelled by its index."""
    values = table.to_numpy(dtype=float)
    lim = float(np.nanmax(np.abs(values))) if values.size else 1.0
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * table.shape[1]), max(2.6, 0.6 + 0.7 * table.shape[0])))
    im = ax.imshow(values, cmap="RdBu_r", vmin=-(lim or 1.0), vmax=lim or 1.0, aspect="auto")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], rotation=90, fontsize=7)
    ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.colorbar(im, ax=ax, label=colorbar)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ chapter 02: feature maps
def planted_recovery_figure(table: pd.DataFrame, cosines: Mapping[str, np.ndarray], planted_l0: float,
                            atom_counts: Mapping[str, int], curves: Mapping[str, str], groups: Sequence[str],
                            threshold: float = 0.9, title: str = "") -> Figure:
    """How an SAE recovers a planted dictionary, in three panels: (a) the best-match cosine of every atom for the
    settings in ``curves`` (label -> line style), sorted; (b) the share recovered against the SAE's L0 for the
    ``relu_l1`` and ``topk`` rows of ``table``, with the planted L0 (+ one offset latent) shaded; (c) the share
    recovered per atom class (``atom_counts``: class -> number of atoms) for the settings in ``groups`` (a setting
    with seed variants, ``"<setting>, seed <s>"``, is averaged over them, whiskers min-max).

    ``table`` and ``cosines`` are :func:`mmlib.reporting.map_quality.planted_recovery`'s outputs.
    """
    fig, (ax_a, ax_b, ax_c) = plt.subplots(1, 3, figsize=(15, 3.9))
    for label, style in curves.items():
        ax_a.plot(np.sort(cosines[label])[::-1], ls=style, label=label)
    ax_a.axhline(threshold, color="grey", lw=0.8)
    ax_a.set(xlabel="planted atoms, best recovered first", ylabel="best-match cosine with a decoder direction",
             ylim=(0, 1.02), title="(a) recovery of each atom")
    ax_a.legend(fontsize=8)
    for kind, marker, dy in (("relu_l1", "o", -12), ("topk", "s", 5)):
        sub = table[table.kind == kind]
        x = (sub.l0_image + sub.l0_text) / 2
        ax_b.plot(x, sub.recovered, marker=marker, label=f"{kind} SAE")
        for xi, yi, s in zip(x, sub.recovered, sub.setting):
            ax_b.annotate(s, (xi, yi), textcoords="offset points", xytext=(3, dy), fontsize=7)
    ax_b.axvspan(planted_l0, planted_l0 + 1, color="green", alpha=0.15, label="planted L0 (+ offset latent)")
    ax_b.set(xscale="log", xlim=(0.005, 150), xlabel="SAE L0 (active latents per embedding, mean of both modalities)",
             ylabel=f"share of atoms recovered (cos ≥ {threshold:g})", ylim=(-0.05, 1.1),
             title="(b) recovery against sparsity")
    ax_b.legend(fontsize=8, loc="center left")
    classes = list(atom_counts)
    width = 0.8 / max(1, len(groups))
    for j, setting in enumerate(groups):
        sub = table[(table.setting == setting) | table.setting.str.startswith(setting + ",")]
        values = sub[[f"recovered_{c}" for c in classes]].to_numpy()
        mean = values.mean(0)
        label = f"{setting} ({len(sub)} seeds)" if len(sub) > 1 else setting
        ax_c.bar(np.arange(len(classes)) + (j - (len(groups) - 1) / 2) * width, mean, width, label=label,
                 yerr=[mean - values.min(0), values.max(0) - mean] if len(values) > 1 else None, capsize=3)
    ax_c.set_xticks(range(len(classes)), [f"{c} ({atom_counts[c]} atoms)" for c in classes])
    ax_c.set(xlabel="planted atom class", ylabel=f"share recovered (cos ≥ {threshold:g})", ylim=(0, 1.3),
             title="(c) per class (whiskers: min-max over seeds)")
    ax_c.legend(fontsize=7, ncols=4, loc="upper center")
    if title:
        fig.suptitle(title, y=1.03)
    fig.tight_layout()
    return fig


def sparsity_frontier_figure(frontier: pd.DataFrame, default: pd.DataFrame, seed: int, title: str = "") -> Figure:
    """An SAE sweep's (a) FVU and (b) dead fraction against L0, both on log x axes (FVU on a log y axis too).

    ``frontier`` is :func:`mmlib.reporting.map_quality.sae_sweep`'s table (``kind``, ``setting``, ``l0``, ``fvu``,
    ``dead_both``; the ``relu_l1`` and ``topk`` rows are drawn, annotated with their settings) of the SAE trained
    with ``seed``; ``default`` holds one row per seed of the default SAE (``l0``, ``fvu``, ``dead_both``), drawn
    as one star with ± 1 sd error bars.
    """
    fig, (ax_f, ax_d) = plt.subplots(1, 2, figsize=(12, 4))
    for kind, marker in (("relu_l1", "o"), ("topk", "s")):
        sub = frontier[frontier.kind == kind]
        for ax, y in ((ax_f, "fvu"), (ax_d, "dead_both")):
            ax.plot(sub.l0, sub[y], marker=marker, label=f"{kind} SAE (seed {seed})")
            for xi, yi, s in zip(sub.l0, sub[y], sub.setting):
                ax.annotate(s, (xi, yi), textcoords="offset points", xytext=(3, 4), fontsize=7)
    for ax, y in ((ax_f, "fvu"), (ax_d, "dead_both")):
        ax.errorbar(default.l0.mean(), default[y].mean(), xerr=default.l0.std(ddof=1) if len(default) > 1 else None,
                    yerr=default[y].std(ddof=1) if len(default) > 1 else None, fmt="*", ms=12, color="black",
                    capsize=3, label=f"default SAE, {len(default)} seeds (± 1 sd)")
        ax.set_xscale("log")
    ax_f.set_yscale("log")
    ax_f.set(xlabel="L0 (active latents per sample, test split)", ylabel="FVU (test split, log scale)",
             title="(a) sparsity against reconstruction")
    ax_d.set(xlabel="L0 (active latents per sample, test split)",
             ylabel="dead fraction (never active on the test split)", title="(b) dead latents against sparsity")
    ax_f.legend(fontsize=8)
    if title:
        fig.suptitle(title, y=1.03)
    fig.tight_layout()
    return fig


def purity_figure(purity: pd.DataFrame, random_purity: np.ndarray, m: int, n_features: Mapping[str, int],
                  n_seeds: int, factors: Sequence[str], pure: float = 0.9, title: str = "") -> Figure:
    """Ground-truth purity of feature maps: (a, b) histograms of the top-``m`` purity of the scored features on the
    image and the text side (all seeds pooled) against random ``m``-sets; (c) which factor the pure (``>= pure``)
    image-side features track, one stacked bar per map (``n_features``: map -> K, in drawing order; ``factors``:
    the legend's order).

    ``purity`` is :func:`mmlib.reporting.map_quality.purity_table`'s table, ``random_purity`` the purity of random
    sets (:func:`mmlib.reporting.map_quality.random_purity`).
    """
    maps = list(n_features)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    edges = np.linspace(0, 1, 21)
    for ax, side in zip(axes[:2], ("image", "text")):
        for name in maps:
            p = purity[(purity["map"] == name) & (purity.side == side)].purity.dropna()
            ax.hist(p, edges, weights=np.full(len(p), 1 / max(1, len(p))), histtype="step", lw=1.6,
                    label=f"{name} (n={len(p)})")
        ax.hist(random_purity, edges, weights=np.full(len(random_purity), 1 / len(random_purity)), color="grey",
                alpha=0.35, label=f"random {m}-sets")
        ax.set(xlabel=f"top-{m} purity (best factor)", ylabel="share of scored features",
               title=f"({'ab'[side == 'text']}) {side} side (seeds pooled)")
        ax.legend(fontsize=7)
    best = purity[(purity.side == "image") & (purity.purity >= pure)]
    counts = best.groupby(["map", "factor"]).size().unstack(fill_value=0).reindex(maps, fill_value=0)
    counts = counts.reindex(columns=[f for f in factors if f in counts.columns])
    shares = counts.div(counts.sum(axis=1), axis=0)
    shares.index = [f"{name}\n({counts.loc[name].sum() / n_seeds:.0f} of {n_features[name]} per seed)"
                    for name in shares.index]
    shares.plot.bar(stacked=True, ax=axes[2], colormap="tab20", width=0.7)
    axes[2].set(xlabel="feature map (pure image-side features)",
                ylabel=f"share of the pure features (purity ≥ {pure:g})",
                title="(c) which factor the pure image-side features track")
    axes[2].set_ylim(0, 1.25)
    axes[2].legend(fontsize=7, ncols=4, loc="upper center", title="factor", title_fontsize=7)
    axes[2].tick_params(axis="x", rotation=0)
    if title:
        fig.suptitle(title, y=1.03)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ chapter 07: adversarial
def category_ratio_dots(table: pd.DataFrame, maps: Sequence[str], worlds: Sequence[str] = ("world", "null"),
                        groups: Sequence[str] = ("ImgD", "TextD", "CrossD"), value: str = "ratio",
                        reference: float = 1.0, ylabel: str = "change / random-set change",
                        colours: Mapping[str, str] | None = None, title: str = "") -> Figure:
    """One panel per map: each group's ``value`` in each world, one dot per seed and a line at the mean, with a
    dashed reference line (1: the group moves as much as random feature sets of its size); panels share the y axis.

    ``table`` has columns ``map``, ``world``, ``group``, ``seed`` and ``value`` (one row per seed), e.g. the output of
    :func:`mmlib.case_studies.adversarial.category_shift` stacked over worlds, maps and seeds.
    """
    colours = dict(colours or {"ImgD": "tab:blue", "TextD": "tab:orange", "CrossD": "tab:green"})
    step = len(groups) + 1
    fig, axes = plt.subplots(1, len(maps), figsize=(4.5 * len(maps), 3.4), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], maps):
        for k, world in enumerate(worlds):
            for g_i, g in enumerate(groups):
                sub = table[(table["world"] == world) & (table["map"] == name) & (table["group"] == g)]
                x = k * step + g_i
                ax.scatter(np.full(len(sub), x), sub[value], color=colours.get(g, "tab:grey"), s=20,
                           label=g if k == 0 else None)
                if len(sub):
                    ax.hlines(sub[value].mean(), x - 0.3, x + 0.3, color=colours.get(g, "tab:grey"))
        ax.axhline(reference, color="grey", lw=0.8, ls="--")
        ax.set_xticks([(len(groups) - 1) / 2 + step * k for k in range(len(worlds))], list(worlds))
        ax.set(title=name, xlabel=f"world ({len(groups)} categories each)", ylabel=ylabel)
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def defence_accuracy_figure(table: pd.DataFrame, histories: Mapping[tuple[str, str], Sequence[float]],
                            order: Sequence[tuple[str, str]], ylabel: str = "accuracy",
                            colours: Mapping[str, str] | None = None, window: int = 10, title: str = "") -> Figure:
    """Left: clean and robust accuracy per defence with their intervals (dotted: robust accuracy without defence);
    right: each defence's training curve (rolling mean, log scale).

    Parameters
    ----------
    table : DataFrame
        One row per defence with ``map``, ``selection``, ``clean``, ``clean_low``, ``clean_high``, ``robust``,
        ``robust_low``, ``robust_high`` (:func:`mmlib.case_studies.adversarial.defence_table`); the undefended
        model has selection ``"none"``.
    histories : mapping
        ``(map, selection)`` -> the masked adversarial term per training step (one curve each; the first map's
        curves are solid, the others dashed).
    order : sequence of (map, selection)
        The bars, left to right.
    """
    colours = dict(colours or {"ImgD": "tab:blue", "TextD": "tab:orange", "CrossD": "tab:green"})
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    ax = axes[0]
    for i, key in enumerate(order):
        r = table[(table["map"] == key[0]) & (table["selection"] == key[1])].iloc[0]
        for j, (label, colour) in enumerate((("clean", "tab:grey"), ("robust", "tab:red"))):
            ax.bar(i + 0.38 * (j - 0.5), r[label], 0.38, color=colour, label=label if i == 0 else None,
                   yerr=[[r[label] - r[f"{label}_low"]], [r[f"{label}_high"] - r[label]]], capsize=2)
    ax.set_xticks(range(len(order)), ["no defence" if k[1] == "none" else f"{k[0]}\n{k[1]}" for k in order],
                  fontsize=8)
    ax.set(xlabel="aligned feature set", ylabel=ylabel, ylim=(0, 1))
    none = table[table["selection"] == "none"]
    if len(none):
        ax.axhline(none["robust"].iloc[0], color="tab:red", lw=0.8, ls=":")
    ax.legend(fontsize=8)
    ax.set_title("clean and robust accuracy per aligned feature set (95 % Wilson)", fontsize=9)
    first = next(iter(histories))[0] if histories else None
    for (name, sel), loss in histories.items():
        axes[1].plot(pd.Series(loss).rolling(window, min_periods=1).mean(), label=f"{name} {sel}",
                     ls="-" if name == first else "--", color=colours.get(sel, "tab:grey"))
    axes[1].set(xlabel="training step", ylabel="masked adversarial term (rolling mean)", yscale="log")
    axes[1].legend(fontsize=7)
    axes[1].set_title("training curves", fontsize=9)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def steering_bars(table: pd.DataFrame, keys: Sequence[tuple[str, str]], measures: Sequence[str],
                  ylabels: Mapping[str, str] | None = None, control: str = "noise",
                  colours: Mapping[str, str] | None = None, title: str = "") -> Figure:
    """One panel per measure: its mean with the interval for each steering run (bars), and the control's mean as a
    dotted line where it is finite.

    Parameters
    ----------
    table : DataFrame
        ``map``, ``selection``, ``measure``, ``mean``, ``ci_low``, ``ci_high``
        (:func:`mmlib.case_studies.adversarial.measure_summary`); the control run has selection ``control``.
    keys : sequence of (map, selection)
        The bars, left to right.
    measures : sequence of str
        One panel each.
    ylabels : mapping, optional
        measure -> y label (default: the measure's name).
    """
    colours = dict(colours or {"ImgD": "tab:blue", "TextD": "tab:orange", "CrossD": "tab:green"})
    ylabels = dict(ylabels or {})
    fig, axes = plt.subplots(1, len(measures), figsize=(14 / 3 * len(measures), 3.6), squeeze=False)
    for ax, measure in zip(axes[0], measures):
        for i, (name, sel) in enumerate(keys):
            r = table[(table["map"] == name) & (table["selection"] == sel) & (table["measure"] == measure)].iloc[0]
            ax.bar(i, r["mean"], color=colours.get(sel, "tab:grey"),
                   yerr=[[r["mean"] - r["ci_low"]], [r["ci_high"] - r["mean"]]], capsize=2)
        ctrl = table[(table["selection"] == control) & (table["measure"] == measure)]
        if len(ctrl) and np.isfinite(ctrl["mean"].iloc[0]):
            ax.axhline(ctrl["mean"].iloc[0], color="black", ls=":", lw=1, label=f"control ({control})")
            ax.legend(fontsize=8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(keys)), [f"{name}\n{sel}" for name, sel in keys], fontsize=7.5)
        ax.set_xlabel("map and steered feature set", fontsize=8)
        ax.set_ylabel(ylabels.get(measure, measure), fontsize=8)
        ax.set_title(measure.replace("_", " "), fontsize=9)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig
