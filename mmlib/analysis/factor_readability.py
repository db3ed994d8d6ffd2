"""Which factors of the world a model's joint embedding holds: a linear probe per factor and modality.

A factor is *readable* from a modality when a linear probe on the joint embedding of that modality recovers its value
with balanced accuracy of at least ``target`` (default 0.8) on the pairs where the factor is present on that side
(depicted for images, mentioned for captions). The MDS chapters can only test a factor's planted dominance when both
modalities hold it; :func:`readability_table` states which factors meet that precondition, per model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from mmlib.analysis.zero_shot import linear_probe_accuracy
from mmlib.core.errors import InputError
from mmlib.core.stats import bootstrap_ci
from mmlib.data.world import WorldSplit

#: Balanced accuracy a factor must reach from a modality to count as readable from it.
READABLE = 0.8
#: The planted probabilities from which a factor must be readable from both modalities.
REQUIRED_P = 0.2
#: Fewest present test pairs per side for a probe score (below: NaN).
MIN_PRESENT = 20


def balanced_accuracy(correct: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` ``(n,)`` of the share of ``correct`` ``(n,)`` predictions.

    NaN for no rows.
    """
    correct, labels = np.asarray(correct, dtype=bool), np.asarray(labels)
    if correct.shape != labels.shape or correct.ndim != 1:
        raise InputError(f"correct {correct.shape} and labels {labels.shape} must be (n,) arrays of one length")
    if len(labels) == 0:
        return math.nan
    return float(np.mean([correct[labels == v].mean() for v in np.unique(labels)]))


def readability_table(train: WorldSplit, test: WorldSplit,
                      embeddings: Mapping[str, tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
                      target: float = READABLE, required_p: float = REQUIRED_P, n_boot: int = 200,
                      seed: int = 0) -> pd.DataFrame:
    """Probe every factor from the joint image and text embeddings; one row per factor.

    Parameters
    ----------
    train, test : WorldSplit
        The probe's training pairs and the scored pairs (their ground truth).
    embeddings : mapping
        ``{"image": (train (n_train, d), test (n_test, d)), "text": (...)}``: the joint embeddings of each side.
    target : float
        Balanced accuracy that counts as readable.
    required_p : float
        A factor with mean ``p_depict >= required_p`` and mean ``p_mention >= required_p`` must be readable from
        both modalities (column ``required``); pure image-only and text-only factors are not.
    n_boot, seed : int
        Percentile bootstrap over the present test pairs for the intervals.

    Returns
    -------
    DataFrame with ``factor, role, p_depict, p_mention, chance``, per side ``image, image_low, image_high, text,
    text_low, text_high`` (balanced accuracy where present), ``required`` and ``readable`` (both sides reach
    ``target``; NaN-safe: a side without enough present pairs is not readable).
    """
    if set(embeddings) != {"image", "text"}:
        raise InputError(f"embeddings must map exactly 'image' and 'text' to (train, test) pairs, got "
                         f"{sorted(embeddings)}")
    for side, pair in embeddings.items():
        if len(pair) != 2 or len(pair[0]) != len(train) or len(pair[1]) != len(test):
            raise InputError(f"embeddings[{side!r}] must be (train ({len(train)}, d), test ({len(test)}, d)), got "
                             f"lengths {[len(p) for p in pair]}")
    if not 0 < target <= 1 or not 0 <= required_p <= 1:
        raise InputError(f"target must lie in (0, 1] and required_p in [0, 1], got {target} and {required_p}")
    rows = []
    for f in train.world.config.effective_factors:
        row = dict(factor=f.name, role=f.role, p_depict=float(np.mean(f.p_depict)),
                   p_mention=float(np.mean(f.p_mention)), chance=1.0 / len(f.values))
        for side, present in (("image", test.depicted(f.name)), ("text", test.mentioned(f.name))):
            row.update(_probe_side(side, embeddings[side], train.values(f.name), test.values(f.name), present,
                                   n_boot, seed))
        row["required"] = row["p_depict"] >= required_p and row["p_mention"] >= required_p
        row["readable"] = bool(row["image"] >= target and row["text"] >= target)
        rows.append(row)
    return pd.DataFrame(rows)


def _probe_side(side: str, pair, y_train: np.ndarray, y_test: np.ndarray, present: np.ndarray, n_boot: int,
                seed: int) -> dict[str, float]:
    if present.sum() < MIN_PRESENT:
        return {side: math.nan, f"{side}_low": math.nan, f"{side}_high": math.nan}
    x_train, x_test = (np.asarray(p.detach().cpu() if torch.is_tensor(p) else p, dtype=np.float64) for p in pair)
    correct = linear_probe_accuracy(x_train, y_train, x_test, y_test)[present]
    labels = y_test[present]
    low, high = bootstrap_ci(balanced_accuracy, correct, labels, n_boot=n_boot, seed=seed)
    return {side: balanced_accuracy(correct, labels), f"{side}_low": low, f"{side}_high": high}


def readability_wide(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Several models' :func:`readability_table` side by side: one row per factor, ``(model, column)`` columns.

    Shared columns (``role, p_depict, p_mention, required``) come first, from the first table; per model, ``image``,
    ``text`` and ``readable``.
    """
    if not tables:
        raise InputError("readability_wide needs at least one model's readability table")
    first = next(iter(tables.values())).set_index("factor")
    parts = {("factor", c): first[c] for c in ("role", "p_depict", "p_mention", "required")}
    for model, table in tables.items():
        t = table.set_index("factor")
        if list(t.index) != list(first.index):
            raise InputError(f"readability_wide: {model!r} has factors {list(t.index)}, the first table "
                             f"{list(first.index)}; probe the same world")
        parts.update({(model, c): t[c] for c in ("image", "text", "readable")})
    return pd.DataFrame(parts)
