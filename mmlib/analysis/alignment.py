"""Do the MDS classes carry what the paper says they carry? Claim 5.2 against planted truth (Method page,
`claim-5-2`).

In the generated world each factor has a planted role, and the role says which class intuition expects for a
feature that carries it (:data:`ROLE_CLASS`): *cross* factors (shown and said) -> CrossD, image-side ones ->
ImgD, text-side ones -> TextD; for the binary attribute the value planted image-heavy -> ImgD, the one planted
text-heavy -> TextD (:func:`expected_classes`). Features matched to a factor value
(:func:`mmlib.analysis.planted_truth.match_features` with ``per_value=True``) are tabulated with their class and
expected class (:func:`matched_classes`), and agreement is measured by Cohen's kappa (:func:`class_alignment`).
:func:`gallery_rows` picks example features per class for the top-sample galleries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from mmlib.analysis.categories import CLASSES, Categories
from mmlib.analysis.embsim import TopSamples
from mmlib.analysis.planted_truth import FactorMatch
from mmlib.core.errors import InputError
from mmlib.data.world import Factor

#: Planted role of a factor -> the class intuition expects for a feature that carries it.
ROLE_CLASS: dict[str, str] = {"cross": "CrossD", "image-ladder": "ImgD", "image-only": "ImgD", "text-ladder": "TextD",
                              "text-only": "TextD"}
#: The roles in the order the book shows them (the binary attribute last).
ROLE_ORDER: tuple[str, ...] = ("cross", "image-ladder", "image-only", "text-ladder", "text-only", "binary")


def expected_classes(factors: Iterable[Factor]) -> dict[str, str]:
    """``"factor=value"`` -> the class intuition expects for a feature matched to that value.

    The role's class (:data:`ROLE_CLASS`); for a factor of role ``"binary"``, ImgD for a value depicted more often
    than mentioned, TextD otherwise.
    """
    out = {}
    for f in factors:
        if f.role != "binary" and f.role not in ROLE_CLASS:
            raise InputError(f"factor {f.name!r} has role {f.role!r}, which expects no class; known roles: "
                             f"{[*ROLE_CLASS, 'binary']}")
        for value, d, m in zip(f.values, f.p_depict, f.p_mention):
            out[f"{f.name}={value}"] = ("ImgD" if d > m else "TextD") if f.role == "binary" else ROLE_CLASS[f.role]
    return out


def matched_classes(categories: Categories, match: FactorMatch, expected: Mapping[str, str],
                    roles: Mapping[str, str], threshold: float) -> pd.DataFrame:
    """The alive features of one map matched to a factor value at ``best_score >= threshold``.

    Parameters
    ----------
    categories : the map's classes ``(K,)`` under some rule
    match : its features' factor matches ``(K, V)``
    expected : ``"factor=value"`` -> expected class (:func:`expected_classes`)
    roles : factor name -> role
    threshold : the matching threshold (normalised MI)

    Returns
    -------
    DataFrame, one row per matched feature: ``feature``, ``category``, ``target`` (``"factor=value"``),
    ``factor``, ``role``, ``expected``, ``nmi``, ``mds``.
    """
    if len(categories.labels) != len(match.best_score):
        raise InputError(f"{len(categories.labels)} categorised features but {len(match.best_score)} matched ones")
    keep = categories.alive & (match.best_score >= threshold) & (match.best_factor != "")
    idx = np.flatnonzero(keep)
    target = match.best_factor[idx]
    factor = [t.split("=")[0] for t in target]
    return pd.DataFrame({"feature": idx, "category": categories.labels[idx], "target": target, "factor": factor,
                         "role": [roles[f] for f in factor], "expected": [expected[t] for t in target],
                         "nmi": match.best_score[idx], "mds": categories.scores[idx]})


def class_alignment(table: pd.DataFrame) -> dict[str, float]:
    """Agreement of the class with the expected class, over the rows of :func:`matched_classes`.

    Returns
    -------
    dict: ``n_matched``; ``kappa``, Cohen's kappa over the three classes (NaN with fewer than 2 features or a
    single label on both sides; exactly 0 when every feature has the same expected class, whatever the classes);
    ``agreement`` (share equal); and per class ``<class>_n`` (its matched features) and ``<class>_as_expected``
    (the share of them whose role expects that class; NaN for none).
    """
    kappa = np.nan
    if len(table) >= 2 and len(set(table["category"]) | set(table["expected"])) > 1:
        kappa = cohen_kappa_score(table["category"], table["expected"], labels=list(CLASSES))
    out = dict(n_matched=len(table), kappa=kappa, agreement=(table["category"] == table["expected"]).mean())
    for c in CLASSES:  # of the features in class c, the share whose factor's role expects c
        here = table[table["category"] == c]
        out[f"{c}_n"] = len(here)
        out[f"{c}_as_expected"] = (here["expected"] == c).mean() if len(here) else np.nan
    return out


def class_role_counts(table: pd.DataFrame, roles: Sequence[str] = ROLE_ORDER) -> pd.DataFrame:
    """Counts of matched features ``(3, len(roles))``: rows the classes, columns the roles of their factors."""
    return pd.crosstab(pd.Categorical(table["category"], CLASSES), pd.Categorical(table["role"], list(roles)),
                       dropna=False)


def gallery_rows(name: str, categories: Categories, fallback: Categories, match: FactorMatch,
                 top_image: TopSamples, top_text: TopSamples, index: np.ndarray,
                 per_class: int = 2) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Example features per class for :func:`mmlib.reporting.plots.top_samples_gallery`.

    Per class, the ``per_class`` alive features of that class best matched to a factor value; where
    ``categories`` leaves a class empty (e.g. mu + sigma > 1), the examples come from ``fallback`` and are
    labelled so.

    Parameters
    ----------
    name : the map's name, for the labels
    categories, fallback : the map's classes ``(K,)`` under the default and a fallback rule
    match : its factor matches ``(K, V)``
    top_image, top_text : its top samples on each side, indices into the split ``(K, m)``
    index : ``(n,)`` the split's samples as indices into the world (``WorldSplit.index``)
    per_class : features per class

    Returns
    -------
    list of (label, image indices into the world, caption indices into the world)
    """
    rows = []
    for c in CLASSES:
        idx, note = np.flatnonzero(categories.mask(c)), ""
        if len(idx) == 0:
            idx = np.flatnonzero(fallback.mask(c))
            note = f" ({fallback.rule.name}: empty under {categories.rule.name})"
        for k in idx[np.argsort(-match.best_score[idx])][:per_class]:
            label = (f"{name} #{k} {c}{note}, MDS {categories.scores[k]:.2f}: {match.best_factor[k]} "
                     f"(NMI {match.best_score[k]:.2f})")
            rows.append((label, index[top_image.indices[k].numpy()], index[top_text.indices[k].numpy()]))
    return rows
