"""Random control sets for a group of features: matched on size only, or on activity too.

A group's effect (e.g. the drop when it is removed) is judged against random sets of features. Drawn uniformly
among the alive features (:class:`SizeMatched`), a control set has the group's size but not its activity: near-silent
groups (features that fire on a handful of pairs) are then compared with sets that fire far more, and a removal that
does nothing looks like "hurts less than chance". :class:`ActivityMatched` ([ours], Method page
`method-categories`) draws, for each group feature, a random feature of the pool from the same *stratum*: the
stratum is the pair (bin of ``log support``, bin of ``log mass``), bins of equal width on the log scale, so that
features of one stratum fire on as many pairs within a factor ``support_ratio`` (default 2) and carry as much
activation within a factor ``mass_ratio`` (default 2). *Support* is the number of pairs a feature fires on and
*mass* its total activation (:meth:`mmlib.analysis.mds.MDSResult.support`,
:meth:`~mmlib.analysis.mds.MDSResult.mass`). A stratum whose
candidates run out sends the group feature to the nearest stratum that has some left (nearest in support bins
first, then in mass bins), and the draw records it (:attr:`ControlDraw.n_fallback`, and a
:class:`MatchFallbackWarning`). :func:`match_quality` says how well the drawn sets match.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
import pandas as pd

from mmlib.analysis.categories import RANDOM_PREFIX, Categories, group_masks, random_feature_mask
from mmlib.core.errors import InputError

#: ``exclude_group`` choices of :class:`ActivityMatched`: always, never, or when the pool outside the group allows.
Exclude = bool | Literal["auto"]


class MatchFallbackWarning(UserWarning):
    """A group feature's stratum ran out of candidates: it was matched in the nearest stratum with some left."""


@dataclasses.dataclass(frozen=True)
class ControlDraw:
    """One control set.

    Attributes
    ----------
    mask : (K,) bool array
        The drawn features.
    n_fallback : int
        Group features matched outside their own stratum (0 for a size-matched draw).
    excludes_group : bool
        Whether the set was drawn outside the group.
    """

    mask: np.ndarray
    n_fallback: int = 0
    excludes_group: bool = False


class ControlSampler(Protocol):
    """Draws random control sets for a group of features."""

    name: str

    def draw(self, rng: np.random.Generator, group: np.ndarray) -> ControlDraw:
        """A control set for ``group`` ``(K,)`` bool, from ``rng``."""


@dataclasses.dataclass(frozen=True, eq=False)
class SizeMatched:
    """Control sets as large as the group, drawn uniformly without replacement from ``pool`` (they may overlap the
    group), by :func:`mmlib.analysis.categories.random_feature_mask`: the same draw for the same ``rng`` state.

    Attributes
    ----------
    pool : (K,) bool array
        The features a control may contain (e.g. the alive ones).
    """

    pool: np.ndarray
    name: str = "size"

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool", _bool_mask(self.pool, len(np.asarray(self.pool)), "pool"))

    def draw(self, rng: np.random.Generator, group: np.ndarray) -> ControlDraw:
        """A uniform draw of ``group.sum()`` pool features."""
        group = _bool_mask(group, len(self.pool), "group")
        k, idx = int(group.sum()), np.flatnonzero(self.pool)
        _check_size(k, len(idx), "pool")
        return ControlDraw(random_feature_mask(rng, idx, k, len(self.pool)), 0, False)


