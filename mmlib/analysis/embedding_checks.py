"""What the tiny models' embeddings hold: the modality gap with a bootstrap interval, and the inputs of the
per-factor linear probes (chapter 01).
"""

from __future__ import annotations

import numpy as np
import torch

from mmlib.analysis.zero_shot import modality_gap
from mmlib.core.errors import InputError
from mmlib.core.validation import check_finite
from mmlib.data.embeddings import Embeddings
from mmlib.data.world import World, WorldSplit

__all__ = ["modality_gap_interval", "probe_inputs"]


def modality_gap_interval(image: torch.Tensor, text: torch.Tensor, n_boot: int = 300, seed: int = 0,
                          confidence: float = 0.95) -> tuple[dict[str, float], tuple[float, float]]:
    """The modality gap of paired embeddings and a percentile bootstrap interval of its centroid distance.

    Parameters
    ----------
    image, text : (n, d) tensors
        Paired image and text embeddings (row ``i`` of each is one pair).
    n_boot : int
        Bootstrap resamples of the ``n`` pairs (drawn with replacement, pairs kept together).
    seed : int
        Seed of the resampling (``numpy.random.default_rng``).
    confidence : float
        Level of the interval.

    Returns
    -------
    (dict, (float, float))
        :func:`mmlib.analysis.zero_shot.modality_gap` of all pairs (``gap``, ``cos_matched``, ``cos_unmatched``,
        ``cos_centroids``), and the ``(low, high)`` percentiles of ``gap`` over the resamples.
    """
    if n_boot < 2:
        raise InputError(f"n_boot must be at least 2, got {n_boot}")
    check_finite(image, "image")
    check_finite(text, "text")
    gap = modality_gap(image, text)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        i = torch.from_numpy(rng.integers(0, len(image), len(image)))
        boot.append(modality_gap(image[i], text[i])["gap"])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(boot, [tail, 100 - tail])
    return gap, (float(low), float(high))


def probe_inputs(world: World, train: Embeddings, test: Embeddings, n_train: int,
                 seed: int = 0) -> tuple[WorldSplit, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The training pairs and the four feature sets of chapter 01's linear probes.

    Parameters
    ----------
    world : World
        The world whose ``"train"`` split ``train`` embeds.
    train, test : Embeddings
        Embeddings of the train and test splits, with the towers' activations (``towers=True``).
    n_train : int
        Training pairs per probe: a random subset (without replacement, in split order) of the train split.
    seed : int
        Seed of the subset (``numpy.random.default_rng``).

    Returns
    -------
    (WorldSplit, dict)
        The subset as a split of ``world`` (its ground truth), and feature-set name -> ``(train (n_train, w),
        test (n_test, w))`` for ``"image (joint)"``, ``"image tower"``, ``"text (joint)"`` and ``"text tower"``
        (names starting with ``image`` are read on the image side by :func:`mmlib.analysis.zero_shot.probe_report`).
    """
    if train.image_tower is None or test.image_tower is None:
        raise InputError("the probes need the towers' activations: embed with EmbedConfig(towers=True)")
    if not 0 < n_train <= len(train):
        raise InputError(f"n_train must lie in [1, {len(train)}], got {n_train}")
    sub = np.sort(np.random.default_rng(seed).choice(len(train), n_train, replace=False))
    split = WorldSplit(world, "train", world.indices("train")[sub])
    features = {"image (joint)": (train.image[sub], test.image),
                "image tower": (train.image_tower[sub], test.image_tower),
                "text (joint)": (train.text[sub], test.text),
                "text tower": (train.text_tower[sub], test.text_tower)}
    return split, features
