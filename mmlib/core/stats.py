"""Small statistics shared by the chapters: a seeded percentile bootstrap, aggregation over seeds, Wilson intervals,
and reading a row and its side out of an interval table.

(Proportions get Wilson intervals from :func:`proportion_ci`.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.stats import binomtest


def bootstrap_ci(statistic: Callable[..., float], *samples: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)``, resampling the rows jointly.

    Parameters
    ----------
    statistic : callable
        ``statistic(*resampled) -> float``; a NaN result (e.g. a degenerate resample) is ignored.
    *samples : arrays ``(n, ...)``
        Resampled together (same row indices), e.g. paired ``x`` and ``y`` for a correlation.
    n_boot, seed, confidence : bootstrap draws, RNG seed, interval level.

    Returns
    -------
    (low, high); ``(nan, nan)`` when fewer than 2 rows or no finite resample.
    """
    arrays = _paired_samples("bootstrap_ci", samples)
    n = len(arrays[0])
    if n < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = np.array([statistic(*(a[idx] for a in arrays)) for idx in rng.integers(0, n, size=(n_boot, n))],
                      dtype=float)
    return _percentiles(values, confidence)


def _paired_samples(name: str, samples: Sequence) -> list[np.ndarray]:
    """``samples`` as arrays of one length (ValueError naming ``name`` otherwise)."""
    arrays = [np.asarray(s) for s in samples]
    if not arrays:
        raise ValueError(f"{name} needs at least one sample")
    if any(len(a) != len(arrays[0]) for a in arrays):
        raise ValueError(f"samples differ in length: {[len(a) for a in arrays]}")
    return arrays


