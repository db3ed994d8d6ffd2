"""Feature-group removal: zero a group of features (e.g. ImgD, TextD, CrossD) and measure what breaks.

The paper's claim (Method page, `claim-5-4`) is that removing CrossD features hurts downstream accuracy least. [ours]
Every group removal is compared with removing the same number of random alive features, over many seeded
draws, so "hurts least" is judged against chance rather than against the other groups alone.

How a removal reaches the representation:

* a map with a decoder (SAE, raw dims): ``z' = decode(encode(z) with the group zeroed)``; the reference is the
  reconstruction with nothing removed, so the drop measures the group and not the reconstruction error;
* a map without a decoder (NCL): the edited features themselves are the representation, so the class prompts
  and captions are encoded through the same map and compared in feature space.

With ``edit_text=True`` (default) the same features are removed from the text side (class prompts, captions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mmlib.analysis.categories import random_feature_mask
from mmlib.analysis.retrieval import recall_at_k
from mmlib.analysis.zero_shot import zero_shot_accuracy
from mmlib.core.stats import proportion_ci
from mmlib.feature_maps.base import FeatureMapLike

METRICS: tuple[str, ...] = ("zero_shot", "recall@1")


@dataclasses.dataclass(frozen=True, eq=False)
class RemovalData:
    """What a removal is evaluated on (embeddings of one split, unnormalised).

    Attributes
    ----------
    image_emb : (n, d) tensor
    text_emb : (n, d) tensor or None
        The paired captions, for image->text retrieval recall@1 (skipped when None).
    class_emb : (c, d) tensor or None
        Class-prompt text embeddings, for zero-shot accuracy (skipped when None).
    labels : (n,) int array or None
        Class of each image.
    """

    image_emb: torch.Tensor
    text_emb: torch.Tensor | None = None
    class_emb: torch.Tensor | None = None
    labels: np.ndarray | torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("image_emb", "text_emb", "class_emb"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, torch.as_tensor(value).float())
        n = len(self.image_emb)
        if self.text_emb is not None and len(self.text_emb) != n:
            raise ValueError(f"{n} images but {len(self.text_emb)} paired captions")
        if (self.class_emb is None) != (self.labels is None):
            raise ValueError("zero-shot needs both class_emb and labels (or neither)")
        if self.labels is not None and len(self.labels) != n:
            raise ValueError(f"{n} images but {len(self.labels)} labels")
        if self.text_emb is None and self.class_emb is None:
            raise ValueError("nothing to measure: give text_emb (retrieval) and/or class_emb + labels (zero-shot)")


@dataclasses.dataclass(frozen=True, eq=False)
class RemovalReport:
    """Group removals against size-matched random removals.

    Attributes
    ----------
    table : DataFrame
        One row per (group, metric): ``group``, ``n_removed``, ``metric``, ``original`` (raw embeddings),
        ``base`` (through the map, nothing removed), ``removed``, ``removed_ci_low/high`` (Wilson),
        ``drop`` (base - removed), ``random_drop_mean``, ``random_drop_low/high`` (central interval of the
        random drops), ``p_less`` and ``p_greater`` (empirical one-sided p-values ``(1 + #{random <= drop})
        / (1 + R)`` and ``(1 + #{random >= drop}) / (1 + R)``: a small ``p_less`` means the group hurts less
        than random removal), ``n_random``.
    random_drops : DataFrame
        ``group``, ``metric``, ``draw``, ``drop``: every random draw, for histograms.
    """

    table: pd.DataFrame
    random_drops: pd.DataFrame


@torch.inference_mode()
def remove_features(feature_map: FeatureMapLike, z: torch.Tensor, modality: str, mask: np.ndarray | torch.Tensor
                    ) -> torch.Tensor:
    """The representation of ``z (n, d)`` with the features in ``mask (K,)`` zeroed.

    Returns ``(n, d)`` (decoded) for a map with a decoder, ``(n, K)`` (the edited features) otherwise.
    """
    h = feature_map.encode(z, modality)
    return _represent(feature_map, h, modality, _keep(mask, h.shape[1]))


def group_removal(feature_map: FeatureMapLike, data: RemovalData, groups: Mapping[str, np.ndarray], *,
                  alive: np.ndarray | None = None, n_random: int = 200, seed: int = 0, edit_text: bool = True,
                  confidence: float = 0.95, progress: bool = False) -> RemovalReport:
    """Remove each group of features and compare with removing as many random alive features.

    Parameters
    ----------
    feature_map : FeatureMapLike
    data : RemovalData
    groups : name -> (K,) bool mask, e.g. ``{c: categories.mask(c) for c in CLASSES}``
    alive : (K,) bool, optional
        Features random removals draw from (default: all). Draws are uniform without replacement among the
        alive features (a draw may overlap the group).
    n_random : int
        Random draws per group (seeded by ``seed`` and the group's position).
    edit_text : bool
        Remove the features from the class prompts and captions too.

    Returns
    -------
    RemovalReport
    """
    if not groups:
        raise ValueError("no groups to remove")
    with torch.inference_mode():
        enc = {side: (feature_map.encode(z, mod) if z is not None else None)
               for side, z, mod in (("image", data.image_emb, "image"), ("text", data.text_emb, "text"),
                                    ("classes", data.class_emb, "text"))}
    n_features = enc["image"].shape[1]
    alive_idx = np.flatnonzero(np.ones(n_features, bool) if alive is None else _mask(alive, n_features, "alive"))
    original = _metrics(data, data.image_emb, data.text_emb, data.class_emb)
    base = _evaluate(feature_map, data, enc, None, edit_text)
    rows, draws = [], []
    for g, (name, mask) in enumerate(groups.items()):
        mask = _mask(mask, n_features, f"group {name!r}")
        k = int(mask.sum())
        if k == 0:
            raise ValueError(f"group {name!r} is empty: nothing to remove")
        if k > len(alive_idx):
            raise ValueError(f"group {name!r} has {k} features but only {len(alive_idx)} are alive to draw from")
        removed = _evaluate(feature_map, data, enc, mask, edit_text)
        rng = np.random.default_rng([seed, g])
        random_drops: dict[str, list[float]] = {m: [] for m in removed}
        for draw in tqdm(range(n_random), desc=f"random removals ({name})", disable=not progress):
            rand = random_feature_mask(rng, alive_idx, k, n_features)
            for metric, value in _evaluate(feature_map, data, enc, rand, edit_text).items():
                random_drops[metric].append(base[metric] - value)
                draws.append(dict(group=name, metric=metric, draw=draw, drop=base[metric] - value))
        for metric, value in removed.items():
            drop = base[metric] - value
            r = np.asarray(random_drops[metric])
            tail = 100 * (1 - confidence) / 2
            low, high = np.percentile(r, [tail, 100 - tail]) if len(r) else (np.nan, np.nan)
            n = len(data.image_emb)
            ci = proportion_ci(round(value * n), n, confidence)
            rows.append(dict(group=name, n_removed=k, metric=metric, original=original[metric], base=base[metric],
                             removed=value, removed_ci_low=ci[0], removed_ci_high=ci[1], drop=drop,
                             random_drop_mean=float(r.mean()) if len(r) else np.nan, random_drop_low=float(low),
                             random_drop_high=float(high),
                             p_less=(1 + int((r <= drop + 1e-12).sum())) / (1 + len(r)),
                             p_greater=(1 + int((r >= drop - 1e-12).sum())) / (1 + len(r)), n_random=len(r)))
    return RemovalReport(pd.DataFrame(rows), pd.DataFrame(draws, columns=["group", "metric", "draw", "drop"]))


# ----------------------------------------------------------------------------------------------- helpers
def _mask(mask: np.ndarray | torch.Tensor, n_features: int, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"{what}: expected a boolean mask, got dtype {mask.dtype}")
    if mask.shape != (n_features,):
        raise ValueError(f"{what}: mask of shape {mask.shape} for {n_features} features")
    return mask


def _keep(mask: np.ndarray | torch.Tensor | None, n_features: int) -> torch.Tensor | None:
    if mask is None:
        return None
    return torch.from_numpy(~_mask(mask, n_features, "removal"))


def _represent(feature_map: FeatureMapLike, h: torch.Tensor, modality: str, keep: torch.Tensor | None
               ) -> torch.Tensor:
    if keep is not None:
        h = h * keep.to(h.dtype)
    return feature_map.decode(h, modality) if feature_map.has_decoder else h


@torch.inference_mode()
def _evaluate(feature_map: FeatureMapLike, data: RemovalData, enc: dict[str, torch.Tensor | None],
              remove: np.ndarray | None, edit_text: bool) -> dict[str, float]:
    keep = _keep(remove, enc["image"].shape[1])
    text_keep = keep if edit_text else None
    image = _represent(feature_map, enc["image"], "image", keep)
    text = _represent(feature_map, enc["text"], "text", text_keep) if enc["text"] is not None else None
    classes = _represent(feature_map, enc["classes"], "text", text_keep) if enc["classes"] is not None else None
    return _metrics(data, image, text, classes)


def _metrics(data: RemovalData, image: torch.Tensor, text: torch.Tensor | None,
             classes: torch.Tensor | None) -> dict[str, float]:
    out = {}
    if classes is not None:
        out["zero_shot"] = zero_shot_accuracy(image, classes, data.labels)
    if text is not None:
        out["recall@1"] = recall_at_k(image, text, (1,))[1]
    return out