@dataclasses.dataclass(frozen=True, eq=False)
class ActivityMatched:
    """Control sets matched to the group feature by feature on support and activation mass.

    Attributes
    ----------
    support : (K,) array
        Pairs each feature fires on (non-negative integers).
    mass : (K,) array
        Each feature's total activation (non-negative, finite).
    pool : (K,) bool array
        The features a control may contain (e.g. the alive ones).
    support_ratio : float
        Width of a support bin as a ratio (> 1): bin ``floor(log(max(support, 1)) / log(support_ratio))``.
    mass_ratio : float
        Width of a mass bin as a ratio (> 1; ``inf``: match on support only).
    exclude_group : bool or "auto"
        Draw controls outside the group (True), from the whole pool (False), or outside the group when the pool
        outside it holds at least as many features as the group, else from the whole pool ("auto").
    """

    support: np.ndarray
    mass: np.ndarray
    pool: np.ndarray
    support_ratio: float = 2.0
    mass_ratio: float = 2.0
    exclude_group: Exclude = True
    name: str = "activity"

    def __post_init__(self) -> None:
        support = np.asarray(self.support)
        if support.ndim != 1 or not len(support):
            raise InputError(f"support must be a non-empty (K,) array, got shape {support.shape}")
        n = len(support)
        if not np.issubdtype(support.dtype, np.number) or not np.all(np.isfinite(support)) or (support < 0).any() \
                or not np.all(support == np.round(support)):
            raise InputError("support must hold non-negative integer counts of pairs (MDSResult.support())")
        mass = np.asarray(self.mass, dtype=float) if np.asarray(self.mass).dtype != object else None
        if mass is None or mass.shape != (n,) or not np.all(np.isfinite(mass)) or (mass < 0).any():
            raise InputError(f"mass must be a finite non-negative (K,) = ({n},) array (MDSResult.mass()), got "
                             f"shape {np.shape(self.mass)}")
        pool = _bool_mask(self.pool, n, "pool")
        if not pool.any():
            raise InputError("the pool is empty: no feature to draw controls from")
        for name in ("support_ratio", "mass_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 1:
                raise InputError(f"{name} must be a number > 1 (the width of a bin as a ratio), got {value!r}")
        if self.exclude_group not in (True, False, "auto"):
            raise InputError(f"exclude_group must be True, False or 'auto', got {self.exclude_group!r}")
        object.__setattr__(self, "support", support.astype(np.int64))
        object.__setattr__(self, "mass", mass)
        object.__setattr__(self, "pool", pool)

    def strata(self) -> np.ndarray:
        """``(K, 2)`` int: each feature's (support bin, mass bin)."""
        return np.stack([_log_bins(np.maximum(self.support, 1), self.support_ratio),
                         _log_bins(np.maximum(self.mass, np.finfo(float).tiny), self.mass_ratio)], axis=1)

    def draw(self, rng: np.random.Generator, group: np.ndarray) -> ControlDraw:
        """One control set for ``group`` ``(K,)`` bool: as many features as the group, one per group feature from
        its stratum (the nearest stratum with candidates left when it runs out; warned and counted).

        Raises
        ------
        InputError
            for a malformed or empty group, or fewer candidates than group features.
        """
        group = _bool_mask(group, len(self.pool), "group")
        k = int(group.sum())
        if k == 0:
            raise InputError("the group is empty: nothing to match")
        outside = self.pool & ~group
        exclude = self.exclude_group if self.exclude_group != "auto" else int(outside.sum()) >= k
        available = outside if exclude else self.pool.copy()
        _check_size(k, int(available.sum()), "pool outside the group" if exclude else "pool",
                    "use a larger pool, or exclude_group=False / 'auto' to allow overlap" if exclude else
                    "draw from a larger pool")
        strata = self.strata()
        members = rng.permutation(np.flatnonzero(group))
        chosen, unmatched = [], []
        keys, inverse = np.unique(strata[members], axis=0, return_inverse=True)
        for j, key in enumerate(keys):  # same stratum first, for every group feature
            need = members[inverse.ravel() == j]
            cand = np.flatnonzero(available & (strata == key).all(axis=1))
            take = rng.permutation(cand)[:len(need)]
            available[take] = False
            chosen.extend(take.tolist())
            unmatched.extend(need[len(take):].tolist())
        for f in unmatched:  # then the nearest stratum with candidates left
            cand = np.flatnonzero(available)
            dist = np.abs(strata[cand] - strata[f])
            order = np.lexsort((dist[:, 1], dist[:, 0]))
            best = dist[order[0]]
            near = cand[(dist == best).all(axis=1)]
            pick = int(rng.choice(near))
            available[pick] = False
            chosen.append(pick)
        if unmatched:
            warnings.warn(f"{len(unmatched)} of {k} group features matched outside their stratum (it ran out of "
                          "candidates); see match_quality", MatchFallbackWarning, stacklevel=2)
        mask = np.zeros(len(self.pool), bool)
        mask[chosen] = True
        return ControlDraw(mask, len(unmatched), bool(exclude))


def matched_group_masks(categories: Categories, groups: Sequence[str], sampler: ControlSampler, seed: int = 0,
                        skip_empty: bool = False, n_fallback: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Feature masks ``(K,)`` of the named groups, as :func:`mmlib.analysis.categories.group_masks`, except that each
    random group ``"random:<class>"`` is one draw of ``sampler`` for that class (e.g. :class:`ActivityMatched`)
    instead of a size-matched one; the draw of the group at position ``i`` is seeded by ``[seed, i]``.

    ``n_fallback``: a dict to receive, per random group, the class features its draw matched outside their stratum
    (:attr:`ControlDraw.n_fallback`); given, the draws' :class:`MatchFallbackWarning` is not raised (the caller reports
    the counts). Not given, the sampler warns as usual.

    Raises
    ------
    InputError
        as :func:`~mmlib.analysis.categories.group_masks` (an unknown or empty group), or when ``sampler`` cannot
        draw (e.g. a pool too small for the group).
    """
    out = group_masks(categories, groups, seed=seed, skip_empty=skip_empty)
    for i, g in enumerate(groups):
        if g.startswith(RANDOM_PREFIX) and g in out:
            with warnings.catch_warnings():
                if n_fallback is not None:
                    warnings.simplefilter("ignore", MatchFallbackWarning)
                draw = sampler.draw(np.random.default_rng([seed, i]), categories.mask(g[len(RANDOM_PREFIX):]))
            out[g] = draw.mask
            if n_fallback is not None:
                n_fallback[g] = draw.n_fallback
    return out


def match_quality(group: np.ndarray, controls: Sequence[np.ndarray], support: np.ndarray,
                  mass: np.ndarray) -> dict[str, float]:
    """How well control sets match a group on activity.

    Parameters
    ----------
    group : (K,) bool
    controls : sequence of (K,) bool masks (the drawn sets, pooled)
    support, mass : (K,) arrays

    Returns
    -------
    dict: ``n_group``, ``n_draws``, ``support_group`` / ``support_control`` (median support of the group's features
    and of the drawn features, pooled over draws), ``mass_group`` / ``mass_control`` (median mass), ``overlap``
    (mean share of a control set that lies in the group).
    """
    support, mass = np.asarray(support, dtype=float), np.asarray(mass, dtype=float)
    group = _bool_mask(group, len(support), "group")
    if mass.shape != support.shape:
        raise InputError(f"support {support.shape} and mass {mass.shape} must both be (K,)")
    if not group.any() or not len(controls):
        raise InputError("match_quality needs a non-empty group and at least one control set")
    masks = np.stack([_bool_mask(c, len(support), "control") for c in controls])
    drawn = np.nonzero(masks)[1]  # every drawn feature, once per draw
    return dict(n_group=int(group.sum()), n_draws=len(masks),
                support_group=float(np.median(support[group])), support_control=float(np.median(support[drawn])),
                mass_group=float(np.median(mass[group])), mass_control=float(np.median(mass[drawn])),
                overlap=float((masks & group).sum(axis=1).mean() / group.sum()))


def quality_table(rows: Sequence[dict[str, object]]) -> pd.DataFrame:
    """A frame of :func:`match_quality` rows (each with its keys, e.g. group and control), ratios added:
    ``support_ratio`` = control / group median support, ``mass_ratio`` likewise (1 = matched).
    """
    table = pd.DataFrame(list(rows))
    if table.empty:
        raise InputError("no match-quality rows")
    return table.assign(support_ratio=table.support_control / table.support_group,
                        mass_ratio=table.mass_control / table.mass_group)


# ----------------------------------------------------------------------------------------------- helpers
def _bool_mask(mask: np.ndarray, n: int, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n,):
        raise InputError(f"{what}: expected a boolean mask of shape ({n},), got dtype {mask.dtype} and shape "
                         f"{mask.shape}")
    return mask.copy()


def _check_size(k: int, available: int, where: str, hint: str = "draw from a larger pool") -> None:
    if k > available:
        raise InputError(f"the group has {k} features but the {where} holds only {available} to draw a control "
                         f"set from; {hint}")


def _log_bins(values: np.ndarray, ratio: float) -> np.ndarray:
    """Bin index ``(K,)`` int of positive values on a log scale, bins ``ratio`` wide (one bin for ``ratio = inf``)."""
    if np.isinf(ratio):
        return np.zeros(len(values), np.int64)
    return np.floor(np.log(values) / np.log(ratio) + 1e-9).astype(np.int64)
