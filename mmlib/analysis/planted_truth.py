"""Testing MDS against planted truth, the book's addition to the paper (Method page, `method-controls` and
`method-probe`).

Three levels:

* **method**: on a planted sparse dictionary whose atoms are image-only, text-only or shared, the categories
  should recover the planted classes (:func:`class_accuracy`);
* **model**: on the generated world, features are matched to the factor they carry by mutual information
  (:func:`match_features`), and the MDS of matched features should rank like the ideal MDS of their factors
  (:func:`mds_vs_ideal`, Spearman with a bootstrap CI, per matching threshold);
* **null**: every MDS histogram is judged against the one of the null world, where every factor is always
  shown and said (:func:`compare_to_null`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from mmlib.analysis.categories import CLASSES, DEAD, RARE, Categories, CategoryRule, categorise
from mmlib.analysis.mds import MDSResult, check_scores, modality_dominance
from mmlib.core.errors import InputError
from mmlib.core.stats import bootstrap_ci, cluster_bootstrap_ci, format_ci, format_ci_column, proportion_ci
from mmlib.core.validation import check_finite
from mmlib.data.planted import PlantedData
from mmlib.data.world import Factor, ideal_mds

#: Planted atom class -> the category MDS should assign (both spellings: ``mmlib.data.planted.ATOM_CLASSES`` uses
#: ``"image"``, ``"text"``, ``"shared"``).
PLANTED_TO_CATEGORY: dict[str, str] = {"image-only": "ImgD", "image": "ImgD", "text-only": "TextD", "text": "TextD",
                                       "shared": "CrossD"}


# ------------------------------------------------------------------------------------------ method level
@dataclasses.dataclass(frozen=True, eq=False)
class ClassAccuracy:
    """Agreement of predicted categories with planted atom classes.

    Attributes
    ----------
    accuracy : float
        Share of scored features whose category is the one their planted class maps to.
    n, n_correct : int
        Scored features (alive and with a planted class) and correct ones.
    ci_low, ci_high : float
        Wilson interval of ``accuracy``.
    n_excluded : int
        Features left out (dead, or planted class ``None``).
    per_class : DataFrame
        ``expected``, ``n``, ``recall``, ``ci_low``, ``ci_high`` per expected category.
    confusion : DataFrame
        Counts, rows = expected category, columns = predicted category.
    """

    accuracy: float
    n: int
    n_correct: int
    ci_low: float
    ci_high: float
    n_excluded: int
    per_class: pd.DataFrame
    confusion: pd.DataFrame


def class_accuracy(predicted: Categories | Sequence[str], planted: Sequence[str | None],
                   mapping: Mapping[str, str] = PLANTED_TO_CATEGORY, confidence: float = 0.95) -> ClassAccuracy:
    """Method-level check: categories ``(K,)`` against planted atom classes ``(K,)``.

    Parameters
    ----------
    predicted : Categories or (K,) labels in {"ImgD", "TextD", "CrossD", "dead", "rare"}
    planted : (K,) planted classes, keys of ``mapping`` (``None`` = no planted class: excluded; dead and rare
        features, which have no class, are excluded too)
    mapping : planted class -> expected category (default image(-only) -> ImgD, text(-only) -> TextD,
        shared -> CrossD)
    """
    pred = np.asarray(predicted.labels if isinstance(predicted, Categories) else predicted, dtype=object)
    planted = np.asarray(planted, dtype=object)
    if pred.shape != planted.shape or pred.ndim != 1:
        raise InputError(f"{pred.shape} predicted labels but {planted.shape} planted classes")
    unknown = sorted({str(p) for p in planted if p is not None and p not in mapping})
    if unknown:
        raise InputError(f"planted classes {unknown} not in the mapping {dict(mapping)}")
    bad = sorted({str(p) for p in pred if p not in (*CLASSES, DEAD, RARE)})
    if bad:
        raise InputError(f"unknown predicted labels {bad}; expected {(*CLASSES, DEAD, RARE)}")
    keep = np.array([p is not None for p in planted]) & np.isin(pred, CLASSES)
    expected = np.array([mapping[p] for p in planted[keep]], dtype=object)
    got = pred[keep]
    if len(got) == 0:
        raise InputError("no feature is both alive and planted: nothing to score")
    correct = int((expected == got).sum())
    rows = []
    for c in CLASSES:
        here = expected == c
        k = int((got[here] == c).sum())
        low, high = proportion_ci(k, int(here.sum()), confidence)
        rows.append(dict(expected=c, n=int(here.sum()), recall=k / here.sum() if here.any() else np.nan,
                         ci_low=low, ci_high=high))
    confusion = pd.crosstab(pd.Categorical(expected, CLASSES), pd.Categorical(got, CLASSES),
                            rownames=["expected"], colnames=["predicted"], dropna=False)
    low, high = proportion_ci(correct, len(got), confidence)
    return ClassAccuracy(accuracy=correct / len(got), n=len(got), n_correct=correct, ci_low=low, ci_high=high,
                         n_excluded=int((~keep).sum()), per_class=pd.DataFrame(rows), confusion=confusion)


@dataclasses.dataclass(frozen=True, eq=False)
class PlantedFeatures:
    """The features of a map trained on a planted dictionary: their MDS and the atom each one matches best.

    Attributes
    ----------
    mds : MDSResult
        MDS of the ``K`` features on the planted pairs.
    cosine : (K,) float array
        Cosine similarity of each feature's (decoder) direction with its best-matching atom.
    atom : (K,) int array
        Index of that atom in the planted dictionary.
    atom_class : (K,) array of str
        Its planted class (``"shared"``, ``"image"``, ``"text"``).
    n_atoms : int
        Atoms in the planted dictionary.
    """

    mds: MDSResult
    cosine: np.ndarray
    atom: np.ndarray
    atom_class: np.ndarray
    n_atoms: int

    def matched(self, min_cosine: float) -> np.ndarray:
        """``(K,)`` bool: the feature matches an atom with cosine ``>= min_cosine``."""
        return self.cosine >= min_cosine

    def labels(self, min_cosine: float) -> np.ndarray:
        """``(K,)`` object array: the planted class of each matched feature's atom, ``None`` for the others."""
        return np.where(self.matched(min_cosine), self.atom_class, None)

    def atoms_covered(self, min_cosine: float) -> int:
        """How many distinct atoms the matched features cover."""
        return int(len(np.unique(self.atom[self.matched(min_cosine)])))

    def accuracy(self, min_cosine: float, rule: CategoryRule | str = "sigma") -> ClassAccuracy:
        """:func:`class_accuracy` of the categories under ``rule`` against the matched features' planted classes."""
        return class_accuracy(categorise(self.mds, rule), self.labels(min_cosine))


