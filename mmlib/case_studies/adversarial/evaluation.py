"""How the chapter evaluates the attack and the defences: accuracy under attack, the aligned feature sets, and the
paired differences behind claim 5.6a.

:func:`accuracy_under_attack` sweeps the budget of :func:`~mmlib.case_studies.adversarial.attacks.zero_shot_attack`;
:func:`attack_correctness` attacks one (possibly defended) encoder afresh and says which images it still classifies
correctly. :func:`selection_masks` are the feature sets a defence aligns or a steering attack moves (each category,
every alive feature, a random set as large as TextD), taken from the first map seed whose three categories are all
non-empty (:func:`first_complete_seed`). :func:`defence_table` gathers clean and robust accuracy per defence and
:func:`robust_gaps` the TextD-aligned model's robust accuracy minus the other choices', with paired bootstrap
intervals over the test images.

This module is outside the import closure of :mod:`~mmlib.case_studies.adversarial.defence`, whose code version keys
the trained adapters: editing an evaluation does not retrain them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from mmlib.analysis.categories import CLASSES, Categories, random_feature_mask
from mmlib.analysis.zero_shot import zero_shot_predict
from mmlib.case_studies.adversarial.attacks import ImageEncoder, PGDConfig, zero_shot_attack
from mmlib.case_studies.adversarial.defence import TrainedAdapter
from mmlib.core.errors import InputError
from mmlib.core.stats import bootstrap_ci, proportion_ci

__all__ = ["attack_correctness", "accuracy_under_attack", "SELECTIONS", "selection_masks", "first_complete_seed",
           "defence_table", "GAP_COMPARISONS", "accuracy_gap", "robust_gaps"]


# ------------------------------------------------------------------------------------------ accuracy under attack
def attack_correctness(encoder: ImageEncoder, x: torch.Tensor, labels: np.ndarray | torch.Tensor,
                       class_emb: torch.Tensor, config: PGDConfig, batch_size: int = 256
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per-image zero-shot correctness before and after a fresh white-box :func:`zero_shot_attack` on ``encoder``.

    Parameters
    ----------
    encoder : ImageEncoder
        The model attacked (e.g. a defended encoder of :func:`~mmlib.case_studies.adversarial.defence.
        load_or_train_adapter`); the attack is generated against it.
    x : (n, 3, H, W) pixels in [0, 1]
    labels : (n,) int class of each image
    class_emb : (k, d) or (k, p, d) class text embeddings
    config : PGDConfig

    Returns
    -------
    clean, robust : (n,) bool
        Whether each benign image, and its adversarial version, is classified correctly.
    """
    labels = np.asarray(labels)
    clean = zero_shot_predict(encoder.embed(x), class_emb).numpy() == labels
    x_adv = zero_shot_attack(encoder, x, labels, class_emb, config, batch_size)
    return clean, zero_shot_predict(encoder.embed(x_adv), class_emb).numpy() == labels


def accuracy_under_attack(encoder: ImageEncoder, x: torch.Tensor, labels: np.ndarray | torch.Tensor,
                          class_emb: torch.Tensor, eps_values: Sequence[float], steps: int, seed: int = 0,
                          confidence: float = 0.95) -> tuple[pd.DataFrame, dict[float, torch.Tensor]]:
    """Zero-shot accuracy under :func:`zero_shot_attack` at each budget (``eps = 0``: the benign images).

    Parameters
    ----------
    encoder : ImageEncoder
    x : (n, 3, H, W) pixels in [0, 1]
    labels : (n,) int class of each image
    class_emb : (k, d) or (k, p, d) class text embeddings
    eps_values : sequence of float
        L∞ budgets in pixel units (e.g. ``4 / 255``).
    steps, seed : PGD steps and random-start seed (:class:`PGDConfig`, default step length).

    Returns
    -------
    table : DataFrame
        One row per budget: ``eps``, ``eps_255`` (the budget in 1/255 units, rounded), ``accuracy``, ``ci_low``,
        ``ci_high`` (Wilson interval) and ``max_perturbation_255`` (the largest pixel change, to check the budget).
    adversarial : dict
        ``eps`` -> the adversarial pixels ``(n, 3, H, W)``.
    """
    labels = np.asarray(labels)
    rows, adversarial = [], {}
    for eps in eps_values:
        x_adv = zero_shot_attack(encoder, x, labels, class_emb, PGDConfig(eps=eps, steps=steps, seed=seed))
        adversarial[eps] = x_adv
        pred = zero_shot_predict(encoder.embed(x_adv), class_emb).numpy()
        k = int((pred == labels).sum())
        low, high = proportion_ci(k, len(pred), confidence)
        rows.append(dict(eps=eps, eps_255=round(eps * 255), accuracy=k / len(pred), ci_low=low, ci_high=high,
                         max_perturbation_255=float((x_adv - x).abs().max()) * 255))
    return pd.DataFrame(rows), adversarial


# ------------------------------------------------------------------------------------ the chapter's choices
#: The aligned (and steered) feature sets of :func:`selection_masks`, in order.
SELECTIONS: tuple[str, ...] = (*CLASSES, "all", "random")


def selection_masks(categories: Categories, seed: int) -> dict[str, np.ndarray]:
    """The feature sets a defence aligns (or a steering attack moves), as boolean masks ``(K,)``.

    Parameters
    ----------
    categories : Categories
        ImgD / TextD / CrossD of the map's ``K`` features.
    seed : int
        The map's seed; the random set is drawn with ``np.random.default_rng([seed, 7])``.

    Returns
    -------
    dict
        :data:`SELECTIONS` -> mask: each category (possibly empty), ``"all"`` (every alive feature) and
        ``"random"`` (as many alive features as TextD, drawn uniformly without replacement).
    """
    alive = categories.alive
    rng = np.random.default_rng([seed, 7])
    random = random_feature_mask(rng, np.flatnonzero(alive), int(categories.mask("TextD").sum()), len(alive))
    return {**{g: categories.mask(g) for g in CLASSES}, "all": alive, "random": random}


