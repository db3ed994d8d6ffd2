"""Image-text retrieval by cosine similarity: the rank of each query's match, and recall@k.

One implementation serves every chapter: the feature maps' downstream retention (chapter 02), group removal
(chapter 05) and the cross-modal effect of adversarial images (chapter 07).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmlib.core.errors import InputError
from mmlib.core.validation import check_finite

#: How a gallery item exactly as similar as the match counts (see :func:`retrieval_ranks`).
TIES = ("favour", "against")


def retrieval_ranks(queries: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray,
                    targets: torch.Tensor | np.ndarray | None = None, chunk: int = 1024,
                    ties: str = "favour") -> np.ndarray:
    """0-based rank ``(n,)`` of each query's match among all gallery items, by cosine similarity.

    Parameters
    ----------
    queries : (n, d)
    gallery : (m, d)
    targets : (n,) int, optional
        Index in ``gallery`` of query ``i``'s match; default ``i`` (paired rows, then ``m >= n``).
    chunk : int
        Queries scored per block (bounds the ``(chunk, m)`` similarity matrix).
    ties : {"favour", "against"}
        ``"favour"`` (default): rank = the number of gallery items *strictly* more similar than the match, so an
        exact tie counts in the match's favour. ``"against"``: rank = the number of *other* items at least as
        similar, so a tie counts against it. Use ``"against"`` where representations can collapse onto one vector
        (e.g. after removing features): there every item ties, and ``"favour"`` would score every query as retrieved.

    Returns
    -------
    (n,) int64 array: the match's 0-based rank (0 = retrieved first).
    """
    q, g = torch.as_tensor(queries).float(), torch.as_tensor(gallery).float()
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise InputError(f"queries {tuple(q.shape)} and gallery {tuple(g.shape)} must be (n, d) and (m, d)")
    check_finite(queries, "queries")
    check_finite(gallery, "gallery")
    if chunk < 1:
        raise InputError(f"chunk must be a positive integer, got {chunk}")
    if ties not in TIES:
        raise InputError(f"ties must be one of {TIES}, got {ties!r}")
    t = torch.arange(len(q)) if targets is None else torch.as_tensor(np.asarray(targets)).long()
    if t.shape != (len(q),):
        raise InputError(f"{len(q)} queries but targets of shape {tuple(t.shape)}")
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= len(g)):
        raise InputError(f"targets must index the gallery of {len(g)} items (got {int(t.min())}..{int(t.max())})")
    q, g = F.normalize(q, dim=1), F.normalize(g, dim=1)
    ranks = [np.zeros(0, dtype=np.int64)]
    for i in range(0, len(q), chunk):
        sims = q[i:i + chunk] @ g.T                                   # (c, m)
        own = sims.gather(1, t[i:i + chunk, None])                    # (c, 1)
        rank = (sims > own).sum(1) if ties == "favour" else (sims >= own).sum(1) - 1  # minus the match itself
        ranks.append(rank.numpy().astype(np.int64))
    return np.concatenate(ranks)


def recall_at_k(queries: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray, ks: Sequence[int] = (1,),
                targets: torch.Tensor | np.ndarray | None = None, ties: str = "favour") -> dict[int, float]:
    """Share of the ``n`` queries whose match ranks among the top ``k`` gallery items, per ``k`` (NaN for no query;
    ``ties`` as in :func:`retrieval_ranks`).
    """
    if any(int(k) < 1 for k in ks):
        raise InputError(f"every k must be a positive integer, got {list(ks)}")
    ranks = retrieval_ranks(queries, gallery, targets, ties=ties)
    return {int(k): float((ranks < k).mean()) if len(ranks) else float("nan") for k in ks}


def retrieval_recall(image: torch.Tensor | np.ndarray, text: torch.Tensor | np.ndarray,
                     ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image-text retrieval recall@k of ``n`` pairs ``(n, d)`` (pair ``i`` is the only match of ``i``).

    Returns
    -------
    dict
        ``"i2t@k"`` (share of images whose caption ranks in the top ``k`` texts) and ``"t2i@k"`` for each ``k``.
    """
    if torch.as_tensor(image).shape != torch.as_tensor(text).shape:
        raise InputError(f"image {tuple(torch.as_tensor(image).shape)} and text {tuple(torch.as_tensor(text).shape)} "
                         "embeddings must be paired (n, d)")
    check_finite(image, "image")
    check_finite(text, "text")
    i2t, t2i = recall_at_k(image, text, ks), recall_at_k(text, image, ks)
    return {**{f"i2t@{k}": v for k, v in i2t.items()}, **{f"t2i@{k}": v for k, v in t2i.items()}}
