"""The tests and power preconditions that decide claims 5.6a and 5.6b, as data for :mod:`mmlib.reporting.verdict_rules`.

Tests are rows (``test``, ``mean``, ``ci_low``, ``ci_high``; each claimed above 0: the chapter makes each an
``IntervalTest.from_ci(row.test, row)``), preconditions are dicts (``name``, ``met``, ``evidence``: a
``Precondition(**p)``); this layer sits below :mod:`mmlib.reporting` and does not import it.

**5.6a** (TextD alignment gives the best defence), per map: :func:`defence_tests` are the TextD-aligned model's robust
accuracy minus each other category's (paired bootstrap intervals of
:func:`~mmlib.case_studies.adversarial.evaluation.robust_gaps`), each claimed above 0; :func:`defence_preconditions`
say whether the instrument can see a defence at all: the attack lowers the undefended model's accuracy, and aligning
every alive feature raises its robust accuracy.

**5.6b** (cross-modal adversarial examples by perturbing one category), per map: :func:`steering_tests` are the
steered category's per-image target gain minus that of a size-matched random set and minus the noise control's, both
paired over the same images and targets, and its selectivity, each claimed above 0; :func:`steering_preconditions`:
the ±ε noise control does not move the target caption, and steering every alive feature (the positive control)
does.

This module is outside the import closure of :mod:`~mmlib.case_studies.adversarial.defence`: editing it does not
retrain the adapters.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from mmlib.core.errors import InputError
from mmlib.core.stats import mean_bootstrap_ci

__all__ = ["paired_mean_difference", "defence_tests", "defence_preconditions", "steering_tests",
           "steering_preconditions"]


def _precondition(name: str, met: bool, evidence: str) -> dict:
    return dict(name=name, met=bool(met), evidence=evidence)


def paired_mean_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0,
                           confidence: float = 0.95) -> pd.Series:
    """Mean of ``a - b`` over paired units (e.g. the same images) with a percentile bootstrap interval.

    Parameters
    ----------
    a, b : (n,) float or bool
        Paired per-unit values; pairs with a NaN are left out.

    Returns
    -------
    Series
        ``mean``, ``ci_low``, ``ci_high`` (NaN bounds with fewer than two finite pairs).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"paired values must be two (n,) arrays of one length, got {a.shape} and {b.shape}")
    diff = a - b
    diff = diff[np.isfinite(diff)]
    mean = float(diff.mean()) if len(diff) else float("nan")
    low, high = mean_bootstrap_ci(diff, n_boot=n_boot, seed=seed, confidence=confidence)
    return pd.Series(dict(mean=mean, ci_low=low, ci_high=high))


def defence_tests(gaps: pd.DataFrame, name: str, of: str = "TextD",
                  versus: tuple[str, ...] = ("ImgD", "CrossD")) -> pd.DataFrame:
    """Claim 5.6a's tests for one map: robust accuracy of the ``of``-aligned model minus each of ``versus``, > 0.

    Parameters
    ----------
    gaps : DataFrame
        :func:`~mmlib.case_studies.adversarial.evaluation.robust_gaps` rows with a ``map`` column.
    name : str
        The map (its rows of ``gaps``; prefixes the tests' names).

    Returns
    -------
    DataFrame
        One row per comparison: ``test``, ``mean``, ``ci_low``, ``ci_high``.
    """
    rows = gaps[gaps["map"] == name].set_index("versus")
    missing = [v for v in versus if v not in rows.index]
    if missing:
        raise KeyError(f"map {name!r}: robust_gaps has no comparison with {missing}; has {list(rows.index)}")
    return pd.DataFrame([dict(test=f"{name}: robust accuracy {of} − {v}", mean=rows.loc[v, "robust_gap"],
                              ci_low=rows.loc[v, "ci_low"], ci_high=rows.loc[v, "ci_high"]) for v in versus])


