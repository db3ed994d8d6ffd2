"""The interval estimate and the power precondition behind claim 6.2b (some heads specialise in a property), as data.

:func:`association_excess` is the association (mean TextSpan consistency over heads) minus the random-assignment
baseline, with a percentile interval that resamples the heads and draws the baseline
(:func:`~mmlib.companions.clip_interpret.textspan.random_assignment_baseline`) at once, so both the few heads and the
baseline's spread widen it. :func:`planted_head_recovery` is the positive control: a synthetic head whose output is
the text embedding naming each image's value of one property must be labelled with that property by the same
TextSpan labelling (:func:`~mmlib.companions.clip_interpret.textspan.textspan`,
:func:`~mmlib.companions.clip_interpret.textspan.head_properties`) on the same text pool. The chapter turns both into
the ``IntervalTest`` and ``Precondition`` of :mod:`mmlib.reporting.verdict_rules` (a layer above this one).
:func:`head_specialisation` runs the whole measurement for one model (decomposition, TextSpan labels, baseline,
excess and positive control), for a chapter that repeats it on further models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mmlib.companions.clip_interpret.decomposition import decompose_images, world_images
from mmlib.companions.clip_interpret.textspan import (
    TextPool,
    TextSpanResult,
    head_properties,
    random_assignment_baseline,
    textspan,
    textspan_heads,
    world_descriptions,
)
from mmlib.core.errors import InputError
from mmlib.data.world import World
from mmlib.models.clip import ModelBundle, TinyClipArch
from mmlib.models.prompts import encode_texts

__all__ = ["association_excess", "planted_head_recovery", "HeadSpecialisation", "head_specialisation"]


def association_excess(consistency: np.ndarray, null_association: np.ndarray, n_boot: int = 2000, seed: int = 0,
                       confidence: float = 0.95) -> dict[str, float]:
    """Mean consistency over heads minus the mean random-assignment association, with a percentile interval.

    Parameters
    ----------
    consistency : (H,) float
        Each head's consistency (:func:`~mmlib.companions.clip_interpret.textspan.head_properties`).
    null_association : (D,) float
        The association of each random-assignment draw.

    Returns
    -------
    dict
        ``mean`` (observed association minus the draws' mean), ``ci_low``, ``ci_high`` (percentiles of the
        resampled heads' mean minus one random draw, ``n_boot`` times), ``association``, ``baseline``.
    """
    consistency = np.asarray(consistency, dtype=float)
    null = np.asarray(null_association, dtype=float)
    null = null[np.isfinite(null)]
    if consistency.ndim != 1 or len(consistency) < 2 or not np.isfinite(consistency).all():
        raise InputError(f"need the finite consistency of at least two heads, got {consistency!r}")
    if len(null) < 2:
        raise InputError(f"need at least two random-assignment draws, got {len(null)}")
    rng = np.random.default_rng(seed)
    heads = consistency[rng.integers(0, len(consistency), size=(n_boot, len(consistency)))].mean(1)
    draws = heads - null[rng.integers(0, len(null), size=n_boot)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    association, baseline = float(consistency.mean()), float(null.mean())
    return dict(mean=association - baseline, ci_low=float(low), ci_high=float(high), association=association,
                baseline=baseline)


def planted_head_recovery(text_emb: torch.Tensor, pool: TextPool, k: int = 5, n_images: int = 500,
                          noise: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """Plant one synthetic head per property and label it with TextSpan, as the chapter labels the real heads.

    For property ``p`` (every property of the pool with at least ``k`` texts naming at least two values), image
    ``i`` gets a random value of ``p`` and the head's output is the embedding of a random text naming that value,
    plus isotropic Gaussian noise of standard deviation ``noise`` times the texts' per-coordinate spread.

    Parameters
    ----------
    text_emb : (m, d) the pool's text embeddings
    pool : TextPool
    k : int
        TextSpan texts per head (the chapter's ``k_texts``).

    Returns
    -------
    DataFrame
        One row per planted property: ``planted``, ``recovered`` (the head's label), ``consistency``,
        ``texts``.
    """
    text_emb = torch.as_tensor(text_emb).float()
    if text_emb.ndim != 2 or len(text_emb) != len(pool):
        raise InputError(f"text_emb {tuple(text_emb.shape)} must be ({len(pool)}, d): one per text of the pool")
    props = np.array([p if p is not None else "" for p in pool.properties])
    values = np.array([v if v is not None else -1 for v in pool.values])
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    spread = float(text_emb.std(0).mean())
    results, planted = [], []
    for p in dict.fromkeys(x for x in props if x):
        texts = np.flatnonzero(props == p)
        named = np.unique(values[texts])
        if len(texts) < k or len(named) < 2:
            continue
        value = rng.choice(named, size=n_images)
        pick = np.array([rng.choice(texts[values[texts] == v]) for v in value])
        outputs = text_emb[torch.from_numpy(pick)] + noise * spread * torch.randn(n_images, text_emb.shape[1],
                                                                                  generator=generator)
        idx, explained = textspan(outputs, text_emb, k)
        results.append(TextSpanResult(0, len(results), tuple(idx), tuple(pool.texts[i] for i in idx),
                                      tuple(explained)))
        planted.append(p)
    if not results:
        raise InputError(f"no property of the pool has {k} texts naming two values or more: nothing to plant")
    table = head_properties(results, pool)
    return pd.DataFrame(dict(planted=planted, recovered=table["property"], consistency=table["consistency"],
                             texts=table["texts"]))


@dataclasses.dataclass(frozen=True)
class HeadSpecialisation:
    """Claim 6.2b's evidence for one model.

    Attributes
    ----------
    heads : DataFrame
        :func:`~mmlib.companions.clip_interpret.textspan.head_properties` of the model's heads (one row per head).
    null_association : (n_draws,) array
        The random-assignment baseline's association per draw.
    excess : dict
        :func:`association_excess`: ``mean, ci_low, ci_high, association, baseline``.
    planted : DataFrame
        :func:`planted_head_recovery` (the positive control).
    """

    heads: pd.DataFrame
    null_association: np.ndarray
    excess: dict
    planted: pd.DataFrame

    @property
    def recovered(self) -> float:
        """Share of the planted properties that the labelling gives back."""
        return float((self.planted["planted"] == self.planted["recovered"]).mean())


def head_specialisation(bundle: ModelBundle, world: World, indices: Sequence[int] | np.ndarray, k: int = 5,
                        rank: int | None = None, n_draws: int = 1000, planted_noise: float = 0.5, seed: int = 0,
                        arch: TinyClipArch | None = None, batch_size: int = 256) -> HeadSpecialisation:
    """Claim 6.2b's measurement on one model: its heads' TextSpan labels on the images ``indices`` of ``world`` (over
    the world's description pool), the random-assignment baseline of ``n_draws`` draws, the association's excess over
    it and the planted-head positive control (noise ``planted_noise``), all with ``seed``.

    ``arch``: the tiny architecture that draws the images (None for an open_clip model's own preprocessing).
    """
    images = world_images(bundle, world, indices, arch=arch)
    dec = decompose_images(bundle, images, batch_size=batch_size)
    pool = world_descriptions(world.factors)
    text_emb = F.normalize(encode_texts(bundle, list(pool.texts)).float(), dim=-1)
    spans = textspan_heads(dec, text_emb, pool, k=k, rank=rank)
    heads = head_properties(spans, pool)
    null = random_assignment_baseline(spans, pool, n_draws=n_draws, seed=seed)["association"].to_numpy()
    return HeadSpecialisation(heads, null, association_excess(heads["consistency"].to_numpy(), null, seed=seed),
                              planted_head_recovery(text_emb, pool, k=k, noise=planted_noise, seed=seed))
