"""Calibrated categories: each feature's modality dominance tested against permutation nulls, not cut at μ±σ.

The μ±σ rule of :mod:`mmlib.analysis.categories` always cuts the tails of whatever MDS distribution it is given, so
it labels features ImgD or TextD on a dictionary without modality-specific content (chapter 03, Section 3.2). This
rule ([ours], Method page `method-categories`) asks two questions of every alive feature ``k``, each answered by a
permutation test of its own activations:

1. **Swap test (dominance).** Under H0 "no modality dominance", a pair's image and text activations of the feature
   are exchangeable, so exchanging them (each pair with probability 1/2, the same coin for every feature; as
   :func:`mmlib.analysis.controls.swap_modalities`) leaves the MDS distribution unchanged. ``n_perm`` seeded swaps
   give the null distribution of the feature's MDS; ``p_image`` is the one-sided Monte-Carlo p-value of an MDS this
   high, ``p_text`` of one this low (``(1 + #{null at least as extreme}) / (1 + n_perm)``). The two-sided
   ``2 min(p_image, p_text)`` is adjusted by Benjamini-Hochberg over the alive features (``q``). For the paired
   form a swap turns ``r = a_I / (a_I + a_T)`` into ``1 - r``, so the swapped MDS is
   ``MDS + (S @ ((1 - 2 r) * active)) / |P_k|`` for swap indicators ``S`` ``(n_perm, n)``: one matrix product per
   block of swaps. (:func:`mmlib.analysis.controls.swap_z` is the normal approximation of the same null.)
2. **Pairing test (content in the other modality).** A feature can fire on images only and still carry content
   that captions carry too: an image-side copy of a shared concept (the split-copy confound, whose text-side twin
   fires on the captions of the same pairs) or a direction of the modality gap. Its statistic is the largest
   ``|Pearson correlation|`` across the pairs between the feature's activation on its dominant side and every
   feature's activation on the other side (itself included); under H0 "nothing the feature responds to is in the
   paired caption (image)", re-pairing the two sides by a random permutation (as the shuffled-pairs control) leaves
   it unchanged. ``n_pairings`` seeded re-pairings give ``p_pairing`` for the features that are dominance
   discoveries.

A *minimum support* (``min_support = m``, as in :func:`mmlib.analysis.categories.categorise`): an alive feature
that fires on fewer than ``m`` pairs is labelled ``"rare"``, belongs to no class and is not tested (it leaves the
Benjamini-Hochberg family). ``m = 0`` (default) tests every alive feature.

A feature is **ImgD** if its swap test is a discovery (``q <= alpha``) with MDS above its swap null and its pairing
test is *not* significant (``p_pairing >= alpha``, unadjusted: a stricter veto than an adjusted one), **TextD**
likewise below, **CrossD** otherwise; a dead feature stays ``"dead"`` as in
:func:`mmlib.analysis.categories.categorise`. ``n_pairings = 0`` keeps the swap test alone. The result is a
:class:`~mmlib.analysis.categories.Categories` (a subclass that carries the p-values), accepted wherever categories
are, e.g. by :func:`mmlib.analysis.planted_truth.class_accuracy`.

Cost: ``O(n_perm * n * K)`` for the swap test and ``O(n_pairings * n * c * K)`` for the pairing test, with ``c`` the
dominance discoveries; on 8,000 pairs and 128 features a few seconds on one CPU thread.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy.stats import false_discovery_control

from mmlib.analysis.categories import CLASSES, DEAD, RARE, Categories
from mmlib.analysis.mds import FORMS
from mmlib.core.errors import InputError
from mmlib.core.validation import at_least, between, check_finite, check_nonnegative, one_of, validate_config

__all__ = ["PermutationRule", "CalibratedCategories", "calibrated_categories", "benjamini_hochberg"]

#: Swap indicators drawn per block: at most this many ``(swaps, pairs)`` entries at once (32 MiB in float64).
BLOCK_ENTRIES = 2 ** 22


@dataclasses.dataclass(frozen=True)
class PermutationRule:
    """The calibrated rule's settings.

    Attributes
    ----------
    alpha : float
        False-discovery rate of the swap test (Benjamini-Hochberg over the alive features) and level of the pairing
        test's veto, in (0, 1).
    n_perm : int
        Random swaps (>= 1); the smallest p-value is ``1 / (1 + n_perm)``.
    n_pairings : int
        Random re-pairings of the pairing test (0: swap test alone).
    seed : int
    form : {"paired", "aggregate"}
        The MDS form tested (:mod:`mmlib.analysis.mds`).
    eps : float
        A pair is active for a feature when ``a_I + a_T > eps``.
    min_support : int
        Pairs a feature must fire on to be tested (>= 0); an alive feature below it is ``"rare"`` (0: test every
        alive feature).
    """

    alpha: float = 0.05
    n_perm: int = 1000
    n_pairings: int = 200
    seed: int = 0
    form: str = "paired"
    eps: float = 0.0
    min_support: int = 0

    def __post_init__(self) -> None:
        validate_config(self, alpha=between(0.0, 1.0, low_open=True, high_open=True), n_perm=at_least(1),
                        n_pairings=at_least(0), seed=between(0, 2 ** 63 - 1), form=one_of(*FORMS), eps=at_least(0.0),
                        min_support=at_least(0))

    @property
    def name(self) -> str:
        """A short label: ``"swap test"`` or ``"swap + pairing test"`` with the FDR (and the minimum support)."""
        test = "swap + pairing test" if self.n_pairings else "swap test"
        support = f", support >= {self.min_support}" if self.min_support else ""
        return f"{test} (FDR {self.alpha:g}{support})"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class CalibratedCategories(Categories):
    """:class:`~mmlib.analysis.categories.Categories` from :func:`calibrated_categories`, with the tests' p-values.

    ``rule`` is the :class:`PermutationRule` (it has a ``name``, as a ``CategoryRule`` does); ``low`` and ``high``
    are NaN, as no MDS threshold is used; ``min_support``, ``support`` and ``mass`` are set as
    :func:`~mmlib.analysis.categories.categorise` sets them.

    Attributes
    ----------
    p_image, p_text : (K,) float arrays
        One-sided swap-test p-values (MDS above / below its swap null); NaN for dead features.
    q : (K,) float array
        Benjamini-Hochberg adjusted two-sided p-values over the tested features (alive, at least ``min_support``
        pairs); NaN for dead and rare features.
    p_pairing : (K,) float array
        Pairing-test p-value on the feature's dominant side, for the swap-test discoveries (NaN elsewhere, and
        everywhere when ``n_pairings = 0``).
    pairing_r : (K,) float array
        The pairing test's observed statistic for the same features: the largest ``|Pearson r|``, across the pairs,
        between the feature's activation on its dominant side and any feature's on the other side (an effect size
        in [0, 1]; 1 for a split copy); NaN where ``p_pairing`` is.
    """

    rule: PermutationRule  # type: ignore[assignment]  # in place of a CategoryRule
    p_image: np.ndarray
    p_text: np.ndarray
    q: np.ndarray
    p_pairing: np.ndarray
    pairing_r: np.ndarray

    def discoveries(self) -> np.ndarray:
        """``(K,)`` bool: the swap test's discoveries (``q <= alpha``), before the pairing test's veto."""
        return np.nan_to_num(self.q, nan=1.0) <= self.rule.alpha

    def vetoed(self) -> np.ndarray:
        """``(K,)`` bool: discoveries the pairing test sends to CrossD (their content is in the other modality)."""
        return self.discoveries() & (np.nan_to_num(self.p_pairing, nan=1.0) < self.rule.alpha)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values ``(m,)`` of p-values ``(m,)`` in [0, 1] (``scipy``'s
    ``false_discovery_control``; a feature is a discovery at FDR ``alpha`` when its value is ``<= alpha``).
    """
    p = np.asarray(p, dtype=float)
    if p.ndim != 1 or not len(p):
        raise InputError(f"need a non-empty (m,) array of p-values, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or (p < 0).any() or (p > 1).any():
        raise InputError("p-values must be finite numbers in [0, 1]")
    return np.asarray(false_discovery_control(p, method="bh"), dtype=float)


def calibrated_categories(a_image: torch.Tensor | np.ndarray, a_text: torch.Tensor | np.ndarray,
                          rule: PermutationRule | None = None) -> CalibratedCategories:
    """Categories of the ``K`` features from permutation tests of their activations (see the module docstring).

    Parameters
    ----------
    a_image, a_text : (n, K) tensors or arrays
        Non-negative, finite activations of the same ``n >= 2`` pairs, in the same order.
    rule : PermutationRule, optional
        Default ``PermutationRule()``.

    Returns
    -------
    CalibratedCategories

    Raises
    ------
    InputError
        for activations of other shapes or fewer than 2 pairs, negative ones, no alive feature, no feature with
        ``min_support`` pairs; NonFiniteError
        for NaN or infinite ones; ConfigError for a bad rule (alpha outside (0, 1), ``n_perm < 1``, ...).
    """
    rule = PermutationRule() if rule is None else rule
    if not isinstance(rule, PermutationRule):
        raise InputError(f"rule must be a PermutationRule, got {type(rule).__name__}")
    x_i, x_t = _activations(a_image, "a_image"), _activations(a_text, "a_text")
    if x_i.shape != x_t.shape or x_i.ndim != 2 or len(x_i) < 2:
        raise InputError(f"need activations (n, K) of the same n >= 2 pairs; got a_image {x_i.shape} and a_text "
                         f"{x_t.shape}")
    active = (x_i + x_t) > rule.eps
    alive = active.any(0)
    if not alive.any():
        raise InputError(f"all {x_i.shape[1]} features are dead (never above eps={rule.eps}): nothing to categorise")
    support = active.sum(0).astype(np.int64)
    tested = alive & (support >= rule.min_support)
    if not tested.any():
        raise InputError(f"no feature fires on at least min_support={rule.min_support} pairs (largest support "
                         f"{int(support.max())} of {len(x_i)}): nothing to categorise; lower min_support")
    scores, p_image, p_text = (np.where(alive, x, np.nan) for x in _swap_test(x_i, x_t, active, rule))
    q = np.full(len(scores), np.nan)
    q[tested] = benjamini_hochberg(np.minimum(1.0, 2 * np.minimum(p_image[tested], p_text[tested])))
    found = np.nan_to_num(q, nan=1.0) <= rule.alpha
    image_side = found & (p_image <= p_text)
    text_side = found & ~image_side
    p_pairing, pairing_r = _pairing_test(x_i, x_t, image_side, text_side, rule)
    kept = np.nan_to_num(p_pairing, nan=1.0) >= rule.alpha
    labels = np.full(len(scores), DEAD, dtype=object)
    labels[alive] = RARE
    labels[tested] = CLASSES[2]
    labels[image_side & kept] = CLASSES[0]
    labels[text_side & kept] = CLASSES[1]
    mass = (x_i + x_t).sum(0)  # as MDSResult.activation_mass: every pair
    return CalibratedCategories(labels=labels.astype(str), scores=scores, rule=rule, low=np.nan, high=np.nan,
                                min_support=rule.min_support, support=support, mass=mass, p_image=p_image,
                                p_text=p_text, q=q, p_pairing=p_pairing, pairing_r=pairing_r)


# ----------------------------------------------------------------------------------------------- helpers
def _activations(a: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise InputError(f"{name} must hold real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    check_finite(a, name)
    check_nonnegative(a, name, hint="pass non-negative feature activations (|z| or ReLU of raw dimensions)")
    return a


def _swap_test(x_i: np.ndarray, x_t: np.ndarray, active: np.ndarray, rule: PermutationRule
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed MDS ``(K,)`` (NaN dead) and the one-sided swap p-values ``(K,)`` above / below."""
    n, _ = x_i.shape
    total = x_i + x_t
    if rule.form == "paired":
        ratio = np.where(active, x_i / np.where(active, total, 1.0), 0.0)
        denom = active.sum(0).astype(np.float64)
        base, delta = ratio.sum(0), np.where(active, 1.0 - 2.0 * ratio, 0.0)
    else:  # aggregate: a swap moves a_T - a_I of the pair onto the image side
        denom, base, delta = total.sum(0), x_i.sum(0), x_t - x_i
    alive = denom > 0
    safe = np.where(alive, denom, 1.0)
    observed = base / safe
    tol = 1e-9 * np.maximum(1.0, np.abs(observed))
    above, below = np.zeros(len(observed)), np.zeros(len(observed))
    rng = np.random.default_rng([rule.seed, 0])
    block = max(1, BLOCK_ENTRIES // n)
    for start in range(0, rule.n_perm, block):
        swaps = (rng.random((min(block, rule.n_perm - start), n)) < 0.5).astype(np.float64)
        null = (base + swaps @ delta) / safe  # (block, K)
        above += (null >= observed - tol).sum(0)
        below += (null <= observed + tol).sum(0)
    nan = np.where(alive, 1.0, np.nan)
    return (np.where(alive, observed, np.nan), nan * (1 + above) / (1 + rule.n_perm),
            nan * (1 + below) / (1 + rule.n_perm))


def _pairing_test(x_i: np.ndarray, x_t: np.ndarray, image_side: np.ndarray, text_side: np.ndarray,
                  rule: PermutationRule) -> tuple[np.ndarray, np.ndarray]:
    """Pairing-test p-values ``(K,)`` of the image-side (text-side) features' image (text) activations against
    every feature's text (image) activations, and the observed statistics ``(K,)``; NaN for the other features.
    """
    p, r = np.full(x_i.shape[1], np.nan), np.full(x_i.shape[1], np.nan)
    if not rule.n_pairings or not (image_side.any() or text_side.any()):
        return p, r
    z_i, z_t = _standardise(x_i), _standardise(x_t)
    n = len(z_i)
    image_tested, text_tested = z_i[:, image_side], z_t[:, text_side]

    def statistic(rows: np.ndarray | slice) -> np.ndarray:
        """Largest |correlation| of each candidate with the other side's features, that side's rows re-paired."""
        img = np.abs(image_tested.T @ z_t[rows]).max(1) if image_tested.shape[1] else np.zeros(0, np.float32)
        txt = np.abs(text_tested.T @ z_i[rows]).max(1) if text_tested.shape[1] else np.zeros(0, np.float32)
        return np.concatenate([img, txt]) / n

    observed = statistic(slice(None))
    tol = 1e-9 * np.maximum(1.0, observed)
    rng = np.random.default_rng([rule.seed, 1])
    count = np.zeros(len(observed))
    for _ in range(rule.n_pairings):
        count += statistic(rng.permutation(n)) >= observed - tol
    tested = np.concatenate([np.flatnonzero(image_side), np.flatnonzero(text_side)])
    p[tested], r[tested] = (1 + count) / (1 + rule.n_pairings), np.minimum(observed, 1.0)
    return p, r


def _standardise(x: np.ndarray) -> np.ndarray:
    """Columns of ``x`` ``(n, K)`` centred and scaled to unit variance, float32 (a constant column stays 0)."""
    centred = x - x.mean(0)
    sd = centred.std(0)
    return (centred / np.where(sd > 0, sd, 1.0)).astype(np.float32)
