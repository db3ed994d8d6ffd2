"""Judging MDS results against their null-world twins (Method page, `method-controls`).

The null world is the generated world with every factor always shown and always said, so no feature has a reason
to be modality-specific. A conclusion read from an MDS histogram survives the control only where the world differs
from the null in the direction the conclusion needs. This module holds the comparisons chapter 03 makes:

* :func:`paired_differences`: per seed, the difference of a summary value between two levels of one column
  (world - null, DeCLIP-like - CLIP), paired on the other columns; :func:`mmlib.core.stats.across_seeds` then
  gives its t-interval, and a second call gives a difference of differences;
* :func:`compare_maps_to_null`: :func:`mmlib.analysis.planted_truth.compare_to_null` for several maps at once;
* :func:`interval_word`: the word a sentence needs for the side of an interval (above, around or below a value).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mmlib.analysis.mds import MDSResult
from mmlib.analysis.planted_truth import compare_to_null
from mmlib.core.errors import InputError
from mmlib.core.stats import interval_side

#: The metrics of :func:`mmlib.analysis.planted_truth.compare_to_null` that chapter 03 tabulates.
NULL_METRICS: tuple[str, ...] = ("mean", "share < 0.1", "share > 0.9", "share extreme", "share ImgD (mu±1σ)",
                                 "share TextD (mu±1σ)", "share CrossD (mu±1σ)", "KS distance")


def paired_differences(table: pd.DataFrame, values: str | Sequence[str], column: str, minuend: str,
                       subtrahend: str, index: Sequence[str]) -> pd.DataFrame:
    """Per row of ``index``, ``value(column = minuend) - value(column = subtrahend)``.

    Parameters
    ----------
    table : DataFrame
        Long format, e.g. :meth:`mmlib.pipeline.MapGrid.summary` (one row per world, model, map and seed).
    values : column(s) to difference
    column : the column whose two levels are compared (e.g. ``"world"``)
    minuend, subtrahend : its two levels (e.g. ``"world"`` and ``"null"``)
    index : the columns that pair the rows (e.g. ``["model", "map", "seed"]``); a key with several rows per level
        contributes their mean

    Returns
    -------
    DataFrame: the ``index`` columns (sorted) and one column per value, holding the differences; a key that lacks
    one of the two levels is dropped, an undefined (NaN) value gives a NaN difference and keeps its row, so that
    :func:`~mmlib.core.stats.across_seeds` still counts the seed.

    Examples
    --------
    >>> t = pd.DataFrame({"world": ["world", "null"], "seed": [0, 0], "mean": [0.7, 0.5]})
    >>> float(paired_differences(t, "mean", "world", "world", "null", ["seed"])["mean"].iloc[0])
    0.2
    """
    values = [values] if isinstance(values, str) else list(values)
    index = list(index)
    missing = [c for c in [*values, column, *index] if c not in table.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the table (columns: {list(table.columns)})")
    levels = set(table[column])
    for level in (minuend, subtrahend):
        if level not in levels:
            raise InputError(f"no rows with {column} == {level!r} (levels: {sorted(map(str, levels))})")
    both = table[table[column].isin([minuend, subtrahend])]
    wide = both.groupby([*index, column])[values].mean().unstack(column)  # NaN values stay NaN (a seed is kept)
    present = both.groupby(index)[column].nunique() == 2
    out = pd.concat({v: wide[v][minuend] - wide[v][subtrahend] for v in values}, axis=1)
    return out[present.reindex(out.index).to_numpy()].reset_index()


def compare_maps_to_null(pairs: Mapping[tuple[str, ...], tuple[MDSResult | np.ndarray, MDSResult | np.ndarray]],
                         names: Sequence[str] = ("model", "map"),
                         metrics: Sequence[str] = NULL_METRICS) -> pd.DataFrame:
    """:func:`~mmlib.analysis.planted_truth.compare_to_null` of several maps, in one long table.

    Parameters
    ----------
    pairs : key -> (world MDS, null-world MDS), e.g. ``{("CLIP", "SAE"): (world, null)}``; scores ``(K,)``
    names : the names of the key's parts (the table's first columns)
    metrics : the rows of :func:`compare_to_null` to keep, in this order

    Returns
    -------
    DataFrame: the key columns, then ``metric``, ``world``, ``null``, ``statistic`` and ``p_value``.
    """
    rows = []
    for key, (world, null) in pairs.items():
        key = key if isinstance(key, tuple) else (key,)
        if len(key) != len(names):
            raise InputError(f"key {key!r} has {len(key)} parts but names {tuple(names)} has {len(names)}")
        t = compare_to_null(world, null).set_index("metric")
        unknown = [m for m in metrics if m not in t.index]
        if unknown:
            raise KeyError(f"metrics {unknown} not computed by compare_to_null (it gives {list(t.index)})")
        for metric in metrics:
            r = t.loc[metric]
            rows.append({**dict(zip(names, key)), "metric": metric, "world": r["world"], "null": r["null"],
                         "statistic": r["statistic"], "p_value": r["p_value"]})
    return pd.DataFrame(rows, columns=[*names, "metric", "world", "null", "statistic", "p_value"])


def interval_word(row: Mapping[str, float] | pd.Series, above: str, around: str, below: str,
                  value: float = 0.0) -> str:
    """``above`` if the interval ``[ci_low, ci_high]`` lies above ``value``, ``below`` if it lies below, else
    ``around`` (also for an undefined interval; :func:`mmlib.core.stats.interval_side`): the words of a sentence
    that must follow the result.

    >>> interval_word({"ci_low": 0.1, "ci_high": 0.3}, "more", "no different", "fewer")
    'more'
    """
    return {1: above, 0: around, -1: below}[interval_side(row, value)]
