"""Diagnostics of feature maps: reconstruction, sparsity, rank, downstream retention, semantic purity.

Pure functions on tensors (``(n, d)`` embeddings, ``(n, K)`` activations), each unit-tested against
hand-computed values; :func:`reconstruction_report` and :func:`downstream_retention` apply them to a
:class:`~mmlib.feature_maps.base.FeatureMap`; :func:`top_m_purity` scores features against ground truth with the
purity of :mod:`mmlib.analysis.embsim`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mmlib.analysis.embsim import best_purity, top_samples
from mmlib.analysis.retrieval import retrieval_recall
from mmlib.analysis.zero_shot import zero_shot_accuracy
from mmlib.core.errors import InputError
from mmlib.core.validation import check_finite, is_int
from mmlib.feature_maps.base import FeatureMap

__all__ = ["mse", "fvu", "l0", "dead_fraction", "mean_cosine", "effective_rank",
           "reconstruction_report", "downstream_retention", "top_m_purity"]


def _pair(z: torch.Tensor | np.ndarray, z_hat: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    z, z_hat = torch.as_tensor(z).double(), torch.as_tensor(z_hat).double()
    if z.shape != z_hat.shape or z.ndim != 2:
        raise InputError(f"z and z_hat must be two (n, d) tensors of the same shape, got {tuple(z.shape)} and "
                         f"{tuple(z_hat.shape)}")
    if len(z) == 0:
        raise InputError("z and z_hat hold no samples (n = 0): pass at least one row")
    check_finite(z, "z")
    check_finite(z_hat, "z_hat", hint="the map produced non-finite reconstructions: retrain it")
    return z, z_hat


def mse(z: torch.Tensor | np.ndarray, z_hat: torch.Tensor | np.ndarray) -> float:
    """Mean over samples of the squared error ``||z - z_hat||²`` (summed over the ``d`` dimensions)."""
    z, z_hat = _pair(z, z_hat)
    return float((z - z_hat).square().sum(1).mean())


def fvu(z: torch.Tensor | np.ndarray, z_hat: torch.Tensor | np.ndarray) -> float:
    """Fraction of variance unexplained: ``Σ||z - z_hat||² / Σ||z - mean(z)||²`` (mean-centred; 0 is perfect,
    1 is no better than predicting the mean).
    """
    z, z_hat = _pair(z, z_hat)
    return float((z - z_hat).square().sum() / (z - z.mean(0)).square().sum())


def _acts(h: torch.Tensor | np.ndarray, name: str = "activations") -> torch.Tensor:
    h = torch.as_tensor(h)
    if h.ndim != 2:
        raise InputError(f"{name} must be (n, K), got shape {tuple(h.shape)}")
    return check_finite(h, name, hint="pass the finite activations of a feature map")


def l0(h: torch.Tensor | np.ndarray, eps: float = 0.0) -> float:
    """Mean number of active latents (``h > eps``) per sample of activations ``(n, K)``."""
    h = _acts(h)
    return float((h > eps).sum(1).double().mean()) if len(h) else float("nan")


def dead_fraction(h: torch.Tensor | np.ndarray, eps: float = 0.0) -> float:
    """Fraction of the ``K`` latents never active (``h > eps``) on any of the ``n`` samples ``(n, K)``."""
    h = _acts(h)
    return float((~(h > eps).any(0)).double().mean())


def mean_cosine(z: torch.Tensor | np.ndarray, z_hat: torch.Tensor | np.ndarray) -> float:
    """Mean cosine similarity between matched rows of ``z`` and ``z_hat`` ``(n, d)``."""
    z, z_hat = _pair(z, z_hat)
    return float(F.cosine_similarity(z, z_hat, dim=1).mean())


def effective_rank(x: torch.Tensor | np.ndarray, center: bool = False) -> float:
    """Effective rank of ``x`` ``(n, d)`` (Roy & Vetterli, 2007): ``exp(H(p))`` with ``p_i = σ_i / Σ_j σ_j``
    the normalised singular values and ``H`` the Shannon entropy (natural log). Between 1 and ``min(n, d)``;
    ``center`` subtracts the column means first.
    """
    x = torch.as_tensor(x).double()
    if x.ndim != 2 or x.numel() == 0:
        raise InputError(f"x must be a non-empty (n, d) matrix, got shape {tuple(x.shape)}")
    check_finite(x, "x")
    if center:
        x = x - x.mean(0)
    # singular values from the eigenvalues of the smaller Gram matrix: several times faster than an SVD of
    # a tall (n, K) activation matrix, and exact up to rounding in float64
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    s = torch.linalg.eigvalsh(gram).clamp_min(0.0).sqrt()
    s = torch.where(s > 1e-6 * s.max(), s, torch.zeros_like(s))  # rounding noise of null directions, not rank
    if float(s.sum()) == 0.0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def reconstruction_report(fmap: FeatureMap, image: torch.Tensor, text: torch.Tensor) -> pd.DataFrame:
    """Per modality: ``l0``, ``dead`` (fraction never active on these samples) and, for maps with a decoder,
    ``mse``, ``fvu`` and ``cosine`` of the reconstructions; plus ``dead_both`` (never active on either).
    """
    rows, acts = [], []
    for modality, z in (("image", image), ("text", text)):
        h = fmap.encode(z, modality)
        acts.append(h)
        row = {"map": fmap.name, "modality": modality, "n": len(z), "l0": l0(h), "dead": dead_fraction(h)}
        if fmap.has_decoder:
            z_hat = fmap.decode(h, modality)
            row.update(mse=mse(z, z_hat), fvu=fvu(z, z_hat), cosine=mean_cosine(z, z_hat))
        rows.append(row)
    report = pd.DataFrame(rows)
    report["dead_both"] = dead_fraction(torch.cat(acts))
    return report


def downstream_retention(fmap: FeatureMap, image: torch.Tensor, text: torch.Tensor,
                         class_emb: torch.Tensor | None = None, labels: torch.Tensor | np.ndarray | None = None,
                         ks: Sequence[int] = (1, 5)) -> pd.DataFrame:
    """How much of CLIP's zero-shot accuracy and retrieval survives when embeddings are replaced by the map's
    reconstructions (maps with a decoder) or by its features (maps without).

    Parameters
    ----------
    fmap : FeatureMap
    image, text : (n, d) tensors
        Paired embeddings (retrieval is over these ``n`` pairs).
    class_emb : (c, d) or (c, p, d) tensor, optional
        Text embeddings of the class prompts (mapped as texts; ``p`` prompts per class are scored by the best
        one, see :func:`mmlib.analysis.zero_shot.zero_shot_predict`). Pass them unnormalised, as the map was trained on.
    labels : (n,) ints, optional
        Class of each image; with ``class_emb``, adds the ``zero_shot`` row.
    ks : ints
        Recall cut-offs.

    Returns
    -------
    DataFrame
        One row per metric (``zero_shot``, ``i2t@k``, ``t2i@k``): ``original`` (on the CLIP embeddings),
        ``mapped``, ``retention`` (``mapped / original``) and ``space`` (``"reconstruction"`` or ``"features"``).
    """
    def mapped(z: torch.Tensor, modality: str) -> torch.Tensor:
        z = torch.as_tensor(z)
        flat = z.reshape(-1, z.shape[-1])                    # (c, p, d) prompt sets are mapped row by row
        out = fmap.reconstruct(flat, modality) if fmap.has_decoder else fmap.encode(flat, modality)
        return out.reshape(*z.shape[:-1], out.shape[-1])

    space = "reconstruction" if fmap.has_decoder else "features"
    rows = []
    if class_emb is not None and labels is not None:
        clip_acc = zero_shot_accuracy(image, class_emb, labels)
        map_acc = zero_shot_accuracy(mapped(image, "image"), mapped(class_emb, "text"), labels)
        rows.append(("zero_shot", clip_acc, map_acc))
    clip_rec = retrieval_recall(image, text, ks)
    map_rec = retrieval_recall(mapped(image, "image"), mapped(text, "text"), ks)
    rows += [(name, clip_rec[name], map_rec[name]) for name in clip_rec]
    return pd.DataFrame([{"map": fmap.name, "metric": name, "original": c, "mapped": m,
                          "retention": m / c if c > 0 else float("nan"), "space": space} for name, c, m in rows])


def top_m_purity(acts: torch.Tensor | np.ndarray, labels: Mapping[str, np.ndarray | torch.Tensor],
                 m: int = 20) -> pd.DataFrame:
    """Ground-truth semantic consistency of each feature: purity of its top-``m`` activating samples.

    For feature ``k`` and each factor, purity is the share of its ``m`` most activating samples that hold
    the factor's most common value among them; the best factor is the purest one. A feature active on
    fewer than ``m`` samples gets NaN (its top-m would include samples where it is silent). Computed by
    :func:`mmlib.analysis.embsim.top_samples` and :func:`mmlib.analysis.embsim.best_purity`.

    Parameters
    ----------
    acts : (n, K) activations
    labels : dict of str to (n,) ints
        Ground-truth value of each factor per sample.
    m : int

    Returns
    -------
    DataFrame
        One row per feature: ``feature``, ``factor`` (best factor, ``""`` if not scored), ``purity``, ``chance``
        (share of that factor's most common value over all samples: the purity of an uninformative top-m).
    """
    a = _acts(acts, "acts")
    if not is_int(m) or m < 1:
        raise InputError(f"m (top samples per feature) must be a positive integer, got {m!r}")
    for name, values in labels.items():
        if len(values) != len(a):
            raise InputError(f"labels of {name!r} have {len(values)} samples but acts has {len(a)}: pass one label "
                             "per activation row")
    return best_purity(top_samples(a, m), labels)