def defence_preconditions(correct: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]], name: str,
                          min_drop: float = 0.05, seed: int = 0) -> list[dict]:
    """Claim 5.6a's power preconditions for one map, from per-image correctness.

    Parameters
    ----------
    correct : mapping
        ``(map, selection)`` -> ``(clean, robust)`` bool arrays on the same images; ``("-", "none")`` is the undefended
        model, ``(name, "all")`` the model aligned on every alive feature.
    name : str
    min_drop : float
        The attack works if the paired interval of clean minus robust accuracy of the undefended model lies above this.

    Returns
    -------
    list of dict
        ``name``, ``met``, ``evidence`` each: "the attack lowers accuracy" and "``name``: aligning all features
        raises robust accuracy" (its paired interval of robust accuracy, all minus none, above 0).
    """
    clean, robust = correct[("-", "none")]
    drop = paired_mean_difference(clean, robust, seed=seed)
    gain = paired_mean_difference(correct[(name, "all")][1], robust, seed=seed)
    return [_precondition("the attack lowers accuracy", bool(drop.ci_low > min_drop),
                          f"undefended clean − robust accuracy {drop['mean']:+.3f} [{drop.ci_low:+.3f}, "
                          f"{drop.ci_high:+.3f}], required above {min_drop:g}"),
            _precondition(f"{name}: aligning all features raises robust accuracy", bool(gain.ci_low > 0),
                          f"robust accuracy all − none {gain['mean']:+.3f} [{gain.ci_low:+.3f}, {gain.ci_high:+.3f}], "
                          "required above 0")]


def steering_tests(per_image: Mapping[tuple[str, str], Mapping[str, np.ndarray]], name: str, category: str,
                   random: str, noise: tuple[str, str] = ("-", "noise"), measure: str = "i2t_target_gain",
                   seed: int = 0) -> pd.DataFrame:
    """Claim 5.6b's tests for one map, each claimed above 0.

    Parameters
    ----------
    per_image : mapping
        ``(map, selection)`` -> measure -> ``(n,)`` per-image values on the same images and targets
        (:func:`~mmlib.case_studies.adversarial.steering.steering_measures` plus ``selectivity``).
    name, category : the map and the steered category
    random : str
        The selection of ``name`` that is the size-matched random set.
    noise : key of the ±ε noise control
    measure : the target gain tested

    Returns
    -------
    DataFrame
        Rows ``test``, ``mean``, ``ci_low``, ``ci_high``: ``category`` minus ``random`` (paired), ``category``
        minus the noise control (paired), and ``category``'s selectivity (bootstrap of the mean).
    """
    gain = per_image[(name, category)][measure]
    versus_random = paired_mean_difference(gain, per_image[(name, random)][measure], seed=seed)
    versus_noise = paired_mean_difference(gain, per_image[noise][measure], seed=seed)
    values = np.asarray(per_image[(name, category)]["selectivity"], dtype=float)
    low, high = mean_bootstrap_ci(values, seed=seed)
    selective = pd.Series(dict(mean=float(np.nanmean(values)), ci_low=low, ci_high=high))
    return pd.DataFrame([{"test": f"{name}: {measure} {category} − size-matched random", **versus_random},
                         {"test": f"{name}: {measure} {category} − ±ε noise", **versus_noise},
                         {"test": f"{name}: selectivity of {category}", **selective}])


def steering_preconditions(per_image: Mapping[tuple[str, str], Mapping[str, np.ndarray]], name: str,
                           positive: str = "all", noise: tuple[str, str] = ("-", "noise"),
                           measure: str = "i2t_target_gain", max_noise_gain: float = 0.05,
                           seed: int = 0) -> list[dict]:
    """Claim 5.6b's power preconditions for one map.

    Returns
    -------
    list of dict
        ``name``, ``met``, ``evidence`` each: "the noise control shows no gain" (its interval inside
        ``±max_noise_gain``) and "``name``: steering every alive feature moves the target" (the positive control:
        the paired interval of ``positive``'s gain minus the noise control's lies above 0).
    """
    values = np.asarray(per_image[noise][measure], dtype=float)
    low, high = mean_bootstrap_ci(values, seed=seed)
    control = paired_mean_difference(per_image[(name, positive)][measure], values, seed=seed)
    quiet = bool(-max_noise_gain < low and high < max_noise_gain)
    return [_precondition("the ±ε noise control shows no gain", quiet,
                          f"noise {measure} {np.nanmean(values):+.3f} [{low:+.3f}, {high:+.3f}], required inside "
                          f"±{max_noise_gain:g}"),
            _precondition(f"{name}: steering {positive} features moves the target", bool(control.ci_low > 0),
                          f"{measure} {positive} − noise {control['mean']:+.3f} [{control.ci_low:+.3f}, "
                          f"{control.ci_high:+.3f}], required above 0")]
