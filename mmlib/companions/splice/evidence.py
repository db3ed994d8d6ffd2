"""The interval estimates and power preconditions behind claims 6.1a and 6.1b, as data.

Tests are rows (``test``, ``mean``, ``ci_low``, ``ci_high``, ``threshold``, ``direction``: the chapter makes each an
``IntervalTest.from_ci(row.test, row, row.threshold, row.direction)`` of :mod:`mmlib.reporting.verdict_rules`, a layer
above this one).

* **6.1a** (sparse and faithful): :func:`sparse_penalty` picks the penalty without looking at accuracy (the least
  sparse one of a sweep whose mean L0 is at most the limit); :func:`faithfulness_tests` gives at that penalty the mean
  L0, the mean cosine to the dense embedding (bootstrap over images) and, per task, sparse minus dense zero-shot
  accuracy (paired bootstrap over the same images). :func:`planted_sparse_recovery` is the positive control: embeddings
  that *are* sparse combinations of concepts must be recovered faithfully at that penalty.
* **6.1b** (spurious-correlation detection): :func:`lift_difference` is the tied background's mean lift in the
  spurious world minus that in the control world (images resampled within each world).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mmlib.analysis.zero_shot import zero_shot_predict
from mmlib.companions.splice.analyses import SpuriousAudit
from mmlib.companions.splice.model import Splice
from mmlib.core.errors import InputError
from mmlib.core.stats import mean_bootstrap_ci

__all__ = ["sparse_penalty", "faithfulness_tests", "planted_sparse_recovery", "lift_difference"]


def _row(test: str, mean: float, low: float, high: float, threshold: float, direction: str) -> dict:
    return dict(test=test, mean=float(mean), ci_low=float(low), ci_high=float(high), threshold=float(threshold),
                 direction=direction)


def sparse_penalty(sweep: pd.DataFrame, max_l0: float) -> float | None:
    """The smallest penalty of a :func:`~mmlib.companions.splice.analyses.sparsity_sweep` table whose mean L0 is at
    most ``max_l0`` (the least sparse decomposition that is sparse enough; accuracy is not looked at); ``None`` if
    no penalty is that sparse.
    """
    sparse = sweep[sweep["l0_mean"] <= max_l0]
    return float(sparse["l1_penalty"].min()) if len(sparse) else None


def faithfulness_tests(splice: Splice, image_emb: torch.Tensor,
                       tasks: Mapping[str, tuple[torch.Tensor, np.ndarray]], max_l0: float, min_cosine: float,
                       tolerance: float, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Claim 6.1a's tests at ``splice``'s penalty.

    Parameters
    ----------
    splice : Splice
        The decomposer, with the penalty tested.
    image_emb : (n, d) dense image embeddings
    tasks : mapping
        task -> ``(class embeddings (c, d) or (c, p, d), labels (n,))``, e.g.
        :func:`~mmlib.companions.splice.analyses.zero_shot_tasks`.
    max_l0, min_cosine, tolerance : float
        Mean L0 claimed below ``max_l0``, mean cosine above ``min_cosine``, sparse minus dense accuracy above
        ``-tolerance``.

    Returns
    -------
    DataFrame
        Rows (``test``, ``mean``, ``ci_low``, ``ci_high``, ``threshold``, ``direction``): mean L0, mean cosine,
        then one row per task; percentile bootstrap intervals over the images (paired for the accuracy difference).
    """
    dec = splice.decompose(image_emb)
    recomposed = splice.recompose(dec.weights)
    l0, cosine = dec.l0.float().numpy(), dec.cosine.float().numpy()
    rows = [_row("mean L0", l0.mean(), *mean_bootstrap_ci(l0, n_boot, seed), max_l0, "below"),
            _row("mean cosine to the dense embedding", cosine.mean(), *mean_bootstrap_ci(cosine, n_boot, seed),
                 min_cosine, "above")]
    for task, (cls, labels) in tasks.items():
        labels = np.asarray(labels)
        if len(labels) != len(image_emb):
            raise InputError(f"task {task!r}: {len(labels)} labels for {len(image_emb)} images")
        dense = (zero_shot_predict(image_emb, cls).numpy() == labels).astype(float)
        sparse = (zero_shot_predict(recomposed, cls).numpy() == labels).astype(float)
        diff = sparse - dense
        rows.append(_row(f"{task}: sparse − dense accuracy", diff.mean(), *mean_bootstrap_ci(diff, n_boot, seed),
                         -tolerance, "above"))
    return pd.DataFrame(rows)


