"""Which feature category moves most under attack: the change of each category's activations between benign and
adversarial images, in units of each feature's natural variation, against size-matched random feature sets.

:func:`feature_scale` gives each feature's scale (its standard deviation over the benign images; a feature that
never varies counts for nothing), :func:`category_shift` the change per category with a bootstrap interval over
images and the distribution of the same change for random sets of as many alive features.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from mmlib.analysis.categories import check_group_masks, random_feature_mask
from mmlib.core.errors import InputError
from mmlib.core.stats import mean_bootstrap_ci
from mmlib.core.validation import check_finite

__all__ = ["feature_scale", "category_shift"]


def feature_scale(h: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """Per-feature scale ``(K,)``: the standard deviation of clean activations ``(n, K)``; features that never
    vary on these samples get ``inf`` (they then count as zero change).
    """
    h = check_finite(torch.as_tensor(h), "h")
    s = h.float().std(0)
    return torch.where(s > floor, s, torch.full_like(s, float("inf")))


def category_shift(h_clean: torch.Tensor, h_adv: torch.Tensor, groups: Mapping[str, np.ndarray],
                   alive: np.ndarray | None = None, n_random: int = 200, seed: int = 0, confidence: float = 0.95,
                   normalise: str = "std") -> pd.DataFrame:
    """How much each feature group's activations move between benign and adversarial images.

    Per image ``i`` and group ``G``, the change is ``mean_{k in G} |h_adv[i, k] - h_clean[i, k]| / s_k``:

    * ``normalise="std"`` (default): ``s_k`` is feature ``k``'s standard deviation over the clean images, so
      every feature's change is in units of its own natural variation (groups of different sizes and scales
      compare);
    * ``normalise="relative"``: the change is ``sum_G |dh| / sum_G h_clean`` instead (share of the group's
      activation mass that moves; images where the group is silent are left out).

    Each group is compared with ``n_random`` random sets of as many alive features.

    Parameters
    ----------
    h_clean, h_adv : (n, K) activations of the same images, benign and adversarial
    groups : name -> (K,) bool mask (e.g. ``{"ImgD": cats.mask("ImgD"), ...}``)
    alive : (K,) bool; random sets are drawn from these (default all)

    Returns
    -------
    DataFrame, one row per group: ``group``, ``n_features``, ``change`` (mean over images), ``ci_low``,
    ``ci_high`` (bootstrap over images), ``random_mean``, ``random_low``, ``random_high`` (central interval of
    the random sets' mean change), ``ratio`` (change / random_mean) and ``p_greater`` (empirical one-sided
    p-value that the group moves more than random sets: ``(1 + #{random >= change}) / (1 + R)``).
    """
    h_clean, h_adv = torch.as_tensor(h_clean).float(), torch.as_tensor(h_adv).float()
    if h_clean.shape != h_adv.shape or h_clean.ndim != 2:
        raise InputError(f"clean {tuple(h_clean.shape)} and adversarial {tuple(h_adv.shape)} activations must be "
                         "the same (n, K) shape")
    if normalise not in ("std", "relative"):
        raise InputError(f"unknown normalise {normalise!r}; choose 'std' or 'relative'")
    check_finite(h_clean, "h_clean")
    check_finite(h_adv, "h_adv")
    n_features = h_clean.shape[1]
    groups = check_group_masks(groups, n_features)
    alive = np.ones(n_features, bool) if alive is None else np.asarray(alive, bool)
    alive_idx = np.flatnonzero(alive)
    delta = (h_adv - h_clean).abs()
    if normalise == "std":
        per_feature = (delta / feature_scale(h_clean)).numpy()  # (n, K)

        def per_image(mask: np.ndarray) -> np.ndarray:
            return per_feature[:, mask].mean(1)
    else:
        d_np, c_np = delta.numpy(), h_clean.numpy()

        def per_image(mask: np.ndarray) -> np.ndarray:
            mass = c_np[:, mask].sum(1)
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(mass > 0, d_np[:, mask].sum(1) / mass, np.nan)
    rows = []
    tail = 100 * (1 - confidence) / 2
    for g, (name, mask) in enumerate(groups.items()):
        k = int(mask.sum())
        values = per_image(mask)
        change = float(np.nanmean(values))
        low, high = mean_bootstrap_ci(values, seed=seed, confidence=confidence)
        rng = np.random.default_rng([seed, g])
        random = []
        if k <= len(alive_idx):
            for _ in range(n_random):
                rand = random_feature_mask(rng, alive_idx, k, n_features)
                random.append(float(np.nanmean(per_image(rand))))
        r = np.asarray(random)
        r_low, r_high = np.percentile(r, [tail, 100 - tail]) if len(r) else (np.nan, np.nan)
        r_mean = float(r.mean()) if len(r) else np.nan
        rows.append(dict(group=name, n_features=k, change=change, ci_low=low, ci_high=high, random_mean=r_mean,
                         random_low=float(r_low), random_high=float(r_high),
                         ratio=change / r_mean if r_mean else np.nan,
                         p_greater=(1 + int((r >= change).sum())) / (1 + len(r)) if len(r) else np.nan))
    return pd.DataFrame(rows)