def planted_features(data: PlantedData, directions: torch.Tensor | np.ndarray,
                     a_image: torch.Tensor | np.ndarray, a_text: torch.Tensor | np.ndarray) -> PlantedFeatures:
    """Method-level read-out of a feature map trained on planted pairs.

    Parameters
    ----------
    data : PlantedData
        The planted pairs and their dictionary ``(A, d)``.
    directions : (K, d) tensor
        Each feature's direction in the embedding space (an SAE's decoder rows, ``sae.dictionary``).
    a_image, a_text : (n, K) tensors
        The map's activations on the ``n`` planted pairs.

    Returns
    -------
    PlantedFeatures
        Each feature is matched to the atom of highest cosine with its (normalised) direction.
    """
    directions = torch.as_tensor(directions).detach().float()
    if directions.ndim != 2 or directions.shape[1] != data.dictionary.shape[1]:
        raise InputError(f"need feature directions (K, {data.dictionary.shape[1]}), got {tuple(directions.shape)}")
    check_finite(directions, "directions")
    if np.shape(a_image)[-1:] != (len(directions),):
        raise InputError(f"a_image {tuple(np.shape(a_image))} must have one column per direction ({len(directions)})")
    cos = torch.nn.functional.normalize(directions, dim=1) @ data.dictionary.T  # (K, A)
    best, atom = cos.max(1)
    atom = atom.numpy()
    return PlantedFeatures(mds=modality_dominance(a_image, a_text), cosine=best.numpy(), atom=atom,
                           atom_class=data.atom_class[atom], n_atoms=len(data.atom_class))


def true_code_features(data: PlantedData) -> PlantedFeatures:
    """The generating codes ``(n, A)`` themselves as features: feature ``a`` is atom ``a`` (cosine 1)."""
    n_atoms = len(data.atom_class)
    return PlantedFeatures(mds=modality_dominance(data.codes_image, data.codes_text), cosine=np.ones(n_atoms),
                           atom=np.arange(n_atoms), atom_class=np.asarray(data.atom_class), n_atoms=n_atoms)


def planted_accuracy_table(runs: Mapping[str, tuple[PlantedFeatures, Sequence[float]]],
                           rules: Sequence[CategoryRule | str] = ("sigma", "fixed")) -> pd.DataFrame:
    """Planted classes recovered from MDS categories, per feature set, matching threshold and rule.

    Parameters
    ----------
    runs : mapping
        Name -> (:class:`PlantedFeatures`, the cosine thresholds at which a feature counts as matched).
    rules : the categorisation rules

    Returns
    -------
    DataFrame, one row per (name, threshold, rule): ``features``, ``match_cos``, ``rule`` (its name),
    ``n_scored``, ``n_left_out``, ``accuracy``, ``ci_low``, ``ci_high`` (Wilson).
    """
    rows = []
    for name, (features, thresholds) in runs.items():
        for threshold in thresholds:
            for rule in rules:
                acc = features.accuracy(threshold, rule)
                rows.append(dict(features=name, match_cos=threshold, rule=categorise(features.mds, rule).rule.name,
                                 n_scored=acc.n, n_left_out=acc.n_excluded, accuracy=acc.accuracy,
                                 ci_low=acc.ci_low, ci_high=acc.ci_high))
    return pd.DataFrame(rows)


#: The measures of :func:`planted_precision_table`, in its row order within a rule.
PRECISION_MEASURES: tuple[str, ...] = ("precision", "recall", "null share")


