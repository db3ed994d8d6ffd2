"""Factors that never reach the joint space, looked for on the towers' activations before the projection.

A factor that is shown but never said (``position``) or said but never shown (``owner``) gives the contrastive
loss no reason to keep it in the joint embedding, so an MDS computed there cannot see it (Method page,
`method-probe`). The towers do carry such factors, but the image tower and the text tower are different spaces
(of widths ``w_I`` and ``w_T``), so one feature map over both needs a common space. The book stacks them
block-wise (:func:`stack_towers`): ``x_I = [h_I, 0]`` and ``x_T = [0, h_T]``, an image and its caption never
sharing an input coordinate. :func:`tower_factor_row` then asks, for one factor, whether the tower features carry
it and how they score.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import torch

from mmlib.analysis.categories import Categories
from mmlib.analysis.mds import MDSResult
from mmlib.analysis.planted_truth import FactorMatch
from mmlib.core.errors import InputError
from mmlib.core.validation import check_finite


class HasTowers(Protocol):
    """What :func:`stack_towers` reads: :class:`mmlib.data.embeddings.Embeddings` computed with ``towers=True``."""

    image_tower: torch.Tensor | None
    text_tower: torch.Tensor | None


def stack_towers(embeddings: HasTowers) -> tuple[torch.Tensor, torch.Tensor]:
    """The towers' activations stacked block-wise into one space.

    Parameters
    ----------
    embeddings : Embeddings
        With ``image_tower`` ``(n, w_I)`` and ``text_tower`` ``(n, w_T)``.

    Returns
    -------
    (image, text) : tensors ``(n, w_I + w_T)``
        ``[h_I, 0]`` and ``[0, h_T]``; the pair can be passed wherever embeddings are (e.g. to train a map).
    """
    zi, zt = embeddings.image_tower, embeddings.text_tower
    if zi is None or zt is None:
        raise InputError("these embeddings carry no tower activations: embed them with towers=True")
    if len(zi) != len(zt):
        raise InputError(f"{len(zi)} image-tower rows but {len(zt)} text-tower rows")
    check_finite(zi, "embeddings.image_tower")
    check_finite(zt, "embeddings.text_tower")
    return (torch.cat([zi, torch.zeros(len(zi), zt.shape[1])], 1),
            torch.cat([torch.zeros(len(zt), zi.shape[1]), zt], 1))


def factor_columns(match: FactorMatch, factor: str) -> list[int]:
    """The columns of ``match`` (matched ``per_value``: ``"factor=value"``) that belong to ``factor``."""
    cols = [i for i, name in enumerate(match.factors) if name.startswith(factor + "=")]
    if not cols:
        raise KeyError(f"no value of factor {factor!r} among the matched targets {match.factors}")
    return cols


def tower_factor_row(factor: str, tower_match: FactorMatch, tower_mds: MDSResult, tower_categories: Categories,
                     joint_match: FactorMatch, ideal: Mapping[str, float], threshold: float) -> dict[str, object]:
    """How well a factor is carried by a tower feature map, against a joint-space one.

    Parameters
    ----------
    factor : the factor's name
    tower_match, joint_match : :func:`~mmlib.analysis.planted_truth.match_features` (``per_value=True``) of the
        tower map's and the joint-space map's features, ``(K_tower, V)`` and ``(K_joint, V)``
    tower_mds, tower_categories : the tower map's MDS and categories ``(K_tower,)``
    ideal : ``"factor=value"`` -> ideal MDS
    threshold : a tower feature *carries* the factor when its best NMI with one of its values reaches this

    Returns
    -------
    dict: ``factor``, ``ideal_mds`` (mean over its values), ``joint_best_nmi``, ``tower_best_nmi`` (the best NMI
    of any feature with a value of the factor), ``tower_features`` (alive carriers), and over the carriers
    ``median_mds``, ``share_ImgD`` and ``share_TextD`` (NaN without carriers).
    """
    cols = factor_columns(tower_match, factor)
    best = tower_match.scores[:, cols].max(1)  # each tower feature's best NMI with a value of this factor
    carriers = np.flatnonzero((best >= threshold) & tower_mds.alive)
    found = len(carriers) > 0
    labels = tower_categories.labels[carriers]
    return dict(factor=factor, ideal_mds=float(np.mean([ideal[tower_match.factors[c]] for c in cols])),
                joint_best_nmi=float(joint_match.scores[:, factor_columns(joint_match, factor)].max()),
                tower_best_nmi=float(best.max()), tower_features=len(carriers),
                median_mds=float(np.median(tower_mds.scores[carriers])) if found else np.nan,
                share_ImgD=float((labels == "ImgD").mean()) if found else np.nan,
                share_TextD=float((labels == "TextD").mean()) if found else np.nan)


def tower_sentence(row: Mapping[str, object], threshold: float) -> str:
    """One row of :func:`tower_factor_row` (with its ``model``) in words, for a generated Markdown list."""
    head = (f"**{row['model']}, {row['factor']}** (ideal MDS {row['ideal_mds']:.0f}): best NMI "
            f"{row['joint_best_nmi']:.3f} in the joint space, {row['tower_best_nmi']:.3f} on the towers; ")
    if row["tower_features"]:
        return head + (f"{row['tower_features']} tower features carry it, median MDS {row['median_mds']:.2f}, "
                       f"{row['share_ImgD']:.0%} ImgD / {row['share_TextD']:.0%} TextD.")
    return head + f"no tower feature reaches NMI {threshold}: the SAE does not isolate it."
