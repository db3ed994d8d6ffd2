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
    arrays = [np.asarray(s) for s in samples]
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one sample")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"samples differ in length: {[len(a) for a in arrays]}")
    if n < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = np.array([statistic(*(a[idx] for a in arrays)) for idx in rng.integers(0, n, size=(n_boot, n))],
                      dtype=float)
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


def across_seeds(table: pd.DataFrame, value: str | Sequence[str], by: str | Sequence[str] = (),
                 seed_column: str = "seed", confidence: float = 0.95, min_seeds: int = 3) -> pd.DataFrame:
    """Mean and Student-t interval of ``value`` column(s) across training seeds.

    Parameters
    ----------
    table : DataFrame
        One row per (seed, group), e.g. the concatenated results of one notebook run per seed.
    value : column name(s) to aggregate.
    by : column name(s) that define the groups (e.g. ``"map"``, ``"m"``).

    Returns
    -------
    DataFrame with, per group and value, ``n_seeds``, ``mean``, ``std``, ``ci_low``, ``ci_high`` (a seed with
    several rows in a group contributes its mean). Raises ValueError with fewer than ``min_seeds`` seeds in a
    group (the book reports at least 3). A seed whose value is undefined (NaN, e.g. a correlation over a
    constant) is left out of that value's statistics: ``n_seeds`` counts the seeds that remain, and with fewer
    than 2 of them ``mean`` and the interval are NaN (:func:`format_ci` prints ``"n/a"``).
    """
    values = [value] if isinstance(value, str) else list(value)
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*values, *by, seed_column] if c not in table.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the table (columns: {list(table.columns)})")
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
            half = sps.t.ppf(0.5 + confidence / 2, len(x) - 1) * std / np.sqrt(len(x)) if len(x) > 1 else np.nan
            rows.append({**dict(zip(by, key)), "value": v, "n_seeds": len(x), "mean": mean, "std": std,
                         "ci_low": mean - half, "ci_high": mean + half})
    return pd.DataFrame(rows)


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