def first_complete_seed(categories: Mapping[int, Categories]) -> int | None:
    """The first seed (in the mapping's order) whose three categories are all non-empty; ``None`` if there is none.

    Parameters
    ----------
    categories : mapping
        seed -> :class:`~mmlib.analysis.categories.Categories` of one map.
    """
    for seed, c in categories.items():
        if all(c.mask(g).any() for g in CLASSES):
            return seed
    return None


def _wilson(values: np.ndarray, confidence: float) -> tuple[float, float, float]:
    values = np.asarray(values, bool)
    low, high = proportion_ci(int(values.sum()), len(values), confidence)
    return float(values.mean()), low, high


def defence_table(correct: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
                  trained: Mapping[tuple[str, str], TrainedAdapter] | None = None,
                  seeds: Mapping[str, int | None] | None = None, last: int = 10,
                  confidence: float = 0.95) -> pd.DataFrame:
    """Clean and robust accuracy per defence, with Wilson intervals, and how each adapter trained.

    Parameters
    ----------
    correct : mapping
        ``(map, selection)`` -> ``(clean, robust)``, each ``(n,)`` bool
        (:func:`~mmlib.case_studies.adversarial.evaluation.attack_correctness`); ``("-", "none")`` for no defence.
    trained : mapping, optional
        ``(map, selection)`` -> :class:`TrainedAdapter` (no entry for the undefended model).
    seeds : mapping, optional
        map -> the map seed the defences of that map used.
    last : int
        The training terms are averaged over the last ``last`` steps.

    Returns
    -------
    DataFrame
        One row per entry of ``correct``: ``map``, ``selection``, ``clean``, ``clean_low``, ``clean_high``,
        ``robust``, ``robust_low``, ``robust_high``, then (empty for the undefended model) ``seed``,
        ``n_features``, ``train_seconds``, ``final_align`` and ``final_keep`` (mean masked adversarial term and
        clean term over the last steps).
    """
    trained, seeds = dict(trained or {}), dict(seeds or {})
    rows = []
    for (name, sel), (clean, robust) in correct.items():
        row: dict[str, Any] = dict(map=name, selection=sel)
        for label, values in (("clean", clean), ("robust", robust)):
            row[label], row[f"{label}_low"], row[f"{label}_high"] = _wilson(values, confidence)
        t = trained.get((name, sel))
        row.update(seed=seeds.get(name) if t is not None else None,
                   n_features=t.n_selected if t is not None else None,
                   train_seconds=t.seconds if t is not None else np.nan,
                   final_align=float(np.mean(t.history["align"][-last:])) if t is not None else np.nan,
                   final_keep=float(np.mean(t.history["keep"][-last:])) if t is not None else np.nan)
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.astype({"seed": "Int64", "n_features": "Int64"})


#: The comparisons of the TextD-aligned model (Table 7.4): the better of ImgD and CrossD (the verdict's), each of
#: them, every alive feature, the random set, and no defence.
GAP_COMPARISONS: tuple[tuple[str, ...], ...] = (("ImgD", "CrossD"), ("ImgD",), ("CrossD",), ("all",), ("random",),
                                                 ("none",))


def accuracy_gap(target: np.ndarray, *others: np.ndarray, n_boot: int = 2000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float, float]:
    """Accuracy of ``target`` minus the best accuracy among ``others``, with a paired bootstrap interval.

    Parameters
    ----------
    target, *others : (n,) bool or 0/1
        Per-image correctness of several models on the same images (resampled jointly).

    Returns
    -------
    (gap, ci_low, ci_high)
    """
    if not others:
        raise InputError("accuracy_gap needs at least one model to compare with")

    def stat(t: np.ndarray, *rest: np.ndarray) -> float:
        return float(t.mean() - max(o.mean() for o in rest))
    low, high = bootstrap_ci(stat, target, *others, n_boot=n_boot, seed=seed, confidence=confidence)
    return stat(np.asarray(target), *map(np.asarray, others)), low, high


def robust_gaps(robust: Mapping[str, np.ndarray], of: str = "TextD",
                comparisons: Sequence[Sequence[str]] = GAP_COMPARISONS, n_boot: int = 2000,
                seed: int = 0) -> pd.DataFrame:
    """Robust accuracy of the ``of``-aligned model minus the best of each comparison (:func:`accuracy_gap`).

    Parameters
    ----------
    robust : mapping
        selection (``"ImgD"``, ..., ``"none"`` for the undefended model) -> ``(n,)`` bool robust correctness on the
        same attacked test images.
    comparisons : sequence of sequences of selections

    Returns
    -------
    DataFrame
        One row per comparison: ``versus`` (the selections joined by ``" / "``; ``"no defence"`` for
        ``("none",)``), ``robust_gap``, ``ci_low``, ``ci_high``.
    """
    missing = sorted({of, *(s for c in comparisons for s in c)} - set(robust))
    if missing:
        raise KeyError(f"no robust correctness for {missing}; given {sorted(robust)}")
    rows = []
    for versus in comparisons:
        gap, low, high = accuracy_gap(robust[of], *(robust[s] for s in versus), n_boot=n_boot, seed=seed)
        label = "no defence" if tuple(versus) == ("none",) else " / ".join(versus)
        rows.append(dict(versus=label, robust_gap=gap, ci_low=low, ci_high=high))
    return pd.DataFrame(rows)
