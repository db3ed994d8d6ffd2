"""Attribute bias: zero-shot recognition of an attribute per value, and which feature group it relies on.

The paper's gender study (Method page, `claim-5-5`) recognises a binary attribute (e.g. woman / man) zero-shot, with
all features and with one feature group (ImgD, TextD, CrossD) removed, and reports that one value's recognition
relies mostly on ImgD features while the other's is hurt most by removing TextD. This module measures, per
value of the attribute:

* zero-shot accuracy (the recall of that value) with a Wilson interval, the gap between two values with
  Newcombe's hybrid score interval and the balanced accuracy (mean over values) with a MOVER interval
  (:func:`recognition_table`, :func:`accuracy_gap`, :func:`balanced_accuracy`);
* the drop of that accuracy when a group is removed, against size-matched random removals
  (:func:`bias_removal`). The removals themselves are :func:`mmlib.case_studies.removal.group_removal`, run once per
  value (and per subset of the images, e.g. where the attribute is depicted). Its random draws are seeded by
  the seed and the group's position only, so draw ``r`` removes the same features for every value: the gap's
  random drops are paired differences of the same draws;
* the margin by which an expected group hurts a value more than every other group (:func:`group_margins`),
  the quantity the chapter's verdict is computed from.

Chapter 06's steps are functions here too: :func:`recognition_rows` / :func:`recognition_summary` (recognition
raw and through a map), :func:`removal_accuracies` and :func:`drop_decomposition` (what the removals do per value),
:func:`categorised_map` (the control's maps), and :func:`margin_summary`, :func:`format_margin`,
:func:`describe_margins`, :func:`margins_support`, :func:`margins_contradict` (claim 5.5's rule and its evidence).

:func:`planted_attribute` is the positive control: an attribute planted at the embedding level on top of a
planted dictionary (:mod:`mmlib.data.planted`), so that the analysis can be checked on embeddings that certainly
encode the attribute, with the same per-value depiction / mention asymmetry as the world's ``gender``.

Everything works on precomputed embeddings. [ours] choices, all parameters: the excess drop (group drop minus
the mean size-matched random drop) ranks the groups, not the raw drop; the per-value accuracy is the recall
of that value (share of its images predicted as it), so a classifier that always answers one value scores 1
and 0, not 0.5 and 0.5.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mmlib.analysis.categories import DEFAULT_RULE, Categories, CategoryRule, categorise
from mmlib.analysis.mds import modality_dominance
from mmlib.analysis.zero_shot import zero_shot_predict
from mmlib.case_studies.removal import RemovalData, group_removal, named_sampler, remove_features
from mmlib.core.errors import ConfigError, InputError
from mmlib.core.stats import across_seeds, format_ci, proportion_ci
from mmlib.core.validation import between, check_finite, greater_than, validate_config
from mmlib.data.planted import PlantedConfig, generate_planted
from mmlib.data.world import WorldSplit
from mmlib.feature_maps.base import FeatureMap, FeatureMapLike
from mmlib.feature_maps.store import load_or_train_feature_map
from mmlib.models.prompts import class_embeddings

__all__ = ["AttributeTask", "BiasRemovalReport", "PlantedAttributeConfig", "PlantedAttribute", "value_index",
           "accuracy_gap", "balanced_accuracy", "recognition_table", "world_attribute_task", "planted_attribute",
           "bias_removal", "group_margins", "ALL", "ideal_mds", "format_interval", "recognition_rows",
           "recognition_summary", "removal_accuracies", "drop_decomposition", "categorised_map", "margin_summary",
           "format_margin", "describe_margins", "margins_support", "margins_contradict"]

#: Name of the subset holding every image.
ALL = "all"


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def value_index(values: Sequence[str], name: str) -> int:
    """Position of the value called ``name`` in ``values`` (ValueError naming the choices otherwise)."""
    values = list(values)
    if name not in values:
        raise InputError(f"unknown value {name!r}; the attribute's values are {values}.{_suggest(name, values)}")
    return values.index(name)


@dataclasses.dataclass(frozen=True, eq=False)
class AttributeTask:
    """Zero-shot recognition of one attribute on ``n`` images.

    Attributes
    ----------
    attribute : str
        Its name (e.g. ``"gender"`` or CelebA's ``"Male"``).
    values : tuple of str
        The ``k >= 2`` value names, in label order (e.g. ``("female", "male")``).
    image_emb : (n, d) tensor
        Image embeddings (unnormalised).
    class_emb : (k, d) or (k, p, d) tensor
        One prompt embedding per value (or ``p`` per value, scored by the best; see
        :func:`mmlib.analysis.zero_shot.zero_shot_predict`), on the scale the feature map expects.
    labels : (n,) int array
        Value index of every image.
    subsets : mapping str -> (n,) bool array
        Named subsets of the images to report separately (e.g. ``"depicted"``); :data:`ALL` is added. A
        subset may be empty as a whole (it is then skipped and reported), but not non-empty with a value
        missing (use :meth:`value_counts` to see the counts).

    Raises
    ------
    ValueError
        for fewer than 2 values, duplicate value names, a shape mismatch, a label outside ``0..k-1``, a
        value with no image, or a subset that is not a boolean ``(n,)`` mask.
    """

    attribute: str
    values: tuple[str, ...]
    image_emb: torch.Tensor
    class_emb: torch.Tensor
    labels: np.ndarray
    subsets: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        values = tuple(str(v) for v in self.values)
        if len(values) < 2:
            raise InputError(f"attribute {self.attribute!r} needs at least 2 values, got {list(values)}")
        if len(set(values)) != len(values):
            raise InputError(f"attribute {self.attribute!r} has duplicate value names: {list(values)}")
        image = check_finite(torch.as_tensor(self.image_emb).float(), "AttributeTask.image_emb")
        classes = check_finite(torch.as_tensor(self.class_emb).float(), "AttributeTask.class_emb")
        if image.ndim != 2:
            raise InputError(f"image embeddings must be (n, d), got shape {tuple(image.shape)}")
        if classes.ndim not in (2, 3) or classes.shape[0] != len(values):
            raise InputError(f"class embeddings must be (k, d) or (k, p, d) with k = {len(values)} values "
                             f"{list(values)}, got shape {tuple(classes.shape)}")
        if classes.shape[-1] != image.shape[1]:
            raise InputError(f"image embeddings have d={image.shape[1]} but class embeddings d={classes.shape[-1]}")
        labels = np.asarray(self.labels)
        if labels.shape != (len(image),):
            raise InputError(f"{len(image)} images but labels of shape {labels.shape}")
        if len(labels) == 0:
            raise InputError(f"no images to recognise {self.attribute!r} on")
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"labels must be integer value indices, got dtype {labels.dtype}")
        bad = labels[(labels < 0) | (labels >= len(values))]
        if len(bad):
            raise InputError(f"label {int(bad[0])} is outside 0..{len(values) - 1} (values {list(values)})")
        counts = np.bincount(labels, minlength=len(values))
        if (counts == 0).any():
            missing = [v for v, c in zip(values, counts) if c == 0]
            raise InputError(f"value(s) {missing} of {self.attribute!r} have no image: every value needs samples")
        subsets = {ALL: np.ones(len(labels), bool)}
        for name, mask in dict(self.subsets).items():
            if name == ALL:
                raise InputError(f"subset name {ALL!r} is reserved for every image")
            mask = np.asarray(mask)
            if mask.dtype != bool or mask.shape != labels.shape:
                raise InputError(f"subset {name!r} must be a boolean mask of shape {labels.shape}, got "
                                 f"dtype {mask.dtype} and shape {mask.shape}")
            sub = np.bincount(labels[mask], minlength=len(values))
            if mask.any() and (sub == 0).any():
                missing = [v for v, c in zip(values, sub) if c == 0]
                raise InputError(f"subset {name!r} has no image of value(s) {missing}: per-value accuracy "
                                 f"is undefined there (counts {dict(zip(values, sub.tolist()))})")
            subsets[name] = mask
        for name, value in (("values", values), ("image_emb", image), ("class_emb", classes),
                            ("labels", labels), ("subsets", subsets)):
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.labels)

    def value_counts(self) -> pd.DataFrame:
        """Images per subset (rows) and value (columns)."""
        return pd.DataFrame({name: np.bincount(self.labels[m], minlength=len(self.values))
                             for name, m in self.subsets.items()}, index=list(self.values)).T

    def subset_names(self) -> list[str]:
        """The non-empty subsets, :data:`ALL` first."""
        return [name for name, m in self.subsets.items() if m.any()]

    def mask(self, subset: str = ALL, value: str | None = None) -> np.ndarray:
        """``(n,)`` bool: the images of ``subset`` (and of ``value``, if given)."""
        if subset not in self.subsets:
            raise InputError(f"unknown subset {subset!r}; choose one of {list(self.subsets)}."
                             f"{_suggest(subset, list(self.subsets))}")
        mask = self.subsets[subset]
        return mask if value is None else mask & (self.labels == value_index(self.values, value))


def world_attribute_task(split: WorldSplit, image_emb: torch.Tensor, encode: Callable[[list[str]], torch.Tensor],
                         attribute: str = "gender", reading: str = "ensemble", text_scale: float | None = None,
                         template: str = "a photo of") -> AttributeTask:
    """The zero-shot task of a world factor on one split, with subsets ``depicted`` / ``not depicted``.

    Parameters
    ----------
    split : WorldSplit
    image_emb : (n, d) tensor
        Image embeddings of ``split`` (same order).
    encode : callable
        list of texts -> ``(m, d)`` text embeddings (e.g. ``lambda t: encode_texts(bundle, t)``).
    attribute : str
        A factor of the world.
    reading : str
        Prompt reading of :func:`mmlib.models.prompts.class_embeddings` (default ``"ensemble"``, as chapter 05).
    text_scale : float, optional
        Rescale the (unit) class embeddings to this norm, e.g. the mean norm of the split's caption
        embeddings: a feature map's input normalisation is fitted to that scale. Default: unit norm.

    Raises
    ------
    ValueError
        for an unknown attribute (the message lists the world's factors).
    """
    names = [f.name for f in split.world.factors]
    if attribute not in names:
        raise InputError(f"unknown attribute {attribute!r}; the world's factors are {names}."
                         f"{_suggest(attribute, names)}")
    if len(image_emb) != len(split):
        raise InputError(f"{len(image_emb)} image embeddings for a split of {len(split)} pairs")
    factor = split.world.factor(attribute)
    classes = class_embeddings(encode, factor, split.world.factors, reading=reading, template=template)
    if text_scale is not None:
        classes = F.normalize(classes, dim=-1) * float(text_scale)
    depicted = np.asarray(split.depicted(attribute), bool)
    return AttributeTask(attribute, factor.values, image_emb, classes, np.asarray(split.values(attribute)),
                         {"depicted": depicted, "not depicted": ~depicted})


# ------------------------------------------------------------------------------------------ positive control
@dataclasses.dataclass(frozen=True)
class PlantedAttributeConfig:
    """An attribute planted on top of a planted dictionary.

    Each pair gets a value ``v`` (uniform); the value's own unit atom ``a_v`` (scaled by ``strength``) is added
    to the image embedding with probability ``p_depict[v]`` and to the text embedding with probability
    ``p_mention[v]``, independently. A value's zero-shot prompt is the text embedding of a caption that says
    only the value: ``strength * a_v`` plus the text offset of the modality gap.

    Attributes
    ----------
    base : PlantedConfig
        The background pairs (shared, image-only and text-only atoms, the modality gap, noise).
    values : tuple of str
    p_depict, p_mention : tuple of float
        Per value (default: the world's ``gender`` asymmetry).
    strength : float
        Coefficient of the attribute atoms.
    null : bool
        Every value always depicted and mentioned (the null-world control).
    seed : int
        Seeds the attribute atoms, values and flags (the background uses ``base.seed``).
    """

    base: PlantedConfig = PlantedConfig()
    values: tuple[str, ...] = ("female", "male")
    p_depict: tuple[float, ...] = (0.9, 0.2)
    p_mention: tuple[float, ...] = (0.2, 0.9)
    strength: float = 1.0
    null: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        validate_config(self)  # the types first, so that the checks below can compare
        k = len(self.values)
        if k < 2 or len(set(self.values)) != k:
            raise ConfigError(f"need at least 2 distinct values, got {self.values}")
        if len(self.p_depict) != k or len(self.p_mention) != k:
            raise ConfigError(f"one p_depict and one p_mention per value ({k} values), got {self.p_depict} and "
                             f"{self.p_mention}")
        if not all(0.0 <= p <= 1.0 for p in (*self.p_depict, *self.p_mention)):
            raise ConfigError(f"probabilities must lie in [0, 1], got {self.p_depict} and {self.p_mention}")
        if not self.strength > 0:
            raise ConfigError(f"strength must be positive, got {self.strength}")
        validate_config(self, p_depict=between(0.0, 1.0), p_mention=between(0.0, 1.0), strength=greater_than(0.0))


@dataclasses.dataclass(frozen=True, eq=False)
class PlantedAttribute:
    """Pairs with a planted attribute (see :class:`PlantedAttributeConfig`).

    Attributes
    ----------
    image, text : (n, d) tensors
    labels : (n,) int array
    depicted, mentioned : (n,) bool arrays
        Whether the pair's value atom is in its image / its text.
    atoms : (k, d) tensor
        The values' unit atoms.
    prompts : (k, d) tensor
        One zero-shot prompt embedding per value.
    config : PlantedAttributeConfig
    """

    image: torch.Tensor
    text: torch.Tensor
    labels: np.ndarray
    depicted: np.ndarray
    mentioned: np.ndarray
    atoms: torch.Tensor
    prompts: torch.Tensor
    config: PlantedAttributeConfig

    def __len__(self) -> int:
        return len(self.labels)

    def pairs(self, index: np.ndarray | slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image (m, d), text (m, d))`` of the selected pairs (e.g. to train a feature map on)."""
        return self.image[index], self.text[index]

    def task(self, index: np.ndarray | slice = slice(None), attribute: str = "planted") -> AttributeTask:
        """The zero-shot task on the selected pairs' images, with subsets ``depicted`` / ``not depicted``."""
        depicted = self.depicted[index]
        return AttributeTask(attribute, self.config.values, self.image[index], self.prompts, self.labels[index],
                             {"depicted": depicted, "not depicted": ~depicted})


def planted_attribute(config: PlantedAttributeConfig, n: int) -> PlantedAttribute:
    """``n`` pairs with a planted attribute (deterministic given the config)."""
    base = generate_planted(config.base, n)
    rng = np.random.default_rng([config.seed, 6])
    k, d = len(config.values), config.base.d
    atoms = rng.standard_normal((k, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    labels = rng.integers(k, size=n)
    p_d = np.ones(k) if config.null else np.asarray(config.p_depict, float)
    p_m = np.ones(k) if config.null else np.asarray(config.p_mention, float)
    depicted = rng.random(n) < p_d[labels]
    mentioned = rng.random(n) < p_m[labels]
    signal = torch.from_numpy((config.strength * atoms[labels]).astype(np.float32))
    image = base.image + signal * torch.from_numpy(depicted[:, None].astype(np.float32))
    text = base.text + signal * torch.from_numpy(mentioned[:, None].astype(np.float32))
    atoms_t = torch.from_numpy(atoms.astype(np.float32))
    prompts = config.strength * atoms_t + base.gap_vectors[1]
    return PlantedAttribute(image, text, labels, depicted, mentioned, atoms_t, prompts, config)


# ---------------------------------------------------------------------------------------- accuracy per value
def accuracy_gap(successes_a: int, trials_a: int, successes_b: int, trials_b: int,
                 confidence: float = 0.95) -> tuple[float, float, float]:
    """Difference ``p_a - p_b`` of two independent proportions with Newcombe's hybrid score interval.

    Newcombe (1998), method 10: with Wilson intervals ``(l_a, u_a)`` and ``(l_b, u_b)``, the interval is
    ``d - sqrt((p_a - l_a)^2 + (u_b - p_b)^2)`` to ``d + sqrt((u_a - p_a)^2 + (p_b - l_b)^2)``.

    Returns
    -------
    (gap, low, high)

    Raises
    ------
    ValueError
        for zero trials or successes outside ``0..trials``.
    """
    for s, n, which in ((successes_a, trials_a, "a"), (successes_b, trials_b, "b")):
        if n <= 0:
            raise InputError(f"group {which} has {n} trials: a gap needs samples of both values")
        if not 0 <= s <= n:
            raise InputError(f"group {which}: {s} successes out of {n} trials")
    pa, pb = successes_a / trials_a, successes_b / trials_b
    la, ua = proportion_ci(successes_a, trials_a, confidence)
    lb, ub = proportion_ci(successes_b, trials_b, confidence)
    d = pa - pb
    return (d, d - float(np.hypot(pa - la, ub - pb)), d + float(np.hypot(ua - pa, pb - lb)))


def balanced_accuracy(successes: Sequence[int], trials: Sequence[int], confidence: float = 0.95
                      ) -> tuple[float, float, float]:
    """Mean of ``k`` independent per-value accuracies with a MOVER interval built from their Wilson intervals.

    MOVER (Zou & Donner 2008; Newcombe's method 10 is its two-proportion difference): for the mean
    ``b = (1/k) sum p_i`` the interval is ``b - (1/k) sqrt(sum (p_i - l_i)^2)`` to
    ``b + (1/k) sqrt(sum (u_i - p_i)^2)``.

    Returns
    -------
    (balanced, low, high)
    """
    successes, trials = list(successes), list(trials)
    if len(successes) != len(trials) or len(trials) < 1:
        raise InputError(f"need one success count per trial count, got {len(successes)} and {len(trials)}")
    for i, (s, n) in enumerate(zip(successes, trials)):
        if n <= 0:
            raise InputError(f"value {i} has {n} trials: every value needs samples")
        if not 0 <= s <= n:
            raise InputError(f"value {i}: {s} successes out of {n} trials")
    p = np.array([s / n for s, n in zip(successes, trials)])
    ci = np.array([proportion_ci(s, n, confidence) for s, n in zip(successes, trials)])
    k = len(p)
    b = float(p.mean())
    return (b, b - float(np.sqrt(((p - ci[:, 0]) ** 2).sum())) / k, b + float(np.sqrt(((ci[:, 1] - p) ** 2).sum())) / k)


def recognition_table(task: AttributeTask, image_emb: torch.Tensor | None = None,
                      class_emb: torch.Tensor | None = None, pair: tuple[str, str] | None = None,
                      confidence: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Zero-shot accuracy per subset and value, and the gap between two values.

    Parameters
    ----------
    task : AttributeTask
    image_emb, class_emb : tensors, optional
        Representations to score instead of the task's own (e.g. through a feature map, ``(n, d)`` and
        ``(k, d)`` or ``(n, K)`` and ``(k, K)``).
    pair : (str, str), optional
        The two values whose gap ``acc(a) - acc(b)`` is reported; default the first two values.

    Returns
    -------
    per_value : DataFrame
        ``subset``, ``value``, ``n``, ``correct``, ``accuracy`` (recall of the value), ``ci_low``, ``ci_high``
        (Wilson).
    gaps : DataFrame
        ``subset``, ``a``, ``b``, ``gap``, ``ci_low``, ``ci_high`` (Newcombe), ``balanced`` (mean accuracy
        over all values) and its MOVER interval ``balanced_low``, ``balanced_high`` (:func:`balanced_accuracy`).
    """
    image = task.image_emb if image_emb is None else torch.as_tensor(image_emb)
    classes = task.class_emb if class_emb is None else torch.as_tensor(class_emb)
    if len(image) != len(task):
        raise InputError(f"{len(image)} image representations for a task of {len(task)} images")
    a, b = pair or task.values[:2]
    ia, ib = value_index(task.values, a), value_index(task.values, b)
    if ia == ib:
        raise InputError(f"the gap needs two different values, got {a!r} twice")
    correct = (zero_shot_predict(image, classes).numpy() == task.labels)
    rows, gaps = [], []
    for subset in task.subset_names():
        stats = {}
        for i, value in enumerate(task.values):
            m = task.mask(subset) & (task.labels == i)
            k, n = int(correct[m].sum()), int(m.sum())
            stats[i] = (k, n)
            low, high = proportion_ci(k, n, confidence)
            rows.append(dict(subset=subset, value=value, n=n, correct=k, accuracy=k / n, ci_low=low, ci_high=high))
        gap, low, high = accuracy_gap(*stats[ia], *stats[ib], confidence)
        bal, bal_low, bal_high = balanced_accuracy(*zip(*stats.values()), confidence=confidence)
        gaps.append(dict(subset=subset, a=a, b=b, gap=gap, ci_low=low, ci_high=high, balanced=bal,
                         balanced_low=bal_low, balanced_high=bal_high))
    return pd.DataFrame(rows), pd.DataFrame(gaps)


# ------------------------------------------------------------------------------------------------ removals
@dataclasses.dataclass(frozen=True, eq=False)
class BiasRemovalReport:
    """Group removals per value against random removals (size- or activity-matched: the ``controls`` of
    :func:`bias_removal`, the main one first).

    Attributes
    ----------
    table : DataFrame
        One row per (subset, value, group): ``subset``, ``value``, ``n``, ``group``, ``n_removed``,
        ``original`` (raw embeddings), ``base`` (through the map, nothing removed), ``removed`` and its Wilson
        ``removed_ci_low/high``, ``drop`` (base - removed), ``random_drop_mean``, ``random_drop_low/high``
        (central interval of the random drops), ``excess`` (drop - random_drop_mean), ``p_less``,
        ``p_greater`` (as :class:`mmlib.case_studies.removal.RemovalReport`), ``n_random``, ``control`` (the main
        control's name) and ``n_fallback`` (group features its draws matched outside their stratum); per further
        control ``random_drop_mean_<name>`` and ``excess_<name>``.
    gaps : DataFrame
        One row per (subset, group): ``a``, ``b``, ``gap_drop`` = drop(a) - drop(b) (positive: the removal
        hurts ``a`` more), the same for the paired random draws (``random_gap_mean``, ``random_gap_low/high``),
        ``gap_excess`` and the empirical one-sided p-values ``p_less``, ``p_greater``.
    random_drops : DataFrame
        ``subset``, ``value``, ``group``, ``draw``, ``drop``: every random draw.
    """

    table: pd.DataFrame
    gaps: pd.DataFrame
    random_drops: pd.DataFrame


def bias_removal(feature_map: FeatureMapLike, task: AttributeTask, groups: Mapping[str, np.ndarray], *,
                 alive: np.ndarray | None = None, n_random: int = 50, seed: int = 0, edit_text: bool = True,
                 subsets: Sequence[str] | None = None, pair: tuple[str, str] | None = None,
                 confidence: float = 0.95, progress: bool = False, categories: Categories | None = None,
                 controls: Sequence[str] = ("size",)) -> BiasRemovalReport:
    """Remove each feature group and measure the zero-shot accuracy of every value, against random removals.

    Parameters
    ----------
    feature_map : FeatureMapLike
        As in :func:`mmlib.case_studies.removal.group_removal` (SAE: decoded; NCL: compared in feature space).
    task : AttributeTask
    groups : name -> (K,) bool mask, e.g. ``{c: categories.mask(c) for c in CLASSES}``
    alive : (K,) bool, optional
        Features the size-matched random removals draw from (without ``categories``).
    n_random, seed, edit_text, confidence, progress
        Passed to :func:`mmlib.case_studies.removal.group_removal` (the same seed for every value: paired draws).
    subsets : names of the task's subsets to run; default every non-empty one.
    pair : the two values of the gap (default the first two).
    categories : Categories, optional
        The categories the groups come from; needed by ``controls`` (their alive features, support and mass).
    controls : sequence of {"size", "activity"}
        With ``categories``: the control samplers (:func:`mmlib.case_studies.removal.named_sampler`), the main one
        first. ``excess``, the gaps and ``random_drops`` use the main control; every further control adds
        ``random_drop_mean_<name>`` and ``excess_<name>`` to the table. Without ``categories``: size-matched draws
        among ``alive``.

    Returns
    -------
    BiasRemovalReport
    """
    if n_random < 2:
        raise InputError(f"n_random must be at least 2 (random draws per group), got {n_random}")
    if task.class_emb.ndim != 2:
        raise InputError(f"removals encode one prompt embedding per value, (k, d); got class embeddings of shape "
                         f"{tuple(task.class_emb.shape)} (the 'joint' prompt reading): use reading='ensemble' or "
                         "'single'")
    names = task.subset_names() if subsets is None else list(subsets)
    for name in names:
        if not task.mask(name).any():
            raise InputError(f"subset {name!r} is empty: no image to evaluate")
    a, b = pair or task.values[:2]
    value_index(task.values, a), value_index(task.values, b)
    if categories is None:
        if tuple(controls) != ("size",):
            raise InputError(f"controls {list(controls)} need the categories the groups come from (their support and "
                             "activation mass): pass categories=...")
        samplers = None  # group_removal's default: size-matched draws among `alive`
    else:
        if alive is not None:
            raise InputError("pass alive or categories, not both: with categories the controls draw among its alive "
                             "features")
        if not controls:
            raise InputError("controls must name at least one control sampler, e.g. ('activity', 'size')")
        samplers = [named_sampler(c, categories) for c in controls]
    main = samplers[0].name if samplers else "size"
    tables, draws, gaps = [], [], []
    for subset in names:
        per_value = {}
        for i, value in enumerate(task.values):
            m = torch.from_numpy(task.mask(subset) & (task.labels == i))
            data = RemovalData(task.image_emb[m], class_emb=task.class_emb, labels=task.labels[m.numpy()])
            rep = group_removal(feature_map, data, groups, alive=alive, n_random=n_random, seed=seed,
                                edit_text=edit_text, confidence=confidence, progress=progress, controls=samplers,
                                warn_fallback=False)  # fallbacks are counted in the table
            t = rep.table[rep.table.metric == "zero_shot"].drop(columns="metric")
            fallback = rep.control_sets[rep.control_sets.control == main].groupby("group").n_fallback.sum()
            tables.append(t.assign(subset=subset, value=value, n=int(m.sum()),
                                   n_fallback=t.group.map(fallback).fillna(0).astype(int)))
            d = rep.random_drops[(rep.random_drops.metric == "zero_shot") & (rep.random_drops.control == main)]
            d = d.drop(columns=["metric", "control"])
            draws.append(d.assign(subset=subset, value=value))
            per_value[value] = (t.set_index("group"), d)
        (ta, da), (tb, db) = per_value[a], per_value[b]
        for group in ta.index:
            ra = da[da.group == group].set_index("draw")["drop"]
            rb = db[db.group == group].set_index("draw")["drop"]
            r = (ra - rb).to_numpy()
            gap = float(ta.loc[group, "drop"] - tb.loc[group, "drop"])
            tail = 100 * (1 - confidence) / 2
            low, high = np.percentile(r, [tail, 100 - tail])
            gaps.append(dict(subset=subset, group=group, a=a, b=b, gap_drop=gap, random_gap_mean=float(r.mean()),
                             random_gap_low=float(low), random_gap_high=float(high),
                             gap_excess=gap - float(r.mean()),
                             p_less=(1 + int((r <= gap + 1e-12).sum())) / (1 + len(r)),
                             p_greater=(1 + int((r >= gap - 1e-12).sum())) / (1 + len(r))))
    table = pd.concat(tables, ignore_index=True)
    table["excess"] = table["drop"] - table["random_drop_mean"]
    for sampler in (samplers or [])[1:]:
        table[f"excess_{sampler.name}"] = table["drop"] - table[f"random_drop_mean_{sampler.name}"]
    first = ["subset", "value", "n", "group"]
    table = table[first + [c for c in table.columns if c not in first]]
    draws_frame = pd.concat(draws, ignore_index=True)[["subset", "value", "group", "draw", "drop"]]
    return BiasRemovalReport(table, pd.DataFrame(gaps), draws_frame)


def group_margins(table: pd.DataFrame, expected: Mapping[str, str], value: str = "excess",
                  groups: Sequence[str] | None = None) -> pd.DataFrame:
    """How much more the expected group hurts each value than any other group.

    Parameters
    ----------
    table : DataFrame
        Rows with columns ``value``, ``group`` and ``value`` (the measure, default ``"excess"``), one row per
        (value, group) within each combination of the other key columns present among ``subset``, ``seed``,
        ``map``, ``world``, ``model``.
    expected : mapping value name -> group name
        E.g. ``{"female": "ImgD", "male": "TextD"}`` (the paper's claim).
    groups : names the expected groups must come from (e.g. :data:`mmlib.analysis.categories.CLASSES`); a group
        that is empty, hence absent from the table, for some key yields a NaN margin there.

    Returns
    -------
    DataFrame with the key columns, ``value``, ``expected``, ``expected_measure``, ``best_other`` (the group
    of the largest other measure), ``other_measure`` and ``margin`` = expected - largest other (positive: the
    expected group hurts this value most). A key without the expected group's row (an empty group) gets NaN.
    """
    missing = [c for c in ("value", "group", value) if c not in table.columns]
    if missing:
        raise InputError(f"columns {missing} not in the table (columns: {list(table.columns)})")
    unknown_values = [v for v in expected if v not in set(table["value"])]
    if unknown_values:
        raise InputError(f"unknown value(s) {unknown_values}; the table has values {sorted(set(table['value']))}")
    if groups is not None:
        unknown_groups = [g for g in expected.values() if g not in groups]
        if unknown_groups:
            raise InputError(f"unknown group(s) {unknown_groups}; choose from {list(groups)}")
    keys = [c for c in ("world", "model", "map", "seed", "subset") if c in table.columns]
    rows = []
    for key, sub in (table.groupby(keys, sort=False) if keys else [((), table)]):
        key = key if isinstance(key, tuple) else (key,)
        for v, g in expected.items():
            s = sub[sub["value"] == v].set_index("group")[value]
            others = s.drop(index=g, errors="ignore").dropna()
            exp = float(s.get(g, np.nan))
            best = others.idxmax() if len(others) else None
            other = float(others.max()) if len(others) else np.nan
            rows.append({**dict(zip(keys, key)), "value": v, "expected": g, "expected_measure": exp,
                         "best_other": best, "other_measure": other, "margin": exp - other})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ the chapter's steps
def ideal_mds(p_depict: float, p_mention: float) -> float:
    """The paired MDS of an ideal feature that tracks one value of an attribute.

    The feature fires, with the same strength, on an image exactly when the value is depicted (probability
    ``p_depict``) and on a caption exactly when it is mentioned (``p_mention``), independently. Over the pairs where
    it fires on either side, its image share is 1 (image only), 1/2 (both) or 0 (caption only), so

    ``MDS = (p_d (1 - p_m) + p_d p_m / 2) / (1 - (1 - p_d)(1 - p_m))``.

    Raises
    ------
    ValueError
        for a probability outside [0, 1], or both 0 (the feature never fires: no MDS).
    """
    if not (0.0 <= p_depict <= 1.0 and 0.0 <= p_mention <= 1.0):
        raise InputError(f"probabilities must lie in [0, 1], got {p_depict} and {p_mention}")
    fires = 1.0 - (1.0 - p_depict) * (1.0 - p_mention)
    if fires == 0:
        raise InputError("a feature that never fires has no MDS (p_depict = p_mention = 0)")
    return (p_depict * (1.0 - p_mention) + p_depict * p_mention / 2) / fires


def format_interval(value: float, low: float, high: float, digits: int = 3, signed: bool = False) -> str:
    """``"value [low, high]"`` (:func:`mmlib.core.stats.format_ci`; ``"n/a"`` for a non-finite value)."""
    return format_ci({"mean": value, "ci_low": low, "ci_high": high}, digits=digits, signed=signed)


def recognition_rows(task: AttributeTask, feature_map: FeatureMapLike | None = None, confidence: float = 0.95,
                     **keys: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`recognition_table` of the raw embeddings, or through ``feature_map`` with nothing removed.

    Parameters
    ----------
    task : AttributeTask
        ``n`` images ``(n, d)`` and ``k`` prompt embeddings ``(k, d)``.
    feature_map : FeatureMapLike, optional
        Images and prompts are encoded and represented as in the removals (decoded for a map with a decoder, in
        feature space otherwise; :func:`mmlib.case_studies.removal.remove_features` with an empty mask).
    **keys
        Columns added to both frames (e.g. ``world="world", rep="SAE", seed=0``).

    Returns
    -------
    (per_value, gaps)
        As :func:`recognition_table`, with the ``keys`` columns.
    """
    image, classes = None, None
    if feature_map is not None:
        if task.class_emb.ndim != 2:
            raise InputError(f"a feature map encodes one prompt embedding per value, (k, d); got class embeddings "
                             f"of shape {tuple(task.class_emb.shape)}")
        n_features = feature_map.encode(task.image_emb[:1], "image").shape[1]
        nothing = np.zeros(n_features, bool)
        image = remove_features(feature_map, task.image_emb, "image", nothing)
        classes = remove_features(feature_map, task.class_emb, "text", nothing)
    per_value, gaps = recognition_table(task, image, classes, confidence=confidence)
    return per_value.assign(**keys), gaps.assign(**keys)


def recognition_summary(per_value: pd.DataFrame, gaps: pd.DataFrame, index: Sequence[str] = ("world", "rep", "subset"),
                        digits: int = 3) -> pd.DataFrame:
    """A table of per-value accuracies, the gap and the balanced accuracy, each as ``"value [low, high]"``.

    Parameters
    ----------
    per_value, gaps : DataFrame
        Rows of :func:`recognition_rows` (one per ``index`` combination and value, resp. per ``index``
        combination), e.g. the raw embeddings and the maps of one seed.
    index : the columns that identify a row of the result.

    Returns
    -------
    DataFrame
        Indexed by ``index``; one column per value (Wilson interval), ``"gap (a − b)"`` (Newcombe) and
        ``"balanced"`` (MOVER).
    """
    index = list(index)
    cells = per_value.assign(cell=[format_interval(*r) for r in per_value[["accuracy", "ci_low", "ci_high"]].values])
    wide = cells.pivot(index=index, columns="value", values="cell")
    g = gaps.set_index(index).loc[wide.index]
    a, b = gaps["a"].iloc[0], gaps["b"].iloc[0]
    wide[f"gap ({a} − {b})"] = [format_interval(*r) for r in g[["gap", "ci_low", "ci_high"]].values]
    wide["balanced"] = [format_interval(*r) for r in g[["balanced", "balanced_low", "balanced_high"]].values]
    return wide


def removal_accuracies(table: pd.DataFrame, base: pd.DataFrame, maps: Sequence[str]) -> pd.DataFrame:
    """Per map: each value's accuracy with nothing removed and with each class removed, for bar charts.

    Parameters
    ----------
    table : DataFrame
        :attr:`BiasRemovalReport.table` rows of one world, seed and subset, with a ``map`` column.
    base : DataFrame
        :func:`recognition_rows` per-value rows of the same world, seed and subset through each map (``rep`` =
        the map's name): the intervals of the accuracy with nothing removed.
    maps : the maps to show, in order.

    Returns
    -------
    DataFrame
        ``factor`` (``"<map>: nothing removed"`` / ``"<map>: <group> removed"``), ``value``, ``accuracy``,
        ``ci_low``, ``ci_high`` (Wilson) and ``chance`` (1 / number of values): the input of
        :func:`mmlib.reporting.plots.accuracy_bars`.
    """
    rows = []
    for name in maps:
        sel = table[table["map"] == name]
        ci = base[base["rep"] == name].set_index("value")
        rows += [dict(factor=f"{name}: nothing removed", value=r.value, accuracy=r.base,
                      ci_low=ci.loc[r.value, "ci_low"], ci_high=ci.loc[r.value, "ci_high"])
                 for r in sel.drop_duplicates("value").itertuples()]
        rows += [dict(factor=f"{name}: {r.group} removed", value=r.value, accuracy=r.removed, ci_low=r.removed_ci_low,
                      ci_high=r.removed_ci_high) for r in sel.itertuples()]
    out = pd.DataFrame(rows, columns=["factor", "value", "accuracy", "ci_low", "ci_high"])
    return out.assign(chance=1.0 / max(1, table["value"].nunique()))


def drop_decomposition(table: pd.DataFrame, pair: tuple[str, str]) -> pd.DataFrame:
    """Split each removal's per-value drops into discrimination lost and the default answer moved.

    Parameters
    ----------
    table : DataFrame
        :attr:`BiasRemovalReport.table` rows (one subset), columns ``value``, ``group``, ``drop`` and key columns
        among ``world``, ``model``, ``map``, ``seed``.
    pair : (a, b)
        The two values of the gap.

    Returns
    -------
    DataFrame
        One row per removal (key columns and ``group`` as the index): each value's drop, ``balanced_drop`` (mean
        of the values' drops: the drop of the balanced accuracy, what the removal does to telling the values apart)
        and ``shift`` = (drop(a) - drop(b)) / 2 (half the gap drop: how far the removal moves the default answer
        toward ``b``).
    """
    a, b = pair
    keys = [c for c in ("world", "model", "map", "seed") if c in table.columns] + ["group"]
    wide = table.pivot_table(index=keys, columns="value", values="drop")
    missing = [v for v in pair if v not in wide.columns]
    if missing:
        raise InputError(f"value(s) {missing} not in the table (values: {list(wide.columns)})")
    return wide.assign(balanced_drop=wide.mean(axis=1), shift=(wide[a] - wide[b]) / 2)


def categorised_map(kind_config: tuple[str, object], pairs: tuple[torch.Tensor, torch.Tensor],
                    rule: CategoryRule | str = DEFAULT_RULE) -> tuple[FeatureMap, Categories]:
    """A feature map trained on ``pairs`` (or reloaded from the artifact store) and its categories on them.

    Parameters
    ----------
    kind_config : (kind, config)
        An entry of :meth:`mmlib.profiles.Profile.feature_map_configs`, e.g. ``("sae", SAEConfig(...))``.
    pairs : (image (n, d), text (n, d))
        The training pairs; the MDS (paired form) is measured on them too.
    rule : the category rule (default μ±σ).

    Returns
    -------
    (feature_map, categories)
    """
    fmap = load_or_train_feature_map(*kind_config, pairs, progress=False).fmap
    return fmap, categorise(modality_dominance(*fmap.activations(pairs)), rule)


def margin_summary(table: pd.DataFrame, expected: Mapping[str, str], groups: Sequence[str] | None = None,
                   min_seeds: int = 2, confidence: float = 0.95) -> pd.DataFrame:
    """Per value, the margin of :func:`group_margins` across seeds: mean, Student-t interval and the empty seeds.

    Parameters
    ----------
    table : DataFrame
        :attr:`BiasRemovalReport.table` rows of one world, map and subset, with a ``seed`` column.
    expected, groups
        As in :func:`group_margins`.
    min_seeds : fewer seeds in the table is an error (:func:`mmlib.core.stats.across_seeds`).

    Returns
    -------
    DataFrame
        Indexed by value: ``expected`` (its group), ``n_seeds`` (seeds with a finite margin), ``mean``, ``std``,
        ``ci_low``, ``ci_high`` (NaN with fewer than 2 finite margins), ``n_nan`` (seeds where the expected group
        is empty) and ``finite`` (the finite margins, a list).
    """
    margins = group_margins(table, expected, groups=groups).rename(columns={"value": "attribute_value"})
    out = across_seeds(margins, "margin", by="attribute_value", min_seeds=min_seeds, confidence=confidence)
    out = out.drop(columns="value").set_index("attribute_value").rename_axis("value")
    by_value = margins.groupby("attribute_value").margin
    out["n_nan"] = by_value.apply(lambda x: int(x.isna().sum()))
    out["finite"] = by_value.apply(lambda x: [float(v) for v in x.dropna()])
    out.insert(0, "expected", [expected[v] for v in out.index])
    return out


def format_margin(summary: pd.DataFrame, value: str, interval: bool = True) -> str:
    """A value's margin over seeds as text (signed): ``"mean [low, high]"`` (or the mean alone without
    ``interval``), noting the seeds where the expected group is empty; ``"n/a (...; no interval)"`` with the
    single margin, if any, when fewer than 2 seeds have one.

    Parameters
    ----------
    summary : DataFrame
        :func:`margin_summary`.
    value : the attribute value (a row of ``summary``).
    """
    r = summary.loc[value]
    empty = f"{r.expected} empty in {r.n_nan} of {r.n_nan + len(r.finite)} seeds" if r.n_nan else ""
    if np.isfinite(r["mean"]):
        return (format_ci(r, signed=True) if interval else f"{r['mean']:+.3f}") + (f", {empty}" if empty else "")
    rest = f", margin {', '.join(f'{x:+.3f}' for x in r.finite)} in the other seed" if r.finite else ""
    return f"n/a ({empty}{rest}; no interval)"


def describe_margins(summary: pd.DataFrame, interval: bool = True, named: bool = False) -> str:
    """Every value's :func:`format_margin`: ``"female +0.1 [...], male ..."``, or with ``named``
    ``"female (expected ImgD) +0.1 [...]; male (expected TextD) ..."``.
    """
    if named:
        return "; ".join(f"{v} (expected {r.expected}) {format_margin(summary, v, interval)}"
                         for v, r in summary.iterrows())
    return ", ".join(f"{v} {format_margin(summary, v, interval)}" for v in summary.index)


def margins_support(summary: pd.DataFrame) -> bool:
    """Whether every value's margin interval lies above 0 (the expected group hurts each value most, beyond
    chance); False where a margin has no interval.
    """
    return bool((summary["ci_low"] > 0).all())


def margins_contradict(summary: pd.DataFrame) -> bool:
    """Whether some value's margin interval lies below 0 (another group hurts it more than the expected one)."""
    return bool((summary["ci_high"] < 0).any())
