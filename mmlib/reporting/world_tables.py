"""Chapter 00's tables of the tiny models: what each cost to train against its budget, and how well each reads the
world's factors zero-shot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from mmlib.data.world import WorldSplit
from mmlib.models.clip import ModelBundle
from mmlib.models.prompts import zero_shot_report
from mmlib.models.training import TrainedModel

__all__ = ["training_summary", "zero_shot_by_model"]


def training_summary(models: Mapping[str, TrainedModel], budget_s: float) -> pd.DataFrame:
    """Size and training time of each tiny model, against a time budget.

    Parameters
    ----------
    models : dict
        Display name -> trained model (:func:`mmlib.models.training.load_or_train`).
    budget_s : float
        Training-time budget per model, in seconds.

    Returns
    -------
    DataFrame
        One row per model: ``model``, ``parameters_M`` (millions), ``seconds`` (training time recorded when the
        artifact was computed: a reload shows the run that trained it), ``within_budget`` (``seconds <=
        budget_s``), ``steps``, ``batch_size`` and ``artifact`` (the artifact folder's name).
    """
    rows = [dict(model=name, parameters_M=sum(p.numel() for p in m.bundle.model.parameters()) / 1e6,
                 seconds=m.seconds, within_budget=m.seconds <= budget_s, steps=m.train.steps,
                 batch_size=m.train.batch_size, artifact=m.path.name)
            for name, m in models.items()]
    return pd.DataFrame(rows)


def zero_shot_by_model(bundles: Mapping[str, ModelBundle], images: Mapping[str, torch.Tensor], split: WorldSplit,
                       factors: Sequence[str] | None = None, readings: Sequence[str] = ("joint",)) -> pd.DataFrame:
    """Zero-shot accuracy per factor and prompt reading of several models on one split.

    Parameters
    ----------
    bundles : dict
        Model name -> model (its text tower embeds the class prompts).
    images : dict
        Model name -> that model's image embeddings of ``split`` ``(n, d)``.
    split : WorldSplit
        The images' ground truth.
    factors : names, optional
        Default: every factor depicted somewhere in the split.
    readings : prompt readings
        ``"joint"``, ``"ensemble"``, ``"single"`` (:func:`mmlib.models.prompts.class_embeddings`).

    Returns
    -------
    DataFrame
        :func:`mmlib.models.prompts.zero_shot_report` of every model (``factor``, ``role``, ``reading``, ``n``,
        ``accuracy``, ``ci_low``, ``ci_high``, ``chance``) with a ``model`` column, models in the order given.
    """
    missing = [name for name in bundles if name not in images]
    if missing:
        raise KeyError(f"no image embeddings for model(s) {missing}")
    return pd.concat([zero_shot_report(b, images[name], split, factors=factors, readings=readings).assign(model=name)
                      for name, b in bundles.items()], ignore_index=True)