def planted_sparse_recovery(splice: Splice, n: int = 500, k: int = 5, seed: int = 0) -> dict[str, float]:
    """The positive control of 6.1a: embeddings built as sparse non-negative concept combinations, decomposed again.

    Each planted embedding is ``splice.recompose(w)`` for ``w`` with ``k`` random concepts of weight uniform in
    [0.5, 1] (so an exact ``k``-sparse decomposition exists); it is decomposed at ``splice``'s penalty.

    Returns
    -------
    dict
        ``cosine`` (mean cosine of the recomposition to the planted embedding), ``l0`` (mean L0), ``recall``
        (mean share of the planted concepts in the support), ``k``, ``n``.
    """
    n_concepts = splice.dictionary.shape[0]
    if not 0 < k <= n_concepts:
        raise InputError(f"k = {k} planted concepts: need 0 < k <= {n_concepts} (the dictionary's size)")
    rng = np.random.default_rng(seed)
    weights = torch.zeros(n, n_concepts)
    support = np.stack([rng.choice(n_concepts, size=k, replace=False) for _ in range(n)])
    weights[np.arange(n)[:, None], torch.from_numpy(support)] = torch.from_numpy(
        rng.uniform(0.5, 1.0, size=(n, k))).float()
    planted = splice.recompose(weights)
    dec = splice.decompose(planted)
    found = (dec.weights > 0).numpy()
    recall = found[np.arange(n)[:, None], support].mean()
    cosine = F.cosine_similarity(splice.recompose(dec.weights), planted, dim=-1)
    return dict(cosine=float(cosine.mean()), l0=float(dec.l0.float().mean()), recall=float(recall), k=k, n=n)


def _mean_lift(tied: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> float:
    lifts = [tied[labels == c, c].mean() - tied[labels != c, c].mean() for c in classes
             if (labels == c).any() and (labels != c).any()]
    return float(np.mean(lifts)) if lifts else float("nan")


def lift_difference(spurious: SpuriousAudit, control: SpuriousAudit, n_boot: int = 2000, seed: int = 0,
                    confidence: float = 0.95) -> dict[str, float]:
    """Mean lift of the tied background (over the shape classes) in ``spurious`` minus that in ``control``.

    The interval is a percentile bootstrap that resamples the images of each world independently.

    Returns
    -------
    dict
        ``mean``, ``ci_low``, ``ci_high`` of the difference, and ``spurious`` / ``control``: each world's mean lift.
    """
    for name, audit in (("spurious", spurious), ("control", control)):
        if audit.tied_weight is None or audit.labels is None:
            raise InputError(f"the {name} audit carries no per-image tied weights: run audit_spurious again")
    classes = range(spurious.tied_weight.shape[1])
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        one, two = (rng.integers(0, len(a.labels), len(a.labels)) for a in (spurious, control))
        draws[b] = (_mean_lift(spurious.tied_weight[one], spurious.labels[one], classes)
                    - _mean_lift(control.tied_weight[two], control.labels[two], classes))
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(draws, [alpha, 1 - alpha])
    lift_s = _mean_lift(spurious.tied_weight, spurious.labels, classes)
    lift_c = _mean_lift(control.tied_weight, control.labels, classes)
    return dict(mean=lift_s - lift_c, ci_low=float(low), ci_high=float(high), spurious=lift_s, control=lift_c)