def planted_precision_table(rules: Mapping[str, tuple[Categories | Sequence[str], Categories | Sequence[str]]],
                            features: PlantedFeatures, min_cosine: float, *, min_precision: float | None = None,
                            max_null_share: float | None = None, mapping: Mapping[str, str] = PLANTED_TO_CATEGORY,
                            confidence: float = 0.95) -> pd.DataFrame:
    """Precision and recall of ImgD and TextD on a planted dictionary, and their false share on a shared-only one.

    * **precision** of class ``c``: of *all* features labelled ``c``, the share that match (cosine ``>= min_cosine``)
      an atom whose planted class maps to ``c``; a labelled feature that matches no atom counts as a false label;
    * **recall** of ``c``: of the alive features matching an atom of that class, the share labelled ``c``;
    * **null share**: of the features given a class on the dictionary with shared atoms only, the share labelled
      ImgD or TextD (every one of them is an artefact there).

    Parameters
    ----------
    rules : mapping
        Rule name -> (labels ``(K,)`` of the features of ``features``, labels ``(K0,)`` of the features of the map
        trained on the shared-only dictionary), each a :class:`~mmlib.analysis.categories.Categories` (e.g. of
        :func:`~mmlib.analysis.categories.categorise` or
        :func:`~mmlib.analysis.calibrated_categories.calibrated_categories`) or an array of labels. A feature
        counts as alive when its label is not ``"dead"``. A ``"rare"`` one (alive, below a rule's minimum support)
        has no class: it enters the recall's denominator as a miss, and is left out of the null share's (both the
        conservative choice).
    features : PlantedFeatures
        The planted dictionary's features (their matched atoms).
    min_cosine : float
        The matching threshold (:meth:`PlantedFeatures.matched`).
    min_precision, max_null_share : float, optional
        Targets: a ``target`` and a ``meets`` column (point estimates against them; recall has no target).
    mapping : planted class -> expected category
    confidence : level of the Wilson intervals

    Returns
    -------
    DataFrame, one row per (rule, measure, category): ``rule``, ``measure`` (:data:`PRECISION_MEASURES`),
    ``category`` (``"ImgD"``, ``"TextD"``, or ``"ImgD+TextD"`` for the null share), ``k``, ``n``, ``value`` (k / n,
    NaN when n = 0), ``ci_low``, ``ci_high`` (Wilson), ``false_nearest`` (precision rows: false labels whose
    nearest atom, at any cosine, is of the labelled class: right class, direction below the matching threshold),
    and with targets ``target`` and ``meets``.
    """
    if not rules:
        raise InputError("no rules given")
    matched = features.matched(min_cosine)
    unknown = sorted({str(c) for c in features.atom_class if c not in mapping})
    if unknown:
        raise InputError(f"planted classes {unknown} not in the mapping {dict(mapping)}")
    nearest = np.array([mapping[c] for c in features.atom_class], dtype=object)  # (K,) class of the nearest atom
    expected = np.where(matched, nearest, None)
    rows = []
    for name, (planted_labels, null_labels) in rules.items():
        got = _labels(planted_labels, len(matched), f"rule {name!r}: planted labels")
        null = _labels(null_labels, None, f"rule {name!r}: shared-only labels")
        alive = got != DEAD
        for c in CLASSES[:2]:
            labelled, right = got == c, expected == c
            rows.append(dict(rule=name, measure="precision", category=c, k=int((labelled & right).sum()),
                             n=int(labelled.sum()), false_nearest=int((labelled & ~right & (nearest == c)).sum())))
            rows.append(dict(rule=name, measure="recall", category=c, k=int((labelled & right).sum()),
                             n=int((alive & right).sum())))
        null_alive = np.isin(null, CLASSES)
        rows.append(dict(rule=name, measure="null share", category="+".join(CLASSES[:2]),
                         k=int(np.isin(null, CLASSES[:2]).sum()), n=int(null_alive.sum())))
    table = pd.DataFrame(rows)
    table["value"] = [k / n if n else np.nan for k, n in zip(table.k, table.n)]
    bounds = [proportion_ci(k, n, confidence) for k, n in zip(table.k, table.n)]
    table["ci_low"], table["ci_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
    table = table[["rule", "measure", "category", "k", "n", "value", "ci_low", "ci_high", "false_nearest"]]
    if min_precision is not None or max_null_share is not None:
        targets = {"precision": min_precision, "null share": max_null_share}
        target = [targets.get(m) for m in table.measure]
        table["target"] = [np.nan if t is None else float(t) for t in target]
        table["meets"] = pd.Series([None if t is None or not np.isfinite(v) else bool(v >= t if m == "precision"
                                                                                    else v <= t)
                                    for m, t, v in zip(table.measure, target, table.value)], dtype=object)
    return table


def precision_cells(table: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """A :func:`planted_precision_table` for display: one row per (measure, category), measures in
    :data:`PRECISION_MEASURES` order, one column per rule (in the table's order), each cell
    ``"value [ci_low, ci_high] (k/n)"``; a first ``target`` column (``"≥ t"``, ``"≤ t"`` or empty) when the table
    has targets.
    """
    needed = {"rule", "measure", "category", "k", "n", "value", "ci_low", "ci_high"}
    if not isinstance(table, pd.DataFrame) or not needed <= set(table.columns) or table.empty:
        raise InputError(f"need a non-empty planted_precision_table with columns {sorted(needed)}")
    cells = format_ci_column(table.rename(columns={"value": "mean"}), digits=digits)
    cells += " (" + table.k.astype(str) + "/" + table.n.astype(str) + ")"
    rows = sorted(dict.fromkeys(zip(table.measure, table.category)), key=lambda r: PRECISION_MEASURES.index(r[0]))
    out = (table.assign(cell=cells).pivot(index=["measure", "category"], columns="rule", values="cell")
           .loc[rows, list(dict.fromkeys(table.rule))])
    out.columns.name = None
    if "target" in table:
        first = table.drop_duplicates(["measure", "category"]).set_index(["measure", "category"])
        out.insert(0, "target", ["" if not np.isfinite(t) else ("≥ " if m == "precision" else "≤ ") + f"{t:g}"
                                 for (m, _), t in zip(rows, first.loc[rows, "target"])])
    return out


def _labels(labels: Categories | Sequence[str], n: int | None, name: str) -> np.ndarray:
    """Category labels ``(K,)`` as an object array, checked (known labels, ``n`` of them when given)."""
    out = np.asarray(labels.labels if isinstance(labels, Categories) else labels, dtype=object)
    if out.ndim != 1 or (n is not None and len(out) != n):
        raise InputError(f"{name}: expected {n if n is not None else 'K'} labels (K,), got shape {out.shape}")
    bad = sorted({str(x) for x in out if x not in (*CLASSES, DEAD, RARE)})
    if bad:
        raise InputError(f"{name}: unknown labels {bad}; expected {(*CLASSES, DEAD, RARE)}")
    if not np.isin(out, CLASSES).any():
        raise InputError(f"{name}: no feature is alive (every label dead or rare): nothing to score")
    return out


# ------------------------------------------------------------------------------------------- model level
class GroundTruth(Protocol):
    """What :func:`match_features` reads from a :class:`mmlib.data.world.WorldSplit` (same order as activations)."""

    def values(self, factor: str) -> np.ndarray:
        """The value index ``(n,)`` of ``factor`` in every sample."""

    def depicted(self, factor: str) -> np.ndarray:
        """``(n,)`` bool: the factor is shown in the image."""

    def mentioned(self, factor: str) -> np.ndarray:
        """``(n,)`` bool: the factor is said in the caption."""


@dataclasses.dataclass(frozen=True, eq=False)
class FactorMatch:
    """Each feature's association with each factor, and its best factor.

    Attributes
    ----------
    factors : tuple of str
    scores : (K, F) float array
        Mutual information (nats) or normalised MI of feature ``k`` with factor ``f``.
    best_factor : (K,) array of str
        The factor with the highest score (``""`` for a feature that never varies).
    best_score : (K,) float array
    metric : {"mi", "nmi"}
    binarise : {"active", "quantile"}
    """

    factors: tuple[str, ...]
    scores: np.ndarray
    best_factor: np.ndarray
    best_score: np.ndarray
    metric: str
    binarise: str

    def to_frame(self) -> pd.DataFrame:
        """One row per feature: ``feature``, ``best_factor``, ``best_score`` and one column per factor."""
        frame = pd.DataFrame(self.scores, columns=list(self.factors))
        frame.insert(0, "best_score", self.best_score)
        frame.insert(0, "best_factor", self.best_factor)
        frame.insert(0, "feature", np.arange(len(self.best_score)))
        return frame


def match_features(a_image: torch.Tensor | np.ndarray, a_text: torch.Tensor | np.ndarray, truth: GroundTruth,
                   factors: Iterable[str | Factor] | None = None, *, metric: str = "nmi",
                   binarise: str = "active", n_bins: int = 4, eps: float = 0.0, labels: str = "value",
                   per_value: bool = False, block: int = 512) -> FactorMatch:
    """Model-level matching: mutual information of every feature with every factor, both modalities pooled.

    The ``2n`` rows are the ``n`` image activations and the ``n`` caption activations ``(n, K)`` of the same
    pairs. A feature's activation is discretised (``binarise="active"``: fires, ``> eps``, or not;
    ``"quantile"``: ``n_bins`` per-feature quantile bins, ties merged), the factor's label of a row is its
    value (``labels="value"``, the default) or, with ``labels="present"``, its value where shown (image rows) /
    said (text rows) and a separate "absent" label elsewhere. ``"present"`` also rewards pure modality
    features for factors that are never shown or never said, so the default is ``"value"``. MI tolerates
    conjunction features (a feature carrying factor ``f`` among others still has positive MI with ``f``).

    Parameters
    ----------
    truth : a :class:`mmlib.data.world.WorldSplit` (or anything with ``values``, ``depicted``, ``mentioned``)
    factors : factor names or :class:`mmlib.data.world.Factor` objects; default ``truth.world.factors``
    metric : {"nmi", "mi"}
        Normalised MI (arithmetic mean of the entropies, as in ``sklearn.metrics.normalized_mutual_info_score``)
        or MI in nats (as ``sklearn.metrics.mutual_info_score``); computed for all features at once.
    per_value : bool
        Match to single values instead (label = "the factor has this value", names ``"factor=value"``), for
        factors whose values are planted at different MDS (the binary attribute); pair with
        ``ideal_mds_by_factor(factors, per_value=True)``.
    block : features per block (bounds memory at ``2n * block`` floats per bin).
    """
    if metric not in ("mi", "nmi"):
        raise InputError(f"unknown metric {metric!r}; choose 'mi' or 'nmi'")
    if binarise not in ("active", "quantile"):
        raise InputError(f"unknown binarisation {binarise!r}; choose 'active' or 'quantile'")
    if labels not in ("value", "present"):
        raise InputError(f"unknown labels {labels!r}; choose 'value' or 'present'")
    a_image, a_text = np.asarray(a_image, dtype=np.float32), np.asarray(a_text, dtype=np.float32)
    if a_image.shape != a_text.shape or a_image.ndim != 2:
        raise InputError(f"need paired activations (n, K); got a_image {a_image.shape} and a_text {a_text.shape}")
    check_finite(a_image, "a_image")
    check_finite(a_text, "a_text")
    factors = list(truth.world.factors if factors is None else factors)  # type: ignore[attr-defined]
    if not factors:
        raise InputError("no factors to match")
    x = np.concatenate([a_image, a_text])
    codes = _discretise(x, binarise, n_bins, eps)
    names, columns = [], []
    for f in factors:
        name = f.name if isinstance(f, Factor) else str(f)
        v = np.asarray(truth.values(name))
        if len(v) != len(a_image):
            raise InputError(f"factor {name!r} has {len(v)} labels for {len(a_image)} pairs")
        targets = [(name, v)]
        if per_value:
            if not isinstance(f, Factor):
                raise InputError("per_value matching needs Factor objects (for the value names)")
            targets = [(f"{name}={word}", (v == i).astype(int)) for i, word in enumerate(f.values)]
        for label, y in targets:
            if labels == "value":
                y = np.concatenate([y, y])
            else:
                y = np.concatenate([np.where(truth.depicted(name), y, -1), np.where(truth.mentioned(name), y, -1)])
            names.append(label)
            columns.append(mutual_information(codes, y, normalized=metric == "nmi", block=block))
    scores = np.stack(columns, 1)
    best = scores.argmax(1)
    best_score = scores[np.arange(len(best)), best]
    best_factor = np.where(best_score > 0, np.asarray(names, dtype=object)[best], "").astype(str)
    return FactorMatch(factors=tuple(names), scores=scores, best_factor=best_factor, best_score=best_score,
                       metric=metric, binarise=binarise)


def mutual_information(codes: np.ndarray, labels: np.ndarray, normalized: bool = False,
                       block: int = 512) -> np.ndarray:
    """MI (nats) between each column of ``codes (N, K)`` (small non-negative ints) and ``labels (N,)``.

    Equal to ``sklearn.metrics.mutual_info_score(labels, codes[:, k])`` per column (or, with
    ``normalized``, ``normalized_mutual_info_score``; 0 where either side is constant), for all columns at
    once. Returns ``(K,)``.
    """
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iub" or (codes.size and codes.min() < 0):
        raise InputError(f"codes must be small non-negative integers (N, K), got dtype {codes.dtype}"
                         f"{'' if codes.dtype.kind not in 'iu' else ' with negative values'}; discretise first")
    _, y = np.unique(np.asarray(labels), return_inverse=True)
    if codes.ndim != 2 or len(y) != len(codes):
        raise InputError(f"need codes (N, K) and labels (N,); got {codes.shape} and {np.shape(labels)}")
    n, k = codes.shape
    onehot = np.zeros((n, y.max() + 1), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0
    p_y = onehot.sum(0, dtype=np.float64) / n                # (V,)
    h_y = -np.sum(p_y[p_y > 0] * np.log(p_y[p_y > 0]))
    out = np.zeros(k)
    n_bins = int(codes.max()) + 1 if codes.size else 1
    for start in range(0, k, block):
        c = codes[:, start:start + block]
        counts = np.stack([onehot.T @ (c == b).astype(np.float32) for b in range(n_bins)])  # (B, V, k), exact
        joint = counts.astype(np.float64) / n
        p_c = joint.sum(1)                                     # (B, k)
        ratio = joint / np.maximum(p_c[:, None, :] * p_y[None, :, None], 1e-300)
        mi = np.where(joint > 0, joint * np.log(np.where(joint > 0, ratio, 1.0)), 0.0).sum((0, 1))
        mi = np.maximum(mi, 0.0)
        if normalized:
            h_c = -np.where(p_c > 0, p_c * np.log(np.where(p_c > 0, p_c, 1.0)), 0.0).sum(0)
            denom = (h_c + h_y) / 2
            mi = np.where((h_c > 0) & (h_y > 0), mi / np.maximum(denom, 1e-300), 0.0)
        out[start:start + block] = mi
    return out


def ideal_mds_by_factor(factors: Iterable[Factor], per_value: bool = False) -> dict[str, float]:
    """Factor name -> ideal MDS of a perfect feature (:attr:`mmlib.data.world.Factor.ideal_mds`); NaN dropped.

    With ``per_value``, ``"factor=value"`` -> :func:`mmlib.data.world.ideal_mds` of that value's probabilities
    (the names :func:`match_features` uses with ``per_value=True``).
    """
    if per_value:
        out = {f"{f.name}={word}": ideal_mds(d, m)
               for f in factors for word, d, m in zip(f.values, f.p_depict, f.p_mention)}
    else:
        out = {f.name: f.ideal_mds for f in factors}
    return {k: v for k, v in out.items() if np.isfinite(v)}


def matched_features(mds: MDSResult | np.ndarray, match: FactorMatch, ideal: Mapping[str, float],
                     threshold: float = 0.0) -> pd.DataFrame:
    """Alive features whose best match scores at least ``threshold`` and whose factor has a finite ideal MDS.

    Returns
    -------
    DataFrame: ``feature``, ``factor``, ``score``, ``mds``, ``ideal_mds`` (one row per matched feature).
    """
    scores = check_scores(mds, "mds")
    if len(scores) != len(match.best_score):
        raise InputError(f"{len(scores)} MDS scores but {len(match.best_score)} matched features")
    _check_ideal(ideal)
    ideal_of = np.array([ideal.get(f, np.nan) for f in match.best_factor], dtype=float)
    keep = np.isfinite(scores) & np.isfinite(ideal_of) & (match.best_score >= threshold) & (match.best_factor != "")
    idx = np.flatnonzero(keep)
    return pd.DataFrame({"feature": idx, "factor": match.best_factor[idx], "score": match.best_score[idx],
                         "mds": scores[idx], "ideal_mds": ideal_of[idx]})


def mds_vs_ideal(mds: MDSResult | np.ndarray, match: FactorMatch, ideal: Mapping[str, float],
                 thresholds: Sequence[float] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3), n_boot: int = 1000,
                 seed: int = 0, confidence: float = 0.95) -> pd.DataFrame:
    """Spearman correlation between matched features' MDS and their factors' ideal MDS, per MI threshold.

    Returns
    -------
    DataFrame: ``threshold``, ``n_matched``, ``n_factors`` (distinct matched factors), ``rho``, ``p_value``,
    ``ci_low``, ``ci_high`` (percentile bootstrap over features, seeded), and ``cluster_low``, ``cluster_high``
    (percentile bootstrap over the matched factor values, each value's features drawn together: features that share
    a factor value are not independent, so this is the interval to read; NaN with fewer than 2 values). ``rho`` is
    NaN with fewer than 3 matched features or a constant side.
    """
    rows = []
    for t in thresholds:
        m = matched_features(mds, match, ideal, t)
        x, y = m["mds"].to_numpy(), m["ideal_mds"].to_numpy()
        rho, p, low, high, c_low, c_high = (np.nan,) * 6
        if len(m) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            res = sps.spearmanr(x, y)
            rho, p = float(res.statistic), float(res.pvalue)
            low, high = bootstrap_ci(_spearman, x, y, n_boot=n_boot, seed=seed, confidence=confidence)
            c_low, c_high = cluster_bootstrap_ci(_spearman, x, y, clusters=m["factor"].to_numpy(), n_boot=n_boot,
                                                 seed=seed, confidence=confidence)
        rows.append(dict(threshold=t, n_matched=len(m), n_factors=int(m["factor"].nunique()), rho=rho,
                         p_value=p, ci_low=low, ci_high=high, cluster_low=c_low, cluster_high=c_high))
    return pd.DataFrame(rows)


@dataclasses.dataclass(frozen=True)
class RhoGap:
    """Why ρ(MDS, ideal MDS) is undefined for one map at one threshold.

    Attributes
    ----------
    n_matched : int
        Matched features at the threshold.
    reason : str
        What they have in common, completing "the N matched features ...": ``"are fewer than 3"``,
        ``"all carry colour or shape, planted at 0.5"`` or ``"all have the same MDS"``.
    """

    n_matched: int
    reason: str

    def __str__(self) -> str:
        return f"the {self.n_matched} matched features {self.reason}"


def rho_gap(mds: MDSResult | np.ndarray, match: FactorMatch, ideal: Mapping[str, float],
            threshold: float) -> RhoGap | None:
    """Why :func:`mds_vs_ideal` gives no ρ at ``threshold`` (``None`` where it is defined).

    A rank correlation needs at least 3 matched features, at least two distinct ideal MDS values among them and at
    least two distinct MDS values.
    """
    m = matched_features(mds, match, ideal, threshold)
    if len(m) < 3:
        return RhoGap(len(m), "are fewer than 3")
    if np.ptp(m["ideal_mds"]) == 0:
        names = " or ".join(sorted(set(m["factor"].str.split("=").str[0])))
        return RhoGap(len(m), f"all carry {names}, planted at {m['ideal_mds'].iloc[0]:g}")
    if np.ptp(m["mds"]) == 0:
        return RhoGap(len(m), "all have the same MDS")
    return None


def rho_at(mds: MDSResult | np.ndarray, match: FactorMatch, ideal: Mapping[str, float], threshold: float,
           n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, object]:
    """ρ(MDS, ideal MDS) of one map at one threshold, with its bootstrap interval and, where undefined, why.

    Returns
    -------
    dict
        The row of :func:`mds_vs_ideal` (``threshold``, ``n_matched``, ``n_factors``, ``rho``, ``p_value``,
        ``ci_low``, ``ci_high``) and ``reason``: ``""`` where ρ is defined, else :class:`RhoGap` in words
        (e.g. ``"the 25 matched features all carry colour or shape, planted at 0.5"``).
    """
    row = mds_vs_ideal(mds, match, ideal, thresholds=(threshold,), n_boot=n_boot, seed=seed,
                       confidence=confidence).iloc[0].to_dict()
    gap = rho_gap(mds, match, ideal, threshold)
    row["reason"] = str(gap) if gap else ""
    return row


def rho_across_seeds_text(row: Mapping[str, float] | pd.Series, gaps: Mapping[int, RhoGap | None],
                          digits: int = 3) -> str:
    """ρ across map seeds in words: ``"0.760 [0.720, 0.800] over 3 seeds"``, with the seeds where it is undefined.

    Parameters
    ----------
    row : a row of :func:`mmlib.core.stats.across_seeds` for ``rho`` (``n_seeds``, ``mean``, ``ci_low``,
        ``ci_high``)
    gaps : seed -> :func:`rho_gap` of that seed (``None`` where ρ is defined)
    digits : decimals of ρ

    Returns
    -------
    str
        E.g. ``"undefined in every seed (seeds 0, 1, 2: the 25, 30, 35 matched features all carry colour or
        shape, planted at 0.5)"``; one reason shared by several seeds is said once.
    """
    gaps = {s: g for s, g in gaps.items() if g}
    reasons = {g.reason for g in gaps.values()}
    if len(reasons) == 1:
        why = (f"seed{'s' if len(gaps) > 1 else ''} {', '.join(map(str, gaps))}: the "
               f"{', '.join(str(g.n_matched) for g in gaps.values())} matched features {reasons.pop()}")
    else:
        why = "; ".join(f"seed {s}: {g}" for s, g in gaps.items())
    if row["n_seeds"] == 0:
        return f"undefined in every seed ({why})"
    return f"{format_ci(row, digits)} over {row['n_seeds']} seeds" + (f" (undefined in {why})" if gaps else "")


def annotate_matched(matched: pd.DataFrame, roles: Mapping[str, str],
                     design_ideal: Mapping[str, float]) -> pd.DataFrame:
    """:func:`matched_features` with ``factor_name`` (the part before ``=``), its ``role`` and ``planted``, the
    ideal MDS of the matched value in the world's design (``design_ideal``; also for the null world's features).
    """
    out = matched.assign(factor_name=matched["factor"].str.split("=").str[0])
    return out.assign(planted=out["factor"].map(design_ideal), role=out["factor_name"].map(roles))


def matched_by_factor(matched: pd.DataFrame, roles: Mapping[str, str], ideal: Mapping[str, float],
                      extreme: tuple[float, float] = (0.1, 0.9)) -> pd.DataFrame:
    """Matched features per factor: how many, the ideal MDS planted for them, their median MDS, the extreme share.

    Parameters
    ----------
    matched : the table of :func:`matched_features` (one row per matched feature; ``factor`` = ``"name=value"``)
    roles : factor name -> role
    ideal : ``"name=value"`` -> ideal MDS in the features' own world
    extreme : (low, high); a feature is extreme with MDS below ``low`` or above ``high``

    Returns
    -------
    DataFrame, one row per factor: ``factor``, ``role``, ``n``, ``planted`` (mean ideal MDS over the features),
    ``median_mds``, ``share_extreme``.
    """
    low, high = extreme
    names = matched["factor"].str.split("=").str[0]
    rows = []
    for f, g in matched.groupby(names):
        rows.append(dict(factor=f, role=roles[f], n=len(g), planted=float(np.mean([ideal[v] for v in g["factor"]])),
                         median_mds=g["mds"].median(), share_extreme=((g["mds"] < low) | (g["mds"] > high)).mean()))
    return pd.DataFrame(rows, columns=["factor", "role", "n", "planted", "median_mds", "share_extreme"])


def extreme_share(matched: pd.DataFrame | Iterable[pd.DataFrame], at: float = 0.5,
                  extreme: tuple[float, float] = (0.1, 0.9), confidence: float = 0.95) -> dict[str, float]:
    """The split-copy confound: of the matched features whose factor is planted at ``at``, the share with an
    extreme MDS.

    Parameters
    ----------
    matched : one table of :func:`matched_features`, or several (e.g. one per seed), pooled
    at : the ideal MDS of the factors to keep (0.5: planted equally in both modalities)
    extreme : (low, high)

    Returns
    -------
    dict: ``matched_at_half`` (features kept), ``share_extreme`` (NaN for none), ``ci_low``, ``ci_high`` (Wilson).
    """
    frames = [matched] if isinstance(matched, pd.DataFrame) else list(matched)
    low, high = extreme
    k = n = 0
    for m in frames:
        m = m[np.isclose(m["ideal_mds"], at)]
        k += int(((m["mds"] < low) | (m["mds"] > high)).sum())
        n += len(m)
    ci_low, ci_high = proportion_ci(k, n, confidence)
    return dict(matched_at_half=n, share_extreme=k / n if n else np.nan, ci_low=ci_low, ci_high=ci_high)


# -------------------------------------------------------------------------------------------- null world
def compare_to_null(world: MDSResult | np.ndarray, null: MDSResult | np.ndarray,
                    extreme: tuple[float, float] = (0.1, 0.9),
                    rule: CategoryRule | str = "sigma", confidence: float = 0.95) -> pd.DataFrame:
    """An MDS distribution against its null-world baseline.

    Parameters
    ----------
    world, null : MDSResult or (K,) scores (NaN = dead) of the same kind of feature map in the two worlds
    extreme : (low, high)
        The shares of alive features with MDS below ``low``, above ``high`` and either are compared.
    rule : the categorisation rule whose class shares are compared

    Returns
    -------
    DataFrame, one row per metric: ``metric``, ``world``, ``null``, ``difference`` (world - null), Wilson
    ``world_ci_low/high`` and ``null_ci_low/high`` for shares, ``statistic`` and ``p_value`` (Fisher's exact
    test for shares, two-sample Kolmogorov–Smirnov and Mann–Whitney U for the distributions; the
    Mann–Whitney statistic is reported as ``P(world > null)``).
    """
    w, z = _alive(world, "world"), _alive(null, "null")
    low, high = extreme
    rows = [dict(metric="n_alive", world=len(w), null=len(z)),
            dict(metric="mean", world=w.mean(), null=z.mean()),
            dict(metric="std", world=w.std(), null=z.std())]
    shares = {f"share < {low:g}": (w < low, z < low), f"share > {high:g}": (w > high, z > high),
              "share extreme": ((w < low) | (w > high), (z < low) | (z > high))}
    cw, cz = categorise(w, rule), categorise(z, rule)
    for c in CLASSES:
        shares[f"share {c} ({cw.rule.name})"] = (cw.mask(c), cz.mask(c))
    for name, (mw, mz) in shares.items():
        kw, kz = int(mw.sum()), int(mz.sum())
        odds, p = sps.fisher_exact([[kw, len(w) - kw], [kz, len(z) - kz]])
        rows.append(dict(metric=name, world=kw / len(w), null=kz / len(z),
                         world_ci_low=proportion_ci(kw, len(w), confidence)[0],
                         world_ci_high=proportion_ci(kw, len(w), confidence)[1],
                         null_ci_low=proportion_ci(kz, len(z), confidence)[0],
                         null_ci_high=proportion_ci(kz, len(z), confidence)[1], statistic=odds, p_value=p))
    ks = sps.ks_2samp(w, z)
    rows.append(dict(metric="KS distance", world=np.nan, null=np.nan, statistic=ks.statistic, p_value=ks.pvalue))
    mw = sps.mannwhitneyu(w, z)
    rows.append(dict(metric="Mann-Whitney P(world > null)", world=np.nan, null=np.nan,
                     statistic=mw.statistic / (len(w) * len(z)), p_value=mw.pvalue))
    table = pd.DataFrame(rows, columns=["metric", "world", "null", "difference", "world_ci_low", "world_ci_high",
                                        "null_ci_low", "null_ci_high", "statistic", "p_value"])
    table["difference"] = table["world"] - table["null"]
    return table


# ----------------------------------------------------------------------------------------------- helpers
def _discretise(x: np.ndarray, binarise: str, n_bins: int, eps: float) -> np.ndarray:
    """Codes ``(N, K)``: active (``> eps``) or per-feature quantile bin (ties merged)."""
    if binarise == "active":
        return (x > eps).astype(np.int8)
    if n_bins < 2:
        raise InputError(f"n_bins must be at least 2, got {n_bins}")
    edges = np.quantile(x, np.linspace(0, 1, n_bins + 1)[1:-1], axis=0)  # (n_bins - 1, K)
    codes = np.zeros(x.shape, dtype=np.int8)
    for e in edges:
        codes += x > e[None, :]
    return codes


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(sps.spearmanr(x, y).statistic)


def _check_ideal(ideal: Mapping[str, float]) -> None:
    """InputError naming the entry if an ideal MDS is neither NaN (no ideal: dropped, documented) nor in [0, 1]."""
    for name, value in ideal.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InputError(f"ideal[{name!r}] must be a number in [0, 1], got {value!r}") from None
        if not np.isnan(v) and not 0 <= v <= 1:
            raise InputError(f"ideal[{name!r}] must be an ideal MDS in [0, 1] (or NaN for none), got {value!r}; "
                             "use ideal_mds_by_factor")


def _alive(mds: MDSResult | np.ndarray, name: str) -> np.ndarray:
    scores = check_scores(mds, name)
    scores = scores[np.isfinite(scores)]
    if len(scores) == 0:
        raise InputError(f"the {name} MDS has no alive feature")
    return scores
