"""ImgD / TextD / CrossD: categorisation of alive features by their MDS, and its sensitivity to the rule.

Rules ([ours], Method page `method-categories`; the paper does not give its thresholds):

* ``sigma`` (default, ``k = 1``): with ``mu``, ``sigma`` the mean and (population) standard deviation of MDS over
  the alive features, ImgD if ``MDS > mu + k sigma``, TextD if ``MDS < mu - k sigma``, else CrossD;
* ``fixed``: ImgD if ``MDS > high``, TextD if ``MDS < low``, else CrossD (e.g. 0.6 / 0.4).

Dead features (NaN MDS) get the label ``"dead"`` and belong to no class. Rules can be given as objects or as
strings: ``"sigma"``, ``"sigma:1.5"``, ``"fixed"`` (0.6/0.4), ``"fixed:0.7/0.3"``.

A *minimum support* ([ours], Method page `method-categories`): a feature's support is the number of pairs on which
it fires, on either side (:meth:`mmlib.analysis.mds.MDSResult.support`). With ``min_support = m > 0``, an alive
feature that fires on fewer than ``m`` pairs is labelled ``"rare"`` and, like a dead one, belongs to no class and
does not enter ``mu`` and ``sigma``: its MDS is a ratio over a handful of pairs. ``min_support = 0`` (default)
categorises every alive feature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from mmlib.analysis.mds import MDSResult, check_min_support, check_scores
from mmlib.core.errors import ArgumentTypeError, ConfigError, InputError
from mmlib.core.validation import at_least, between, one_of, validate_config

CLASSES: tuple[str, ...] = ("ImgD", "TextD", "CrossD")
DEAD = "dead"
#: The label of an alive feature that fires on fewer pairs than the minimum support: it belongs to no class.
RARE = "rare"
#: The minimum supports (training pairs a feature must fire on to get a class; 0: every alive feature) at which the
#: book reports its classes (chapter 04) and the calibrated rule's planted precision (chapter 03).
MIN_SUPPORT_GRID: tuple[int, ...] = (0, 10, 40, 100)


@dataclasses.dataclass(frozen=True)
class CategoryRule:
    """A categorisation rule.

    Attributes
    ----------
    kind : {"sigma", "fixed"}
    k : float
        Width in standard deviations (``sigma`` rules).
    high, low : float
        Thresholds (``fixed`` rules).
    """

    kind: str = "sigma"
    k: float = 1.0
    high: float = 0.6
    low: float = 0.4

    def __post_init__(self) -> None:
        if self.kind not in ("sigma", "fixed"):
            raise ConfigError(f"unknown categorisation rule {self.kind!r}; choose 'sigma' or 'fixed'")
        validate_config(self, kind=one_of("sigma", "fixed"), k=at_least(0.0), high=between(0.0, 1.0),
                        low=between(0.0, 1.0))
        if self.kind == "fixed" and not 0 <= self.low <= self.high <= 1:
            raise ConfigError(f"CategoryRule needs 0 <= low <= high <= 1, got low={self.low}, high={self.high}; "
                              "swap or fix the thresholds")

    @property
    def name(self) -> str:
        """A short label, e.g. ``"mu±1σ"`` or ``"fixed 0.6/0.4"``."""
        return f"mu±{self.k:g}σ" if self.kind == "sigma" else f"fixed {self.high:g}/{self.low:g}"

    def thresholds(self, alive_scores: np.ndarray) -> tuple[float, float]:
        """``(low, high)`` for these alive scores ``(n_alive,)``."""
        if self.kind == "fixed":
            return (self.low, self.high)
        mu, sigma = float(np.mean(alive_scores)), float(np.std(alive_scores))
        return (mu - self.k * sigma, mu + self.k * sigma)


DEFAULT_RULE = CategoryRule()


def parse_rule(rule: CategoryRule | str) -> CategoryRule:
    """A :class:`CategoryRule` from itself or a string ``"sigma[:k]"`` / ``"fixed[:high/low]"``."""
    if isinstance(rule, CategoryRule):
        return rule
    if not isinstance(rule, str):
        raise ArgumentTypeError(f"a rule is a CategoryRule or a string, got {type(rule).__name__}")
    kind, _, arg = rule.partition(":")
    try:
        if kind == "sigma":
            return CategoryRule("sigma", k=float(arg) if arg else 1.0)
        if kind == "fixed":
            if not arg:
                return CategoryRule("fixed")
            high, low = (float(x) for x in arg.split("/"))
            return CategoryRule("fixed", high=high, low=low)
    except ValueError as err:
        raise InputError(f"cannot parse rule {rule!r}: {err}") from None
    raise InputError(f"unknown categorisation rule {rule!r}; use 'sigma', 'sigma:K', 'fixed' or 'fixed:HIGH/LOW'")


def rule_grid(ks: Sequence[float] = (0.5, 1.0, 1.5),
              fixed: Sequence[tuple[float, float]] = ((0.6, 0.4), (0.7, 0.3), (0.8, 0.2))) -> list[CategoryRule]:
    """The sensitivity grid: ``mu ± k sigma`` for each ``k`` and fixed ``(high, low)`` thresholds."""
    return ([CategoryRule("sigma", k=k) for k in ks] +
            [CategoryRule("fixed", high=h, low=lo) for h, lo in fixed])


@dataclasses.dataclass(frozen=True, eq=False)
class Categories:
    """Category of every feature under one rule.

    Attributes
    ----------
    labels : (K,) array of str
        ``"ImgD"``, ``"TextD"``, ``"CrossD"``, ``"dead"`` or ``"rare"`` (alive, below ``min_support``).
    scores : (K,) float array
        The MDS they were computed from (NaN = dead).
    rule : CategoryRule
    low, high : float
        The thresholds actually used.
    min_support : int
        The minimum support the classes were cut with (0: none).
    support : (K,) int array or None
        Pairs each feature fires on (None when categorised from bare scores).
    mass : (K,) float array or None
        Each feature's activation mass over the pairs (None when categorised from bare scores or a result
        without it): with ``support``, what activity-matched controls match
        (:mod:`mmlib.analysis.matched_controls`).
    """

    labels: np.ndarray
    scores: np.ndarray
    rule: CategoryRule
    low: float
    high: float
    min_support: int = 0
    support: np.ndarray | None = None
    mass: np.ndarray | None = None

    @property
    def alive(self) -> np.ndarray:
        """``(K,)`` bool: the features that got a class. With a minimum support, rare features are left out like
        dead ones (every alive feature otherwise).
        """
        return np.isin(self.labels, CLASSES)

    def mask(self, name: str) -> np.ndarray:
        """``(K,)`` bool mask of one class (``"ImgD"``, ``"TextD"``, ``"CrossD"``, ``"dead"`` or ``"rare"``)."""
        if name not in (*CLASSES, DEAD, RARE):
            raise InputError(f"unknown class {name!r}; choose one of {(*CLASSES, DEAD, RARE)}")
        return self.labels == name

    def sizes(self) -> dict[str, int]:
        """Number of features per class, of dead features and of rare ones (alive, below the minimum support)."""
        return {name: int((self.labels == name).sum()) for name in (*CLASSES, DEAD, RARE)}

    def to_frame(self) -> pd.DataFrame:
        """One row per feature: ``feature``, ``mds``, ``category``."""
        return pd.DataFrame({"feature": np.arange(len(self.labels)), "mds": self.scores, "category": self.labels})


def categorise(mds: MDSResult | np.ndarray, rule: CategoryRule | str = DEFAULT_RULE, min_support: int = 0
               ) -> Categories:
    """Assign every alive feature with at least ``min_support`` active pairs to ImgD, TextD or CrossD.

    Parameters
    ----------
    mds : MDSResult or (K,) array
        Scores; NaN marks a dead feature. An :class:`~mmlib.analysis.mds.MDSResult` also gives the support (and
        activation mass) of each feature, which a minimum support needs.
    rule : CategoryRule or str
    min_support : int
        Features alive on fewer pairs are labelled ``"rare"``: no class, and left out of the rule's thresholds.

    Returns
    -------
    Categories

    Raises
    ------
    InputError
        for a negative or non-integer ``min_support``, a positive one with bare scores (no support counts), or
        no feature left to categorise.
    """
    rule = parse_rule(rule)
    scores = _scores(mds)
    min_support = check_min_support(min_support)
    result = mds if isinstance(mds, MDSResult) else None
    if min_support and result is None:
        raise InputError(f"min_support={min_support} needs each feature's support: pass the MDSResult, not bare "
                         "scores")
    alive = np.isfinite(scores)
    support = result.support() if result is not None else None
    kept = alive if support is None else alive & (support >= min_support)
    if not kept.any():
        raise InputError(f"no feature fires on at least min_support={min_support} pairs (largest support "
                         f"{int(support.max())} of {result.n_pairs}): nothing to categorise; lower min_support")
    low, high = rule.thresholds(scores[kept])
    labels = np.full(len(scores), DEAD, dtype=object)
    labels[alive] = RARE
    labels[kept] = "CrossD"
    labels[kept & (scores > high)] = "ImgD"
    labels[kept & (scores < low)] = "TextD"
    mass = result.activation_mass if result is not None else None
    return Categories(labels=labels.astype(str), scores=scores, rule=rule, low=float(low), high=float(high),
                      min_support=min_support, support=support,
                      mass=None if mass is None else np.asarray(mass, dtype=np.float64))


def class_sizes(mds: MDSResult | np.ndarray, rules: Iterable[CategoryRule | str] | None = None,
                min_support: int = 0) -> pd.DataFrame:
    """Class sizes under each rule (default :func:`rule_grid`), at a minimum support (see :func:`categorise`).

    Returns
    -------
    DataFrame: ``rule``, ``min_support``, ``low``, ``high``, ``n_alive`` (features in a class), ``n_dead``,
    ``n_rare`` (alive, below the minimum support), then ``n_<class>`` and ``share_<class>`` (share of the
    features in a class) per class.
    """
    rows = []
    for rule in _rules(rules):
        cats = categorise(mds, rule, min_support)
        sizes = cats.sizes()
        n_alive = int(cats.alive.sum())
        rows.append(dict(rule=cats.rule.name, min_support=cats.min_support, low=cats.low, high=cats.high,
                         n_alive=n_alive, n_dead=sizes[DEAD], n_rare=sizes[RARE],
                         **{f"n_{c}": sizes[c] for c in CLASSES},
                         **{f"share_{c}": sizes[c] / n_alive for c in CLASSES}))
    return pd.DataFrame(rows)


def rule_agreement(mds: MDSResult | np.ndarray, rules: Iterable[CategoryRule | str] | None = None) -> pd.DataFrame:
    """Agreement of class membership between every pair of rules, over the alive features.

    Returns
    -------
    DataFrame, one row per ordered pair of rules (the diagonal included): ``rule_a``, ``rule_b``,
    ``agreement`` (share of alive features with the same label), ``kappa`` (Cohen's kappa) and, per class,
    ``jaccard_<class>`` (intersection over union of the class's members; NaN if both are empty).
    Pivot it for a matrix: ``table.pivot(index="rule_a", columns="rule_b", values="agreement")``.
    """
    cats = [categorise(mds, rule) for rule in _rules(rules)]
    alive = cats[0].alive
    rows = []
    for a in cats:
        for b in cats:
            la, lb = a.labels[alive], b.labels[alive]
            row = dict(rule_a=a.rule.name, rule_b=b.rule.name, agreement=float((la == lb).mean()),
                       kappa=_kappa(la, lb))
            for c in CLASSES:
                union = int(((la == c) | (lb == c)).sum())
                row[f"jaccard_{c}"] = int(((la == c) & (lb == c)).sum()) / union if union else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def under_each_rule(mds: MDSResult | np.ndarray, fn: Callable[[Categories], Any],
                    rules: Iterable[CategoryRule | str] | None = None) -> pd.DataFrame:
    """Re-run a downstream analysis under each rule and tabulate what it returns.

    Parameters
    ----------
    fn : callable
        ``fn(categories) -> result``; a number becomes a ``value`` column, a dict one column per key, a
        DataFrame is kept whole (its rows repeated per rule).

    Returns
    -------
    DataFrame with a ``rule`` column first.
    """
    frames = []
    for rule in _rules(rules):
        cats = categorise(mds, rule)
        out = fn(cats)
        if isinstance(out, pd.DataFrame):
            frame = out.copy()
        elif isinstance(out, dict):
            frame = pd.DataFrame([out])
        else:
            frame = pd.DataFrame([{"value": out}])
        frame.insert(0, "rule", cats.rule.name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------- helpers
def _scores(mds: MDSResult | np.ndarray) -> np.ndarray:
    scores = check_scores(mds, "mds")
    if len(scores) == 0:
        raise InputError("no features to categorise (empty MDS)")
    if not np.isfinite(scores).any():
        raise InputError(f"all {len(scores)} features are dead (NaN MDS): nothing to categorise")
    return scores


def _rules(rules: Iterable[CategoryRule | str] | None) -> list[CategoryRule]:
    out = [parse_rule(r) for r in (rule_grid() if rules is None else rules)]
    if not out:
        raise InputError("no rules given")
    return out


def _kappa(a: np.ndarray, b: np.ndarray) -> float:
    if len(set(a) | set(b)) < 2:  # one label everywhere: kappa is undefined, the rules agree trivially
        return 1.0 if (a == b).all() else float("nan")
    return float(cohen_kappa_score(a, b, labels=list(CLASSES)))


def random_feature_mask(rng: np.random.Generator, alive_idx: np.ndarray, k: int, n_features: int) -> np.ndarray:
    """A size-matched random feature set: ``k`` of ``alive_idx`` drawn uniformly without replacement.

    Returns a boolean mask ``(n_features,)``. Every chapter's "random set as large as the group" control uses
    this draw, so the same ``rng`` state gives the same set everywhere.
    """
    mask = np.zeros(n_features, bool)
    mask[rng.choice(alive_idx, size=k, replace=False)] = True
    return mask


#: ``"random:TextD"`` names a random set of alive features as large as TextD.
RANDOM_PREFIX = "random:"


def group_masks(categories: Categories, groups: Sequence[str], seed: int = 0, skip_empty: bool = False
                ) -> dict[str, np.ndarray]:
    """Feature masks ``(K,)`` of the named groups: classes (``"ImgD"``, ``"TextD"``, ``"CrossD"``) or
    size-matched random sets (``"random:TextD"``: as many alive features as TextD, drawn uniformly without
    replacement among the alive features, seeded by ``seed`` and the group's position).

    Raises
    ------
    ValueError
        for an unknown group (the message lists the choices), or an empty group unless ``skip_empty`` (then
        it is left out of the result).
    """
    choices = [*CLASSES, *(RANDOM_PREFIX + c for c in CLASSES)]
    unknown = [g for g in groups if g not in choices]
    if unknown:
        raise InputError(f"unknown feature group(s) {unknown}; choose from {choices}")
    alive_idx = np.flatnonzero(categories.alive)
    out: dict[str, np.ndarray] = {}
    for i, g in enumerate(groups):
        base = g[len(RANDOM_PREFIX):] if g.startswith(RANDOM_PREFIX) else g
        mask = categories.mask(base)
        if not mask.any():
            if skip_empty:
                continue
            raise InputError(f"feature group {base!r} is empty under rule {categories.rule.name} "
                             f"(class sizes {categories.sizes()}): nothing to edit")
        if g.startswith(RANDOM_PREFIX):
            mask = random_feature_mask(np.random.default_rng([seed, i]), alive_idx, int(mask.sum()), len(mask))
        out[g] = mask
    return out


def check_group_masks(groups: Mapping[str, np.ndarray], n_features: int) -> dict[str, np.ndarray]:
    """The named feature masks as boolean arrays ``(n_features,)``; ValueError for no group, a mask of another
    dtype or shape, or an empty mask (naming the group).
    """
    if not groups:
        raise InputError("no feature groups given")
    out = {}
    for name, mask in groups.items():
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != (n_features,):
            raise InputError(f"group {name!r}: expected a boolean mask of shape ({n_features},), "
                             f"got dtype {mask.dtype} and shape {mask.shape}")
        if not mask.any():
            raise InputError(f"group {name!r} is empty: no feature selected")
        out[name] = mask
    return out
