"""Feature-group removal: zero a group of features (e.g. ImgD, TextD, CrossD) and measure what breaks.

The paper's claim (Method page, `claim-5-4`) is that removing CrossD features hurts downstream accuracy least. [ours]
Every group removal is compared with removing random control sets of features, over many seeded draws, so "hurts
least" is judged against chance rather than against the other groups alone. The controls are drawn by a
:class:`~mmlib.analysis.matched_controls.ControlSampler`: as many random alive features as the group
(``"size"``, the default), or features that fire as often and as strongly as the group's (``"activity"``,
:class:`~mmlib.analysis.matched_controls.ActivityMatched`), so that a near-silent group is not compared with active
features.

How a removal reaches the representation:

* a map with a decoder (SAE, raw dims): ``z' = decode(encode(z) with the group zeroed)``; the reference is the
  reconstruction with nothing removed, so the drop measures the group and not the reconstruction error;
* a map without a decoder (NCL): the edited features themselves are the representation, so the class prompts
  and captions are encoded through the same map and compared in feature space.

With ``edit_text=True`` (default) the same features are removed from the text side (class prompts, captions).

Chapter 05's steps: :func:`removal_tasks` (zero-shot and retrieval tasks on a split), :func:`class_removals` (every
non-empty class of one map removed on every task), :func:`stack_reports` (one table over maps and seeds) and
:func:`crossd_margin` / :func:`crossd_margin_ci` (the quantity of claim 5.4's verdict). Retrieval is scored by
:func:`mmlib.analysis.retrieval.recall_at_k` with ``ties="against"``: a removal can collapse many representations onto
one vector (an SAE decodes an all-zero code to its decoder bias; an NCL feature vector becomes zero), every caption
then ties, and a tie counted in the match's favour would make a destructive removal *raise* recall.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mmlib.analysis.categories import CLASSES, Categories, group_masks
from mmlib.analysis.matched_controls import (
    ActivityMatched,
    ControlSampler,
    MatchFallbackWarning,
    SizeMatched,
    match_quality,
)
from mmlib.analysis.retrieval import recall_at_k
from mmlib.analysis.zero_shot import zero_shot_accuracy
from mmlib.core.errors import InputError
from mmlib.core.stats import across_seeds, proportion_ci
from mmlib.core.validation import check_finite
from mmlib.data.embeddings import Embeddings
from mmlib.data.world import WorldSplit
from mmlib.feature_maps.base import FeatureMapLike
from mmlib.models.prompts import caption_scaled, class_embeddings

METRICS: tuple[str, ...] = ("zero_shot", "recall@1")
#: Control samplers :func:`class_removals` builds by name from the categories.
CONTROLS: tuple[str, ...] = ("size", "activity")


@dataclasses.dataclass(frozen=True, eq=False)
class RemovalData:
    """What a removal is evaluated on (embeddings of one split, unnormalised).

    Attributes
    ----------
    image_emb : (n, d) tensor
    text_emb : (n, d) tensor or None
        The paired captions, for image->text retrieval recall@1 (skipped when None).
    class_emb : (c, d) tensor or None
        Class-prompt text embeddings, for zero-shot accuracy (skipped when None).
    labels : (n,) int array or None
        Class of each image.
    """

    image_emb: torch.Tensor
    text_emb: torch.Tensor | None = None
    class_emb: torch.Tensor | None = None
    labels: np.ndarray | torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("image_emb", "text_emb", "class_emb"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, torch.as_tensor(value).float())
        for name in ("image_emb", "text_emb", "class_emb"):
            value = getattr(self, name)
            if value is not None:
                check_finite(value, f"RemovalData.{name}")
        if self.image_emb.ndim != 2:
            raise InputError(f"RemovalData.image_emb must be (n, d), got shape {tuple(self.image_emb.shape)}")
        n = len(self.image_emb)
        if self.text_emb is not None and len(self.text_emb) != n:
            raise InputError(f"{n} images but {len(self.text_emb)} paired captions")
        if self.text_emb is not None and self.text_emb.shape != self.image_emb.shape:
            raise InputError(f"RemovalData.text_emb {tuple(self.text_emb.shape)} must pair with image_emb "
                             f"{tuple(self.image_emb.shape)} (one caption per image, same d)")
        if self.class_emb is not None and self.class_emb.shape[-1:] != self.image_emb.shape[1:]:
            raise InputError(f"RemovalData.class_emb {tuple(self.class_emb.shape)} must be (c, d) with the d of "
                             f"image_emb {tuple(self.image_emb.shape)}")
        if (self.class_emb is None) != (self.labels is None):
            raise InputError("zero-shot needs both class_emb and labels (or neither)")
        if self.labels is not None and len(self.labels) != n:
            raise InputError(f"{n} images but {len(self.labels)} labels")
        if self.text_emb is None and self.class_emb is None:
            raise InputError("nothing to measure: give text_emb (retrieval) and/or class_emb + labels (zero-shot)")


@dataclasses.dataclass(frozen=True, eq=False)
class RemovalReport:
    """Group removals against random control removals.

    Attributes
    ----------
    table : DataFrame
        One row per (group, metric): ``group``, ``n_removed``, ``metric``, ``original`` (raw embeddings),
        ``base`` (through the map, nothing removed), ``removed``, ``removed_ci_low/high`` (Wilson),
        ``drop`` (base - removed), ``control`` (the main control's name), ``random_drop_mean``,
        ``random_drop_low/high`` (central interval of its random drops), ``p_less`` and ``p_greater`` (empirical
        one-sided p-values ``(1 + #{random <= drop}) / (1 + R)`` and ``(1 + #{random >= drop}) / (1 + R)``: a small
        ``p_less`` means the group hurts less than random removal), ``n_random``; for every further control ``c``,
        ``random_drop_mean_<c>``, ``p_less_<c>`` and ``p_greater_<c>``.
    random_drops : DataFrame
        ``group``, ``metric``, ``draw``, ``drop`` (and ``control``): every random draw, for histograms.
    control_sets : DataFrame or None
        ``group``, ``control``, ``draw``, ``features`` (indices of the drawn set), ``n_fallback`` (group features
        matched outside their stratum) and ``excludes_group``.
    matching : DataFrame or None
        One row per (group, control): :func:`mmlib.analysis.matched_controls.match_quality` (median support and
        mass of the group and of its controls), where the features' activity is known.
    """

    table: pd.DataFrame
    random_drops: pd.DataFrame
    control_sets: pd.DataFrame | None = None
    matching: pd.DataFrame | None = None


@torch.inference_mode()
def remove_features(feature_map: FeatureMapLike, z: torch.Tensor, modality: str, mask: np.ndarray | torch.Tensor
                    ) -> torch.Tensor:
    """The representation of ``z (n, d)`` with the features in ``mask (K,)`` zeroed.

    Returns ``(n, d)`` (decoded) for a map with a decoder, ``(n, K)`` (the edited features) otherwise.
    """
    z = check_finite(torch.as_tensor(z), "z")
    if z.ndim != 2:
        raise InputError(f"z must be embeddings (n, d), got shape {tuple(z.shape)}")
    h = feature_map.encode(z, modality)
    return _represent(feature_map, h, modality, _keep(mask, h.shape[1]))


def group_removal(feature_map: FeatureMapLike, data: RemovalData, groups: Mapping[str, np.ndarray], *,
                  alive: np.ndarray | None = None, n_random: int = 200, seed: int = 0, edit_text: bool = True,
                  confidence: float = 0.95, progress: bool = False,
                  controls: Sequence[ControlSampler] | None = None, warn_fallback: bool = True) -> RemovalReport:
    """Remove each group of features and compare with removing random control sets.

    Parameters
    ----------
    feature_map : FeatureMapLike
    data : RemovalData
    groups : name -> (K,) bool mask, e.g. ``{c: categories.mask(c) for c in CLASSES}``
    alive : (K,) bool, optional
        Features the default control draws from (default: all): as many as the group, uniformly without
        replacement (a draw may overlap the group). Not with ``controls``.
    n_random : int
        Random draws per group and control (seeded by ``seed``, the group's position and, after the first, the
        control's position).
    edit_text : bool
        Remove the features from the class prompts and captions too.
    controls : sequence of ControlSampler, optional
        The control samplers (distinct names); the first is the main one (``random_drop_*``, ``p_less``), each
        further one adds ``random_drop_mean_<name>`` and its p-values. Default: ``[SizeMatched(alive)]``.
    warn_fallback : bool
        One :class:`~mmlib.analysis.matched_controls.MatchFallbackWarning` per group and control whose draws matched
        features outside their stratum (they are counted in ``control_sets`` either way).

    Returns
    -------
    RemovalReport
    """
    if not groups:
        raise InputError("no groups to remove")
    with torch.inference_mode():
        enc = {side: (feature_map.encode(z, mod) if z is not None else None)
               for side, z, mod in (("image", data.image_emb, "image"), ("text", data.text_emb, "text"),
                                    ("classes", data.class_emb, "text"))}
    n_features = enc["image"].shape[1]
    samplers = _samplers(controls, alive, n_features)
    original = _metrics(data, data.image_emb, data.text_emb, data.class_emb)
    base = _evaluate(feature_map, data, enc, None, edit_text)
    rows, draws, sets = [], [], []
    for g, (name, mask) in enumerate(groups.items()):
        mask = _mask(mask, n_features, f"group {name!r}")
        k = int(mask.sum())
        if k == 0:
            raise InputError(f"group {name!r} is empty: nothing to remove")
        removed = _evaluate(feature_map, data, enc, mask, edit_text)
        random_drops: dict[str, dict[str, list[float]]] = {}
        for i, sampler in enumerate(samplers):
            rng = np.random.default_rng([seed, g] if i == 0 else [seed, g, i])
            random_drops[sampler.name] = {m: [] for m in removed}
            n_fallback = 0
            for draw in tqdm(range(n_random), desc=f"{sampler.name} controls ({name})", disable=not progress):
                with warnings.catch_warnings():  # counted here and warned once per group below
                    warnings.simplefilter("ignore", MatchFallbackWarning)
                    control = sampler.draw(rng, mask)
                n_fallback += control.n_fallback
                sets.append(dict(group=name, control=sampler.name, draw=draw,
                                 features=tuple(np.flatnonzero(control.mask).tolist()),
                                 n_fallback=control.n_fallback, excludes_group=control.excludes_group))
                for metric, value in _evaluate(feature_map, data, enc, control.mask, edit_text).items():
                    random_drops[sampler.name][metric].append(base[metric] - value)
                    draws.append(dict(group=name, metric=metric, draw=draw, drop=base[metric] - value,
                                      control=sampler.name))
            if n_fallback and warn_fallback:
                warnings.warn(f"group {name!r}, {sampler.name} controls: {n_fallback} of {k * n_random} group "
                              "features matched outside their stratum", MatchFallbackWarning, stacklevel=2)
        for metric, value in removed.items():
            drop = base[metric] - value
            n = len(data.image_emb)
            ci = proportion_ci(round(value * n), n, confidence)
            row = dict(group=name, n_removed=k, metric=metric, original=original[metric], base=base[metric],
                       removed=value, removed_ci_low=ci[0], removed_ci_high=ci[1], drop=drop,
                       control=samplers[0].name)
            for i, sampler in enumerate(samplers):
                row.update(_compare(drop, np.asarray(random_drops[sampler.name][metric]), confidence,
                                    "" if i == 0 else f"_{sampler.name}", main=i == 0))
            rows.append(row)
    return RemovalReport(pd.DataFrame(rows),
                         pd.DataFrame(draws, columns=["group", "metric", "draw", "drop", "control"]),
                         pd.DataFrame(sets, columns=["group", "control", "draw", "features", "n_fallback",
                                                     "excludes_group"]))


# ------------------------------------------------------------------------------------------ the chapter's grid
def removal_tasks(split: WorldSplit, emb: Embeddings, encode: Callable[[list[str]], torch.Tensor],
                  factors: Sequence[str] = ("shape", "colour"), n_retrieval: int = 500) -> dict[str, RemovalData]:
    """The removal tasks on one split of the world: zero-shot classification of each factor and image->text
    retrieval.

    Parameters
    ----------
    split : WorldSplit
        The evaluated split (e.g. the world's test split), ``n`` pairs.
    emb : Embeddings
        The split's embeddings, ``image`` and ``text`` ``(n, d)``, same order.
    encode : callable
        list of ``m`` texts -> ``(m, d)`` text embeddings (e.g. ``lambda t: encode_texts(bundle, t)``).
    factors : names of the world's factors to classify zero-shot.
    n_retrieval : int
        Retrieval ranks each of the first ``n_retrieval`` images among the first ``n_retrieval`` captions.

    Returns
    -------
    dict
        ``"zero-shot <factor>"`` -> :class:`RemovalData` with the ``(n, d)`` images, the ``(k, d)`` class
        embeddings (prompt ensemble, :func:`mmlib.models.prompts.class_embeddings` with ``reading="ensemble"``, put
        on the captions' scale by :func:`mmlib.models.prompts.caption_scaled`: the feature maps' input scale) and
        the ``(n,)`` labels; ``"retrieval"`` -> the first ``n_retrieval`` image and caption embeddings.
    """
    if len(emb.image) != len(split):
        raise InputError(f"{len(emb.image)} embeddings for a split of {len(split)} pairs")
    if n_retrieval < 2:
        raise InputError(f"retrieval needs at least 2 pairs, got n_retrieval={n_retrieval}")
    tasks = {}
    for name in factors:
        factor = split.world.factor(name)
        classes = class_embeddings(encode, factor, split.world.factors, reading="ensemble")
        tasks[f"zero-shot {name}"] = RemovalData(emb.image, class_emb=caption_scaled(classes, emb.text),
                                                 labels=split.values(name))
    tasks["retrieval"] = RemovalData(emb.image[:n_retrieval], text_emb=emb.text[:n_retrieval])
    return tasks


def class_removals(feature_map: FeatureMapLike, categories: Categories, tasks: Mapping[str, RemovalData], *,
                   n_random: int = 200, seed: int = 0, classes: Sequence[str] = CLASSES, edit_text: bool = True,
                   controls: Sequence[str] = ("size",)) -> RemovalReport:
    """Remove each non-empty class of ``categories`` on every task, against random control removals.

    The groups are :func:`mmlib.analysis.categories.group_masks` of ``classes`` (empty ones left out, in the
    order of ``classes``); the random removals draw from the features in a class (:func:`group_removal`, seeded by
    ``seed`` and the group's position, so every task sees the same draws).

    Parameters
    ----------
    feature_map : FeatureMapLike
        ``K`` features.
    categories : Categories
        ``(K,)`` class labels of the features.
    tasks : mapping task name -> RemovalData
        E.g. :func:`removal_tasks`; run in sorted order of their names.
    n_random, seed, edit_text
        As in :func:`group_removal`.
    controls : sequence of {"size", "activity"}
        The control samplers, the main one first: ``"size"`` (:class:`~mmlib.analysis.matched_controls.SizeMatched`
        among the features in a class) and ``"activity"``
        (:class:`~mmlib.analysis.matched_controls.ActivityMatched` on the categories' support and mass, drawn outside
        the group where the other classified features are enough, ``exclude_group="auto"``).

    Returns
    -------
    RemovalReport
        Its table has a ``task`` column, ``excess`` = ``drop - random_drop_mean`` (the drop beyond the main
        control) and ``excess_<c>`` for every further control; its random drops have a ``task`` column; its
        ``matching`` (where the categories carry support and mass) gives the match quality of every control, with
        ``n_fallback`` (group features matched outside their stratum, over all draws) and ``fallback_share`` (of
        the ``n_group x n_draws`` matches).
    """
    if not tasks:
        raise InputError("no tasks to run the removals on")
    groups = group_masks(categories, classes, skip_empty=True)
    if not groups:
        raise InputError(f"every class of {list(classes)} is empty (sizes {categories.sizes()}): nothing to remove")
    samplers = [named_sampler(c, categories) for c in controls]
    reports = {task: group_removal(feature_map, tasks[task], groups, n_random=n_random, seed=seed,
                                   edit_text=edit_text, controls=samplers, warn_fallback=False)
               for task in sorted(tasks)}  # fallbacks are counted in the matching table, not warned per task
    table = pd.concat([r.table.assign(task=t) for t, r in reports.items()], ignore_index=True)
    table["excess"] = table["drop"] - table["random_drop_mean"]
    for sampler in samplers[1:]:
        table[f"excess_{sampler.name}"] = table["drop"] - table[f"random_drop_mean_{sampler.name}"]
    draws = pd.concat([r.random_drops.assign(task=t) for t, r in reports.items()], ignore_index=True)
    sets = next(iter(reports.values())).control_sets  # the same draws on every task
    matching = None
    if categories.support is not None and categories.mass is not None:
        matching = pd.DataFrame([dict(group=g, control=c, **match_quality(groups[g], [_set_mask(f, len(
            categories.labels)) for f in s.features], categories.support, categories.mass),
            n_fallback=int(s.n_fallback.sum()), excludes_group=bool(s.excludes_group.all()))
            for (g, c), s in sets.groupby(["group", "control"], sort=False)])
        if not matching.empty:
            matching["fallback_share"] = matching.n_fallback / (matching.n_group * matching.n_draws)
    return RemovalReport(table, draws, sets, matching)


def stack_reports(reports: Mapping[tuple[Any, ...], Any], attribute: str = "table",
                  keys: Sequence[str] = ("world", "model", "map", "seed")) -> pd.DataFrame:
    """One frame of the ``attribute`` frames of several reports, each with its key as columns.

    Parameters
    ----------
    reports : mapping key tuple -> report
        E.g. ``{(world, model, map, seed): class_removals(...)}``; every report has a DataFrame ``attribute``
        (``"table"``, ``"random_drops"``, or ``"gaps"`` of a :class:`~mmlib.case_studies.attribute_bias.
        BiasRemovalReport`).
    keys : the column names of the key's entries, in order.

    Returns
    -------
    DataFrame
        The frames concatenated in the order of ``reports`` (fresh index), with one column per key.
    """
    if not reports:
        raise InputError("no reports to stack")
    frames = []
    for key, report in reports.items():
        key = key if isinstance(key, tuple) else (key,)
        if len(key) != len(keys):
            raise InputError(f"key {key!r} has {len(key)} entries for the {len(keys)} columns {list(keys)}")
        frames.append(getattr(report, attribute).assign(**dict(zip(keys, key))))
    return pd.concat(frames, ignore_index=True)


def crossd_margin(table: pd.DataFrame, by: Sequence[str] = ("map",), target: str = "CrossD",
                  excess: str = "excess") -> pd.DataFrame:
    """The quantity the verdict on claim 5.4 is computed from, per seed.

    For each combination of ``by`` and seed, a group's excess drop is averaged over the rows (the tasks);
    ``d`` = the target group's mean excess minus the smallest mean excess of the other groups (those present,
    i.e. non-empty, in that seed). Negative ``d``: removing the target hurts less, beyond chance, than removing
    any other group.

    Parameters
    ----------
    table : DataFrame
        Columns ``seed``, ``group``, ``excess`` and ``by``; one row per (``by``, seed, group, task).
    by : columns that separate the analyses (e.g. the map; filter the world beforehand).
    target : the group whose removal is claimed to hurt least.
    excess : the column of excess drops (``"excess"``: beyond the main control; e.g. ``"excess_size"``).

    Returns
    -------
    DataFrame
        One row per (``by``, seed): the ``by`` columns, ``seed``, ``d``, ``crossd`` (the target's mean excess)
        and ``others`` (the smallest other). NaN where the target, or every other group, is empty in that seed.
    """
    by = list(by)
    missing = [c for c in (*by, "seed", "group", excess) if c not in table.columns]
    if missing:
        raise InputError(f"columns {missing} not in the table (columns: {list(table.columns)})")
    mean = table.groupby([*by, "seed", "group"], sort=False)[excess].mean().unstack("group")
    crossd = mean[target] if target in mean.columns else pd.Series(np.nan, index=mean.index)
    others = mean.drop(columns=target, errors="ignore").min(axis=1, skipna=True)
    out = pd.DataFrame({"d": crossd - others, "crossd": crossd, "others": others}).reset_index()
    return out[[*by, "seed", "d", "crossd", "others"]]


def crossd_margin_ci(table: pd.DataFrame, by: Sequence[str] = ("map",), target: str = "CrossD",
                     confidence: float = 0.95, min_seeds: int = 3, excess: str = "excess") -> pd.DataFrame:
    """Mean and Student-t interval over seeds of :func:`crossd_margin`'s ``d``, ``crossd`` and ``others``.

    Returns
    -------
    DataFrame
        :func:`mmlib.core.stats.across_seeds` rows: the ``by`` columns, ``value`` (``"d"``, ``"crossd"``,
        ``"others"``), ``n_seeds``, ``mean``, ``std``, ``ci_low``, ``ci_high``. Per claim 5.4's rule, ``d``'s
        interval below 0 supports the claim for that map, above 0 contradicts it.
    """
    return across_seeds(crossd_margin(table, by, target, excess), ["d", "crossd", "others"], by=list(by),
                        confidence=confidence, min_seeds=min_seeds)


# ----------------------------------------------------------------------------------------------- helpers
def _samplers(controls: Sequence[ControlSampler] | None, alive: np.ndarray | None, n_features: int
              ) -> list[ControlSampler]:
    if controls is None:
        return [SizeMatched(np.ones(n_features, bool) if alive is None else _mask(alive, n_features, "alive"))]
    if alive is not None:
        raise InputError("alive is the pool of the default size-matched control; with controls=, give each "
                         "sampler its pool instead")
    samplers = list(controls)
    names = [getattr(s, "name", None) for s in samplers]
    if not samplers or not all(callable(getattr(s, "draw", None)) for s in samplers) or len(set(names)) != len(names):
        raise InputError(f"controls must be one or more ControlSampler objects with distinct names, got {names}")
    return samplers


def named_sampler(name: str, categories: Categories) -> ControlSampler:
    """The control sampler called ``name`` (one of :data:`CONTROLS`) for the features of ``categories``: ``"size"``
    draws among the alive features, ``"activity"`` matches support and activation mass (outside the group where the
    pool allows). ``InputError`` for another name, or ``"activity"`` on categories without support and mass.
    """
    if name == "size":
        return SizeMatched(categories.alive)
    if name == "activity":
        if categories.support is None or categories.mass is None:
            raise InputError("activity-matched controls need each feature's support and activation mass: "
                             "categorise the MDSResult (not bare scores)")
        return ActivityMatched(categories.support, categories.mass, categories.alive, exclude_group="auto")
    raise InputError(f"unknown control {name!r}; choose from {CONTROLS}")


def _compare(drop: float, r: np.ndarray, confidence: float, suffix: str, main: bool) -> dict[str, float]:
    """The group's drop against one control's random drops ``r`` (R,): mean, (main only) central interval and
    count, and the empirical one-sided p-values, each column name ending in ``suffix``.
    """
    out = {f"random_drop_mean{suffix}": float(r.mean()) if len(r) else np.nan}
    if main:
        tail = 100 * (1 - confidence) / 2
        low, high = np.percentile(r, [tail, 100 - tail]) if len(r) else (np.nan, np.nan)
        out.update(random_drop_low=float(low), random_drop_high=float(high))
    out[f"p_less{suffix}"] = (1 + int((r <= drop + 1e-12).sum())) / (1 + len(r))
    out[f"p_greater{suffix}"] = (1 + int((r >= drop - 1e-12).sum())) / (1 + len(r))
    if main:
        out["n_random"] = len(r)
    return out


def _set_mask(features: Sequence[int], n_features: int) -> np.ndarray:
    mask = np.zeros(n_features, bool)
    mask[list(features)] = True
    return mask


def _mask(mask: np.ndarray | torch.Tensor, n_features: int, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise InputError(f"{what}: expected a boolean mask, got dtype {mask.dtype}")
    if mask.shape != (n_features,):
        raise InputError(f"{what}: mask of shape {mask.shape} for {n_features} features")
    return mask


def _keep(mask: np.ndarray | torch.Tensor | None, n_features: int) -> torch.Tensor | None:
    if mask is None:
        return None
    return torch.from_numpy(~_mask(mask, n_features, "removal"))


def _represent(feature_map: FeatureMapLike, h: torch.Tensor, modality: str, keep: torch.Tensor | None
               ) -> torch.Tensor:
    if keep is not None:
        h = h * keep.to(h.dtype)
    return feature_map.decode(h, modality) if feature_map.has_decoder else h


@torch.inference_mode()
def _evaluate(feature_map: FeatureMapLike, data: RemovalData, enc: dict[str, torch.Tensor | None],
              remove: np.ndarray | None, edit_text: bool) -> dict[str, float]:
    keep = _keep(remove, enc["image"].shape[1])
    text_keep = keep if edit_text else None
    image = _represent(feature_map, enc["image"], "image", keep)
    text = _represent(feature_map, enc["text"], "text", text_keep) if enc["text"] is not None else None
    classes = _represent(feature_map, enc["classes"], "text", text_keep) if enc["classes"] is not None else None
    return _metrics(data, image, text, classes)


def _metrics(data: RemovalData, image: torch.Tensor, text: torch.Tensor | None,
             classes: torch.Tensor | None) -> dict[str, float]:
    out = {}
    if classes is not None:
        out["zero_shot"] = zero_shot_accuracy(image, classes, data.labels)
    if text is not None:
        out["recall@1"] = recall_at_k(image, text, (1,), ties="against")[1]
    return out
