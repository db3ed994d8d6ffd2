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

from mmlib.world import World


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
            if key.startswith("val_zs_"):
                ax_acc.plot(h["eval_step"], h[key], marker="o", label=f"{name}: {key[7:]}")
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
    Right: histograms of cosine similarity for matched and unmatched (shifted) pairs."""
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