def cluster_bootstrap_ci(statistic: Callable[..., float], *samples: np.ndarray, clusters: np.ndarray | Sequence,
                         n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)`` that resamples whole clusters of rows.

    Rows that share a cluster (e.g. features matched to the same planted factor value) are not independent: a
    bootstrap over rows then gives an interval far too narrow. This one draws clusters with replacement and keeps all
    rows of each drawn cluster (as often as it was drawn).

    Parameters
    ----------
    statistic : callable
        ``statistic(*resampled) -> float``; a NaN result (e.g. a resample with a constant side) is ignored.
    *samples : arrays ``(n, ...)``
        Resampled together.
    clusters : ``(n,)``
        The cluster label of every row (any hashable values).

    Returns
    -------
    (low, high); ``(nan, nan)`` with fewer than 2 clusters or no finite resample.
    """
    if not samples:
        raise ValueError("cluster_bootstrap_ci needs at least one sample")
    labels = np.asarray(clusters)
    arrays = _paired_samples("cluster_bootstrap_ci", (*samples, labels))[:-1]
    n = len(labels)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    _, codes = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(codes == c) for c in range(codes.max() + 1)] if n else []
    if len(members) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b, drawn in enumerate(rng.integers(0, len(members), size=(n_boot, len(members)))):
        idx = np.concatenate([members[c] for c in drawn])
        values[b] = statistic(*(a[idx] for a in arrays))
    return _percentiles(values, confidence)


def mean_bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values (n,)`` (NaNs dropped), vectorised."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    block = max(1, 2 ** 22 // len(values))  # bound the (draws, n) index matrix at ~4 M entries
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        means[start:stop] = values[rng.integers(0, len(values), size=(stop - start, len(values)))].mean(1)
    return _percentiles(means, confidence)


#: Feasible ranges for :func:`across_seeds`'s ``bounds``: a proportion or share, a count or another non-negative
#: quantity (a size, an error, a rank), and a correlation, cosine or agreement coefficient (kappa).
PROPORTION: tuple[float, float] = (0.0, 1.0)
NON_NEGATIVE: tuple[float, float] = (0.0, float("inf"))
CORRELATION: tuple[float, float] = (-1.0, 1.0)

#: How :func:`across_seeds` builds an interval: a Student-t interval of the mean (can leave a bounded range, e.g.
#: give a proportion above 1 with 3 seeds), or the percentile bootstrap of the mean over seeds (always inside the
#: range of the seeds' values, so inside any range they respect).
SEED_INTERVALS = ("t", "percentile")


def across_seeds(table: pd.DataFrame, value: str | Sequence[str], by: str | Sequence[str] = (),
                 seed_column: str = "seed", confidence: float = 0.95, min_seeds: int = 3,
                 method: str = "t", n_boot: int = 2000, boot_seed: int = 0,
                 bounds: tuple[float, float] | Mapping[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """Mean and interval (Student-t, or percentile bootstrap: ``method``) of ``value`` column(s) across seeds.

    Parameters
    ----------
    table : DataFrame
        One row per (seed, group), e.g. the concatenated results of one notebook run per seed.
    value : column name(s) to aggregate.
    by : column name(s) that define the groups (e.g. ``"map"``, ``"m"``).
    method : ``"t"`` or ``"percentile"`` (:data:`SEED_INTERVALS`)
        ``"percentile"`` never leaves the range of the seeds' values (a count stays >= 0, a proportion in [0, 1]);
        it uses ``n_boot`` draws seeded with ``boot_seed``. With 3 seeds it is coarse (at most 10 distinct resample
        means): read it as the spread of the seeds, not as a sharp interval.
    bounds : (low, high), or a mapping value column -> (low, high), or None
        The feasible range of a bounded quantity (:data:`PROPORTION`, :data:`NON_NEGATIVE`, :data:`CORRELATION`;
        a column missing from a mapping is unbounded). The interval is the t interval intersected with the range:
        the true mean lies in the range, so the intersection covers it exactly when the t interval does (the same
        coverage), and a count never gets a negative bound nor a proportion one above 1. A seed's value outside its
        range raises ValueError (the column is not what ``bounds`` says it is).

    Returns
    -------
    DataFrame with, per group and value, ``n_seeds``, ``mean``, ``std``, ``ci_low``, ``ci_high`` (a seed with
    several rows in a group contributes its mean). Raises ValueError with fewer than ``min_seeds`` seeds in a
    group (the book reports at least 3). A seed whose value is undefined (NaN, e.g. a correlation over a
    constant) is left out of that value's statistics: ``n_seeds`` counts the seeds that remain, and with fewer
    than 2 of them ``mean`` and the interval are NaN (:func:`format_ci` prints ``"n/a"``).
    """
    if method not in SEED_INTERVALS:
        raise ValueError(f"method must be one of {SEED_INTERVALS}, got {method!r}")
    values = [value] if isinstance(value, str) else list(value)
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*values, *by, seed_column] if c not in table.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the table (columns: {list(table.columns)})")
    ranges = _feasible_ranges(bounds, values)
    rows = []
    groups = table.groupby(by, sort=False) if by else [((), table)]
    for key, group in groups:
        n_seeds = group[seed_column].nunique()
        if n_seeds < max(2, min_seeds):
            raise ValueError(f"group {key!r} has {n_seeds} seed(s); aggregate over at least "
                             f"{max(2, min_seeds)} training seeds")
        key = key if isinstance(key, tuple) else (key,)
        for v in values:
            x = group.groupby(seed_column)[v].mean().to_numpy(dtype=float)
            x = x[np.isfinite(x)]
            mean, std = (float(x.mean()), float(x.std(ddof=1))) if len(x) > 1 else (np.nan, np.nan)
            if method == "percentile":
                low, high = mean_bootstrap_ci(x, n_boot=n_boot, seed=boot_seed, confidence=confidence)
            else:
                half = sps.t.ppf(0.5 + confidence / 2, len(x) - 1) * std / np.sqrt(len(x)) if len(x) > 1 else np.nan
                low, high = mean - half, mean + half
            if v in ranges:
                floor, ceiling = ranges[v]
                outside = x[(x < floor) | (x > ceiling)]
                if len(outside):
                    raise ValueError(f"column {v!r} of group {key!r} has value(s) {outside.tolist()} outside its "
                                     f"feasible range [{floor}, {ceiling}] (bounds): fix the column or its bounds")
                low, high = max(low, floor), min(high, ceiling)
            rows.append({**dict(zip(by, key)), "value": v, "n_seeds": len(x), "mean": mean, "std": std,
                         "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def _feasible_ranges(bounds, values: list[str]) -> dict[str, tuple[float, float]]:
    """``bounds`` of :func:`across_seeds` as value column -> ``(low, high)``, checked."""
    if bounds is None:
        return {}
    if isinstance(bounds, Mapping):
        unknown = sorted(set(bounds) - set(values))
        if unknown:
            raise ValueError(f"bounds names column(s) {unknown} that are not aggregated (values: {values})")
        ranges = dict(bounds)
    else:
        ranges = dict.fromkeys(values, bounds)
    checked = {}
    for v, pair in ranges.items():
        try:
            low, high = (float(b) for b in pair)
        except (TypeError, ValueError):
            raise ValueError(f"bounds of {v!r} must be a pair (low, high) of numbers, got {pair!r}") from None
        if np.isnan(low) or np.isnan(high) or not low < high:
            raise ValueError(f"bounds of {v!r} must satisfy low < high, got {pair!r}")
        checked[v] = (low, high)
    return checked


def format_ci(row: Mapping[str, float] | pd.Series, digits: int = 3, signed: bool = False) -> str:
    """``"mean [ci_low, ci_high]"`` of a row of :func:`across_seeds` (``signed``: always show the sign).

    No value (a non-finite mean, e.g. a class empty in all but one seed) reads ``"n/a"``; a mean without a
    finite interval reads ``"mean (no interval)"``.

    >>> format_ci({"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75}, digits=2)
    '0.50 [0.25, 0.75]'
    >>> format_ci({"mean": 0.5, "ci_low": float("nan"), "ci_high": float("nan")}, digits=2)
    '0.50 (no interval)'
    """
    missing = [k for k in ("mean", "ci_low", "ci_high") if k not in row]
    if missing:
        raise KeyError(f"format_ci needs the keys mean, ci_low and ci_high; missing {missing}")
    spec = f"{'+' if signed else ''}.{int(digits)}f"
    if not np.isfinite(row["mean"]):
        return "n/a"
    if not (np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"])):
        return f"{row['mean']:{spec}} (no interval)"
    return f"{row['mean']:{spec}} [{row['ci_low']:{spec}}, {row['ci_high']:{spec}}]"



def format_ci_column(table: pd.DataFrame, digits: int = 3, signed: bool = False) -> pd.Series:
    """:func:`format_ci` of every row of ``table``, as a string Series on its index (empty for an empty table).

    ``table.apply(format_ci, axis=1)`` returns an empty *DataFrame* for an empty table, which cannot become a column;
    this always returns a Series, so that a table with no rows (e.g. no class non-empty in two seeds) still shows.
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a DataFrame of across_seeds rows, got {type(table).__name__}")
    return pd.Series([format_ci(row, digits=digits, signed=signed) for _, row in table.iterrows()], index=table.index,
                     dtype=object)

def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (float("nan"), float("nan"))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return (float(low), float(high))


def proportion_ci(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (``(nan, nan)`` for zero trials)."""
    if trials == 0:
        return (float("nan"), float("nan"))
    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def ci_row(table: pd.DataFrame, **where: object) -> pd.Series:
    """The one row of ``table`` (e.g. of :func:`across_seeds`) whose columns equal ``where``.

    >>> ci_row(pd.DataFrame({"map": ["SAE", "NCL"], "mean": [0.1, 0.2]}), map="NCL")["mean"]
    np.float64(0.2)

    Raises
    ------
    KeyError
        naming the filter and the number of rows found, when that is not exactly one.
    """
    missing = [k for k in where if k not in table.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the table (columns: {list(table.columns)})")
    mask = np.ones(len(table), bool)
    for column, value in where.items():
        mask &= (table[column] == value).to_numpy()
    if mask.sum() != 1:
        raise KeyError(f"expected exactly one row with {where}, found {int(mask.sum())}")
    return table[mask].iloc[0]


def interval_side(row: Mapping[str, float] | pd.Series, value: float = 0.0) -> int:
    """``+1`` if the interval ``[ci_low, ci_high]`` lies above ``value``, ``-1`` if below, ``0`` if it contains it
    (or is undefined).
    """
    low, high = float(row["ci_low"]), float(row["ci_high"])
    if np.isfinite(low) and low > value:
        return 1
    if np.isfinite(high) and high < value:
        return -1
    return 0


def finite_mean(values: np.ndarray | Sequence[float]) -> float:
    """Mean of the finite entries of ``values`` (NaN when there is none)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")
