"""The v3 cross-modal adversarial examples: perturbations that steer one category's activations of an image toward a
caption, and their effect on retrieval in both directions.

:func:`steering_attack` pulls the selected category's activations of an image toward a target (by default the
activations of another pair's *caption*, drawn by :func:`random_targets`) while penalising change of every other
alive feature. :func:`cross_modal_effect` reads the effect from image->text and text->image retrieval ranks
(:func:`mmlib.analysis.retrieval.retrieval_ranks`); :func:`steering_measures` turns those ranks into per-image
gains, :func:`selectivity` says whether the chosen features moved more than the others, and
:func:`measure_summary` gives each measure's mean with a bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mmlib.analysis.retrieval import retrieval_ranks
from mmlib.case_studies.adversarial.attacks import PGDConfig, _check_pixels, feature_activations, pgd_attack
from mmlib.case_studies.adversarial.defence import _check_selection
from mmlib.core.errors import InputError
from mmlib.core.stats import mean_bootstrap_ci
from mmlib.core.validation import check_finite
from mmlib.feature_maps.base import FeatureMap

__all__ = ["steering_attack", "cross_modal_effect", "random_targets", "steering_measures", "selectivity",
           "measure_summary", "best_caption"]


def steering_attack(encoder: nn.Module, fmap: FeatureMap, x: torch.Tensor, target: torch.Tensor, mask: np.ndarray,
                    config: PGDConfig, scale: torch.Tensor | None = None, penalty: float = 1.0,
                    alive: np.ndarray | None = None, batch_size: int = 256) -> torch.Tensor:
    """A perturbation that moves only the selected features, toward a target (the v3 cross-modal attack).

    Maximises ``-mean_{k in S} ((h_k - t_k)/s_k)^2 - penalty * mean_{k alive, not in S} ((h_k - h0_k)/s_k)^2``
    over the L∞ ball: the selected features ``S`` of the adversarial image (``h``) are pulled toward the
    target activations ``t`` (e.g. another pair's *caption*: a cross-modal target), every other alive feature
    is held at its clean value ``h0``; ``s_k`` is a per-feature scale (:func:`feature_scale`).

    Parameters
    ----------
    x : (n, 3, H, W) pixels in [0, 1]
    target : (n, K) target activations, one row per image
    mask : (K,) bool, the steered features ``S``
    scale : (K,) per-feature scale (default 1); features with an infinite scale count for nothing
    penalty : float >= 0
    alive : (K,) bool; features outside it are ignored by the penalty (default all)
    """
    x = _check_pixels(x)
    mask = _check_selection(mask, fmap)
    target = torch.as_tensor(target).float()
    if target.shape != (len(x), fmap.n_features):
        raise InputError(f"target activations must be ({len(x)}, {fmap.n_features}), got {tuple(target.shape)}")
    check_finite(target, "target")
    if not (np.isfinite(penalty) and penalty >= 0):
        raise InputError(f"penalty must be a finite non-negative number, got {penalty}")
    scale = torch.ones(fmap.n_features) if scale is None else torch.as_tensor(scale).float()
    if scale.shape != (fmap.n_features,):
        raise InputError(f"scale must be ({fmap.n_features},), got {tuple(scale.shape)}")
    _check_scale(scale)
    alive = np.ones(fmap.n_features, bool) if alive is None else np.asarray(alive, bool)
    sel = torch.from_numpy(mask)
    rest = torch.from_numpy(alive & ~mask)
    inv = 1.0 / scale
    device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    with torch.no_grad():
        h0 = torch.cat([feature_activations(fmap, encoder(x[i:i + batch_size].to(device))).cpu()
                        for i in range(0, len(x), batch_size)])

    def objective(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        h = feature_activations(fmap, z)
        w = inv.to(h.device)
        pull = (((h - target[idx].to(h.device)) * w)[:, sel.to(h.device)] ** 2).mean(1)
        hold = (((h - h0[idx].to(h.device)) * w)[:, rest.to(h.device)] ** 2)
        hold = hold.mean(1) if hold.shape[1] else torch.zeros_like(pull)
        return -pull - penalty * hold
    return pgd_attack(encoder, x, objective, config, batch_size)


def cross_modal_effect(image_clean: torch.Tensor, image_adv: torch.Tensor, text: torch.Tensor,
                       target: np.ndarray | torch.Tensor) -> pd.DataFrame:
    """Retrieval ranks of ``n`` paired images before and after a perturbation, in both directions.

    Parameters
    ----------
    image_clean, image_adv : (n, d) embeddings of the benign and perturbed images (pair ``i`` = caption ``i``)
    text : (n, d) caption embeddings (the retrieval gallery / queries)
    target : (n,) index of each image's target caption (the pair it was steered toward)

    Returns
    -------
    DataFrame, one row per image: ``i2t_own_clean/adv`` (rank of its own caption among the ``n`` captions),
    ``i2t_target_clean/adv`` (rank of the target caption), ``t2i_own_clean/adv`` (rank of image ``i`` for its
    own caption among the ``n`` images, with image ``i`` replaced by its perturbed version), and
    ``t2i_target_clean/adv`` (rank of image ``i`` for the target caption, in the same gallery).
    """
    image_clean, image_adv, text = torch.as_tensor(image_clean), torch.as_tensor(image_adv), torch.as_tensor(text)
    n = len(image_clean)
    for name, value in (("image_clean", image_clean), ("image_adv", image_adv), ("text", text)):
        check_finite(value, name)
    if image_adv.shape != image_clean.shape or text.shape != image_clean.shape:
        raise InputError(f"clean {tuple(image_clean.shape)}, adversarial {tuple(image_adv.shape)} and caption "
                         f"{tuple(text.shape)} embeddings must share one (n, d) shape")
    target = np.asarray(target)
    if target.shape != (n,):
        raise InputError(f"expected one target per image ({n},), got {target.shape}")
    own = np.arange(n)
    img_c, img_a = F.normalize(image_clean.float(), dim=-1), F.normalize(image_adv.float(), dim=-1)
    txt = F.normalize(text.float(), dim=-1)
    gallery = img_c @ txt.T  # (n images, n captions)

    def t2i(captions: np.ndarray, images: torch.Tensor) -> np.ndarray:
        """Rank of image i (given as ``images[i]``) for caption ``captions[i]`` among the clean images j != i."""
        sims = gallery[:, captions].T  # (n, n): caption captions[i] vs every clean image
        mine = (images * txt[captions]).sum(1, keepdim=True)
        others = sims > mine
        others[torch.arange(n), torch.arange(n)] = False
        return others.sum(1).numpy()
    return pd.DataFrame({
        "i2t_own_clean": retrieval_ranks(image_clean, text, own),
        "i2t_own_adv": retrieval_ranks(image_adv, text, own),
        "i2t_target_clean": retrieval_ranks(image_clean, text, target),
        "i2t_target_adv": retrieval_ranks(image_adv, text, target),
        "t2i_own_clean": t2i(own, img_c), "t2i_own_adv": t2i(own, img_a),
        "t2i_target_clean": t2i(target, img_c), "t2i_target_adv": t2i(target, img_a),
    })


# ------------------------------------------------------------------------------------------------- measures
def random_targets(n: int, seed: int = 0) -> np.ndarray:
    """For each of ``n`` pairs, the index of another pair drawn at random (never its own; not a permutation).

    Returns ``(n,)`` int: ``(i + u_i) mod n`` with ``u_i`` uniform on ``1 .. n-1`` (``np.random.default_rng(seed)``).
    """
    if n < 2:
        raise InputError(f"need at least 2 pairs to pick another one, got {n}")
    rng = np.random.default_rng(seed)
    return (np.arange(n) + rng.integers(1, n, size=n)) % n


def steering_measures(effect: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-image rank changes of a perturbation, as shares of the ``n`` candidates.

    Parameters
    ----------
    effect : DataFrame
        :func:`cross_modal_effect` of ``n`` images.

    Returns
    -------
    dict of (n,) float arrays
        ``i2t_target_gain``: how far the target caption moves up for the image ((rank before - rank after) / n);
        ``t2i_target_gain``: how far the image moves up for the target caption; ``own_caption_drop``: how far the
        image's own caption moves down.
    """
    n = len(effect)
    return dict(i2t_target_gain=(effect.i2t_target_clean - effect.i2t_target_adv).to_numpy() / n,
                t2i_target_gain=(effect.t2i_target_clean - effect.t2i_target_adv).to_numpy() / n,
                own_caption_drop=(effect.i2t_own_adv - effect.i2t_own_clean).to_numpy() / n)


def selectivity(h_clean: torch.Tensor, h_adv: torch.Tensor, scale: torch.Tensor, mask: np.ndarray,
                alive: np.ndarray) -> np.ndarray:
    """Per image, the mean normalised change inside the selected features minus that of the other alive features.

    Parameters
    ----------
    h_clean, h_adv : (n, K) activations of the benign and perturbed images
    scale : (K,) per-feature scale (:func:`~mmlib.case_studies.adversarial.shift.feature_scale`)
    mask : (K,) bool, the selected features
    alive : (K,) bool

    Returns
    -------
    (n,) float
        ``mean_{k in mask} |dh_k| / s_k - mean_{k alive, not in mask} |dh_k| / s_k`` (> 0: the perturbation moved
        the selected features more than the others); NaN when no alive feature lies outside the selection.
    """
    h_clean, h_adv, scale = torch.as_tensor(h_clean), torch.as_tensor(h_adv), torch.as_tensor(scale)
    if h_clean.shape != h_adv.shape or h_clean.ndim != 2 or scale.shape != h_clean.shape[1:]:
        raise InputError(f"h_clean {tuple(h_clean.shape)} and h_adv {tuple(h_adv.shape)} must share one (n, K) shape "
                         f"and scale {tuple(scale.shape)} be (K,)")
    for name, value in (("h_clean", h_clean), ("h_adv", h_adv)):
        check_finite(value, name)
    _check_scale(scale)
    change = ((h_adv - h_clean).abs() / scale).numpy()
    mask, alive = np.asarray(mask, bool), np.asarray(alive, bool)
    if mask.shape != (change.shape[1],) or alive.shape != mask.shape:
        raise InputError(f"mask {mask.shape} and alive {alive.shape} must be ({change.shape[1]},)")
    outside = alive & ~mask
    return change[:, mask].mean(1) - (change[:, outside].mean(1) if outside.any() else np.nan)


def measure_summary(per_image: Mapping[tuple[str, str], Mapping[str, np.ndarray]], seed: int = 0) -> pd.DataFrame:
    """Mean and bootstrap interval of every per-image measure of every steering run.

    Parameters
    ----------
    per_image : mapping
        ``(map, selection)`` -> measure name -> ``(n,)`` values (NaN entries are left out).

    Returns
    -------
    DataFrame
        One row per run and measure: ``map``, ``selection``, ``measure``, ``mean`` (NaN when no value is finite),
        ``ci_low``, ``ci_high`` (:func:`mmlib.core.stats.mean_bootstrap_ci`, seeded by ``seed``).
    """
    rows = []
    for (name, sel), measures in per_image.items():
        for measure, values in measures.items():
            values = np.asarray(values, dtype=float)
            low, high = mean_bootstrap_ci(values, seed=seed)
            mean = float(np.nanmean(values)) if np.isfinite(values).any() else np.nan
            rows.append(dict(map=name, selection=sel, measure=measure, mean=mean, ci_low=low, ci_high=high))
    return pd.DataFrame(rows)


def best_caption(z: torch.Tensor, text: torch.Tensor) -> np.ndarray:
    """Index ``(n,)`` of the caption ``(m, d)`` with the highest cosine to each image embedding ``(n, d)``."""
    z, text = torch.as_tensor(z), torch.as_tensor(text)
    if z.ndim != 2 or text.ndim != 2 or z.shape[1] != text.shape[1]:
        raise InputError(f"z {tuple(z.shape)} and text {tuple(text.shape)} must be (n, d) and (m, d)")
    check_finite(z, "z")
    check_finite(text, "text")
    return (F.normalize(z.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T).argmax(1).numpy()


def _check_scale(scale: torch.Tensor) -> None:
    """``scale (K,)`` must be positive and not NaN; ``+inf`` is allowed (a feature that never varies, see
    :func:`~mmlib.case_studies.adversarial.shift.feature_scale`).
    """
    bad = torch.isnan(scale) | (scale <= 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise InputError(f"scale must be positive (or inf for a feature that never varies; see feature_scale), but "
                         f"holds {int(bad.sum())} bad value(s) (first: {float(scale[i])} at index {i})")
