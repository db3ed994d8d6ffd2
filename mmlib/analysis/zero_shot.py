"""Scoring on precomputed embeddings: zero-shot accuracy, linear probes per factor, and the modality gap.

Everything here works on tensors, so it runs without the model in memory; the class prompts' embeddings come from
:mod:`mmlib.models.prompts`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mmlib.core.errors import InputError
from mmlib.core.stats import proportion_ci
from mmlib.core.validation import check_finite
from mmlib.data.world import WorldSplit


def zero_shot_predict(image_emb: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """Predicted class ``(n,)`` of images ``(n, d)`` by cosine similarity to class embeddings.

    ``class_emb`` is ``(k, d)`` (one embedding per class) or ``(k, p, d)`` (``p`` prompts per class, e.g. the
    class named together with each value of a context factor): a class then scores its best prompt, i.e. the
    prediction is the class of the most similar prompt in the joint label space.
    """
    image_emb, class_emb = torch.as_tensor(image_emb), torch.as_tensor(class_emb)
    if image_emb.ndim != 2:
        raise InputError(f"image_emb must be (n, d), got shape {tuple(image_emb.shape)}")
    if class_emb.ndim not in (2, 3):
        raise InputError(f"class embeddings must be (k, d) or (k, p, d), got shape {tuple(class_emb.shape)}")
    if image_emb.shape[1] != class_emb.shape[-1]:
        raise InputError(f"image embeddings have d={image_emb.shape[1]} but class embeddings d={class_emb.shape[-1]}")
    check_finite(image_emb, "image_emb")
    check_finite(class_emb, "class_emb")
    classes = F.normalize(class_emb.float(), dim=-1)
    sims = torch.einsum("nd,k...d->nk...", F.normalize(image_emb.float(), dim=-1), classes)
    return (sims.amax(-1) if classes.ndim == 3 else sims).argmax(1)


def zero_shot_accuracy(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor | np.ndarray) -> float:
    """Share of images ``(n, d)`` whose predicted class (see :func:`zero_shot_predict`) is their label ``(n,)``."""
    labels = torch.as_tensor(np.asarray(labels))
    if len(labels) != len(image_emb):
        raise InputError(f"{len(image_emb)} images but {len(labels)} labels")
    if len(labels) == 0:
        return float("nan")
    return float((zero_shot_predict(image_emb, class_emb) == labels).float().mean())


def linear_probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                          c: float = 1.0, seed: int = 0) -> np.ndarray:
    """Fit a standardised multinomial logistic regression; return per-test-sample correctness ``(n_test,)`` bool.

    The fit runs with one BLAS thread: for these small matrices (a few thousand x at most a few hundred) a second
    thread made each L-BFGS fit about 14 times slower on 2 cores, and one thread makes the result independent
    of the machine's core count.
    """
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if np.ndim(x) != 2:
            raise InputError(f"{name} must be (n, w), got shape {np.shape(x)}")
        check_finite(np.asarray(x, dtype=np.float64), name)
    if np.shape(x_train)[1] != np.shape(x_test)[1]:
        raise InputError(f"x_train {np.shape(x_train)} and x_test {np.shape(x_test)} differ in width; pass the same "
                         "features for both")
    if len(y_train) != len(x_train) or len(y_test) != len(x_test):
        raise InputError(f"x_train {np.shape(x_train)} with {len(y_train)} labels y_train, x_test "
                         f"{np.shape(x_test)} with {len(y_test)} labels y_test: pass one label per row")
    if not np.isfinite(c) or c <= 0:
        raise InputError(f"c (the inverse regularisation strength) must be a finite positive number, got {c!r}")
    if len(np.unique(y_train)) < 2:
        return np.zeros(len(y_test), dtype=bool)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    with threadpool_limits(limits=1):
        clf.fit(np.asarray(x_train, dtype=np.float64), y_train)
        return clf.predict(np.asarray(x_test, dtype=np.float64)) == y_test


def probe_report(train: WorldSplit, test: WorldSplit, features: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 factors: Sequence[str] | None = None, c: float = 1.0) -> pd.DataFrame:
    """Linear probe of every factor from every feature set, split by whether the factor was present.

    Parameters
    ----------
    features : dict
        ``name -> (train_features (n_train, w), test_features (n_test, w))``; a name starting with ``image``
        is read on the image side (present = depicted), otherwise on the text side (present = mentioned).

    Returns
    -------
    DataFrame with one row per (feature set, factor): accuracy overall, where present, where absent, with
    95 % CIs where present, and the chance level.
    """
    rows = []
    for fname, (x_tr, x_te) in features.items():
        side = "image" if fname.startswith("image") else "text"
        for f in train.world.factors:
            if factors is not None and f.name not in factors:
                continue
            correct = linear_probe_accuracy(x_tr.numpy(), train.values(f.name), x_te.numpy(), test.values(f.name), c)
            present = test.depicted(f.name) if side == "image" else test.mentioned(f.name)
            k_present = int(correct[present].sum())
            low, high = proportion_ci(k_present, int(present.sum()))
            rows.append(dict(features=fname, side=side, factor=f.name, role=f.role,
                             accuracy=float(correct.mean()),
                             acc_present=float(correct[present].mean()) if present.any() else np.nan,
                             ci_low=low, ci_high=high,
                             acc_absent=float(correct[~present].mean()) if (~present).any() else np.nan,
                             share_present=float(present.mean()), chance=1.0 / len(f.values)))
    return pd.DataFrame(rows)


def modality_gap(image_emb: torch.Tensor, text_emb: torch.Tensor) -> dict[str, float]:
    """The modality gap of paired embeddings ``(n, d)`` (Liang et al., NeurIPS 2022).

    Returns
    -------
    dict with ``gap`` (Euclidean distance between the centroids of the L2-normalised image and text
    embeddings), ``cos_matched`` (mean cosine of matched pairs), ``cos_unmatched`` (mean cosine of
    image ``i`` with text ``i+1``), ``cos_centroids`` (cosine between the two centroids).
    """
    image_emb, text_emb = torch.as_tensor(image_emb), torch.as_tensor(text_emb)
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise InputError(f"image {tuple(image_emb.shape)} and text {tuple(text_emb.shape)} embeddings differ in shape "
                         "(both must be (n, d), row i of each one pair)")
    if len(image_emb) < 2:
        raise InputError("need at least 2 pairs to measure the modality gap")
    check_finite(image_emb, "image_emb")
    check_finite(text_emb, "text_emb")
    img = F.normalize(image_emb.double(), dim=-1)
    txt = F.normalize(text_emb.double(), dim=-1)
    ci, ct = img.mean(0), txt.mean(0)
    return {
        "gap": float((ci - ct).norm()),
        "cos_matched": float((img * txt).sum(1).mean()),
        "cos_unmatched": float((img * txt.roll(1, 0)).sum(1).mean()),
        "cos_centroids": float(F.cosine_similarity(ci, ct, dim=0)),
    }
