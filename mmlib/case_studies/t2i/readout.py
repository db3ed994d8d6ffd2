"""Reading chapter 08's editing experiment: what the decoder reproduces, and what the edits do per reference.

The decoder's *fidelity* is read with the probes (:func:`mmlib.case_studies.t2i.image_probes.probe_table`): the
probes' accuracy on images generated from test embeddings, against the references' labels and against permuted
labels (the *shuffled* reading, the level of a decoder that ignores its conditioning). A factor is *reproduced*
when the lower Wilson bound of its fidelity lies above chance and above the upper bound of the shuffled reading
(:func:`reproduced_factors`).

The editing sweeps (:func:`mmlib.case_studies.t2i.editing.edit_sweep`, one per SAE seed) give one row per
(seed, reference, group, alpha). References are the unit: a reference's value of a group at a strength is its mean
over the seeds where the group exists (:class:`SweepReadout`), and intervals are percentile bootstraps over
references (:func:`mean_ci`).
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from mmlib.analysis.categories import CLASSES, Categories
from mmlib.case_studies.t2i.image_probes import IMAGE_FACTORS
from mmlib.core.errors import InputError
from mmlib.core.stats import finite_mean, format_ci, mean_bootstrap_ci
from mmlib.data.world import World
from mmlib.feature_maps.base import FeatureMapLike

__all__ = ["factor_values", "other_values", "value_labels", "accuracy_text", "fidelity_table",
           "reproduced_factors", "fidelity_text", "reproduced_text", "fidelity_paragraph", "SweepReadout", "mean_ci",
           "ci_table", "activation_mass", "scale_summary", "empty_classes", "empty_class_text"]

#: The columns of :func:`mmlib.case_studies.t2i.image_probes.probe_table` that :func:`fidelity_table` reads.
_PROBE_COLUMNS = ("factor", "accuracy", "ci_low", "ci_high", "chance")


def factor_values(world: World, idx: np.ndarray | Sequence[int],
                  factors: Sequence[str] = IMAGE_FACTORS) -> dict[str, np.ndarray]:
    """The planted values of ``factors`` at the world's indices ``idx``.

    Parameters
    ----------
    world : World
    idx : (n,) int
        Indices into the world (any split).
    factors : sequence of str
        Factor names (default: the factors drawn in every image).

    Returns
    -------
    dict
        factor -> ``(n,)`` int value indices.
    """
    idx = np.asarray(idx, dtype=int)
    return {f: np.asarray(world.latents.values[f])[idx] for f in factors}


def other_values(values: np.ndarray | Sequence[int], n_values: int, rng: np.random.Generator) -> np.ndarray:
    """For each value, another one drawn uniformly among the ``n_values - 1`` others.

    ``(v + U{1, ..., n_values - 1}) mod n_values``, one draw per entry from ``rng``.

    Parameters
    ----------
    values : (n,) int
        Value indices in ``[0, n_values)``.
    n_values : int
        Number of values of the factor (at least 2).
    rng : numpy Generator

    Returns
    -------
    (n,) int
        Value indices, none equal to the given one at the same position.
    """
    values = np.asarray(values, dtype=int)
    if n_values < 2:
        raise InputError(f"a factor needs at least 2 values to draw another one, got {n_values}")
    if values.size and (values.min() < 0 or values.max() >= n_values):
        raise InputError(f"values must lie in [0, {n_values}), got {values.min()}..{values.max()}")
    return (values + rng.integers(1, n_values, len(values))) % n_values


def value_labels(world: World, idx: np.ndarray | Sequence[int], template: str = "{colour} {shape}") -> list[str]:
    """One label per image: ``template`` filled with the names of the image's planted values.

    Parameters
    ----------
    world : World
    idx : (n,) int
        Indices into the world.
    template : str
        A format string whose fields are factor names, e.g. ``"{colour} {shape}, {size}"`` (a newline in it
        breaks the label).

    Returns
    -------
    list of str, length n
    """
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    return [template.format(**{f: world.factor(f).values[int(world.latents.values[f][i])] for f in fields})
            for i in np.asarray(idx, dtype=int)]


def accuracy_text(row: Mapping[str, float] | pd.Series, digits: int = 3) -> str:
    """``"accuracy [ci_low, ci_high]"`` of one row of a probe table."""
    return format_ci({"mean": row["accuracy"], "ci_low": row["ci_low"], "ci_high": row["ci_high"]}, digits=digits)


def _by_factor(table: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in _PROBE_COLUMNS if c not in table.columns]
    if missing:
        raise KeyError(f"a probe table has the columns {list(_PROBE_COLUMNS)}; missing {missing}")
    return table.set_index("factor")


def fidelity_table(real: pd.DataFrame, fidelity: pd.DataFrame, shuffled: pd.DataFrame) -> pd.DataFrame:
    """The probes on real images, on generated images (fidelity) and on generated images against permuted labels.

    Parameters
    ----------
    real, fidelity, shuffled : DataFrame
        Probe tables (one row per factor: ``factor``, ``accuracy``, ``ci_low``, ``ci_high``, ``chance``) over the
        same factors.

    Returns
    -------
    DataFrame
        One row per factor (``real``'s order): ``factor``, ``chance`` and ``"accuracy [ci_low, ci_high]"`` of each
        reading.
    """
    r, f, s = _by_factor(real), _by_factor(fidelity), _by_factor(shuffled)
    if set(r.index) != set(f.index) or set(r.index) != set(s.index):
        raise InputError(f"the probe tables read different factors: {list(r.index)}, {list(f.index)}, "
                         f"{list(s.index)}")
    return pd.DataFrame({"factor": r.index, "chance": r.chance.to_numpy(),
                         "probe on real test images": [accuracy_text(r.loc[x]) for x in r.index],
                         "probe on generated images (fidelity)": [accuracy_text(f.loc[x]) for x in r.index],
                         "shuffled": [accuracy_text(s.loc[x]) for x in r.index]})


def reproduced_factors(fidelity: pd.DataFrame, shuffled: pd.DataFrame) -> pd.Series:
    """Whether the decoder reproduces each factor of its conditioning.

    A factor is reproduced when the lower bound of its fidelity interval lies above chance and above the upper
    bound of the shuffled reading's interval (an undefined shuffled bound leaves chance as the threshold).

    Parameters
    ----------
    fidelity, shuffled : DataFrame
        Probe tables of the generated images against the references' labels and against permuted labels.

    Returns
    -------
    Series of bool
        Indexed by factor, in ``fidelity``'s order.
    """
    f, s = _by_factor(fidelity), _by_factor(shuffled)
    missing = [x for x in f.index if x not in s.index]
    if missing:
        raise InputError(f"no shuffled reading of {missing}")
    threshold = np.fmax(f.chance.to_numpy(dtype=float), s.ci_high.reindex(f.index).to_numpy(dtype=float))
    return pd.Series(f.ci_low.to_numpy(dtype=float) > threshold, index=f.index, name="reproduced")


def fidelity_text(fidelity: pd.DataFrame, shuffled: pd.DataFrame, factors: Sequence[str]) -> str:
    """``"<factor> <fidelity> vs <shuffled>; ..."`` (accuracies with their intervals) for ``factors``."""
    f, s = _by_factor(fidelity), _by_factor(shuffled)
    return "; ".join(f"{x} {accuracy_text(f.loc[x])} vs {accuracy_text(s.loc[x])}" for x in factors)


def reproduced_text(reproduced: pd.Series, edited: str) -> str:
    """What the decoder reproduces, in words (``reproduced``: :func:`reproduced_factors`).

    >>> reproduced_text(pd.Series({"colour": True, "size": False}), "colour")
    'it reproduces only colour, the factor the prompts change'
    >>> reproduced_text(pd.Series({"colour": False, "size": False}), "colour")
    'it reproduces no factor at all'
    """
    kept = [f for f, ok in reproduced.items() if ok]
    if kept == [edited]:
        return f"it reproduces only {edited}, the factor the prompts change"
    return f"it reproduces {' and '.join(kept) or 'no factor at all'}"


def fidelity_paragraph(real: pd.DataFrame, fidelity: pd.DataFrame, shuffled: pd.DataFrame, measured: Sequence[str],
                       floor: float, training_steps: int) -> str:
    """What the decoder reproduces, in Markdown: the chapter's reading of its fidelity table.

    Parameters
    ----------
    real, fidelity, shuffled : DataFrame
        Probe tables on real test images, on generated images, and on generated images against permuted labels.
    measured : sequence of str
        The factors whose preservation is read (reproduced and left alone by the prompts).
    floor : float
        A factor not reproduced is blamed on the decoder only where the probes read it on real images with a lower
        Wilson bound above ``floor``; below it, the probes' own ceiling is low and the reading cannot tell.
    training_steps : int
        The decoder's training budget, for the text.

    Returns
    -------
    str
    """
    rep = reproduced_factors(fidelity, shuffled)
    kept, lost = [f for f in rep.index if rep[f]], [f for f in rep.index if not rep[f]]
    r = _by_factor(real)
    weak = [f for f in lost if not r.ci_low[f] > floor]
    strong = [f for f in lost if f not in weak]
    text = f"With this run's models the decoder reproduces **{' and '.join(kept) or 'no factor'}**"
    text += (f" (fidelity vs shuffled: {fidelity_text(fidelity, shuffled, kept)}). " if kept else ". ")
    if lost:
        text += f"It does not reproduce {', '.join(lost)} ({fidelity_text(fidelity, shuffled, lost)}). "
    if strong:
        text += (f"The probes read {' and '.join(strong)} of real test images well, so the decoder loses them: it "
                 f"sees only CLIP's image embedding and, within its fixed training budget ({training_steps} steps), "
                 "does not recover them from it. ")
    if weak:
        text += (f"For {' and '.join(weak)} the probes are weak even on real test images ("
                 + ", ".join(f"{f} {r.accuracy[f]:.3f}" for f in weak)
                 + "), so the reading cannot tell the decoder's loss from the probes'. ")
    return text + (f"Preservation is read on {', '.join(measured)}." if measured else
                   "So no factor that the prompts leave alone is reproduced, and preservation cannot be measured.")


@dataclasses.dataclass(frozen=True, eq=False)
class SweepReadout:
    """The editing sweeps of all seeds, read with references as the unit.

    Attributes
    ----------
    edits : DataFrame
        The sweeps' tables (:attr:`~mmlib.case_studies.t2i.editing.EditResult.table`) of all seeds, concatenated:
        ``ref``, ``group``, ``alpha`` and the value columns (``control``, ``preserved``, ``shift``, ...).
    refs : (n_ref,) int
        The references (values of ``ref``), in the order the per-reference arrays follow.
    """

    edits: pd.DataFrame
    refs: np.ndarray

    def values(self, column: str, group: str, alpha: float) -> np.ndarray:
        """Per reference, the mean over seeds of ``column`` in ``(group, alpha)``.

        Returns
        -------
        (n_ref,) float
            NaN for a reference with no such row (the group is empty in every seed).
        """
        if column not in self.edits.columns:
            raise KeyError(f"no column {column!r} in the sweep (columns: {list(self.edits.columns)})")
        sub = self.edits[(self.edits.group == group) & np.isclose(self.edits.alpha, alpha)]
        return sub.groupby("ref")[column].mean().reindex(np.asarray(self.refs)).to_numpy(dtype=float)

    def gain(self, column: str, group: str, alpha: float = 1.0, base: float = 0.0) -> np.ndarray:
        """Per reference, ``values(column, group, alpha) - values(column, group, base)`` ``(n_ref,)``."""
        return self.values(column, group, alpha) - self.values(column, group, base)

    def curve(self, column: str, groups: Sequence[str], alphas: Sequence[float]) -> pd.DataFrame:
        """The mean over references of ``column`` per group and strength, with its bootstrap interval.

        Returns
        -------
        DataFrame
            ``group``, ``alpha``, ``mean``, ``ci_low``, ``ci_high``; one row per (group, alpha) with at least one
            finite value, groups then strengths in the order given.
        """
        rows = []
        for g in groups:
            for a in alphas:
                v = self.values(column, g, a)
                if np.isfinite(v).any():
                    rows.append(dict(group=g, alpha=a, **mean_ci(v)))
        return pd.DataFrame(rows, columns=["group", "alpha", "mean", "ci_low", "ci_high"])


def mean_ci(values: np.ndarray | Sequence[float], minus: np.ndarray | Sequence[float] | None = None,
            n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean over references of ``values - minus`` and its percentile bootstrap interval (NaNs dropped).

    Parameters
    ----------
    values : (n,) float
        One value per reference (NaN: no value).
    minus : (n,) float, optional
        Subtracted per reference (a paired difference).
    n_boot, seed : int
        Bootstrap draws and seed (:func:`mmlib.core.stats.mean_bootstrap_ci`).

    Returns
    -------
    dict
        ``mean``, ``ci_low``, ``ci_high`` (NaN where there are no finite values; the interval needs two).
    """
    d = np.asarray(values, dtype=float)
    if minus is not None:
        minus = np.asarray(minus, dtype=float)
        if minus.shape != d.shape:
            raise InputError(f"paired values need the same shape, got {d.shape} and {minus.shape}")
        d = d - minus
    low, high = mean_bootstrap_ci(d, n_boot=n_boot, seed=seed)
    return {"mean": finite_mean(d), "ci_low": low, "ci_high": high}


def ci_table(curves: Mapping[str, pd.DataFrame], digits: int = 3) -> pd.DataFrame:
    """Several curves (:meth:`SweepReadout.curve`) side by side as ``"mean [ci_low, ci_high]"`` text.

    Parameters
    ----------
    curves : mapping
        Column name -> a curve table (``group``, ``alpha``, ``mean``, ``ci_low``, ``ci_high``).

    Returns
    -------
    DataFrame
        Indexed by (group, alpha); one column per curve; ``"n/a"`` where a curve has no row.
    """
    cols = {}
    for name, t in curves.items():
        text = [format_ci(r, digits=digits) for _, r in t.iterrows()]
        cols[name] = pd.Series(text, index=pd.MultiIndex.from_frame(t[["group", "alpha"]]), dtype=object)
    return pd.concat(cols, axis=1).astype(object).fillna("n/a")


def activation_mass(feature_map: FeatureMapLike, categories: Categories, z_text: torch.Tensor,
                    z_image: torch.Tensor, classes: Sequence[str] = CLASSES) -> pd.DataFrame:
    """How the feature map's activation mass is split over the classes: of the prompts and of the references.

    Parameters
    ----------
    feature_map : FeatureMapLike
    categories : Categories
        The map's classes.
    z_text : (n, d)
        Text embeddings (encoded on the map's text side).
    z_image : (m, d)
        Image embeddings (encoded on the image side).
    classes : sequence of str

    Returns
    -------
    DataFrame
        ``group``, ``prompts``, ``references``: each class's share of the summed activations.
    """
    h_p, h_r = feature_map.encode(z_text, "text"), feature_map.encode(z_image, "image")
    rows = []
    for g in classes:
        m = torch.from_numpy(categories.mask(g))
        rows.append(dict(group=g, prompts=float(h_p[:, m].sum() / h_p.sum()),
                         references=float(h_r[:, m].sum() / h_r.sum())))
    return pd.DataFrame(rows, columns=["group", "prompts", "references"])


def scale_summary(scaled: pd.DataFrame) -> pd.DataFrame:
    """Control per group and scale of a scaling sweep, with references as the unit.

    Parameters
    ----------
    scaled : DataFrame
        :func:`~mmlib.case_studies.t2i.editing.scale_sweep` tables of all seeds: ``group``, ``scale``, ``ref``,
        ``control``, ``shift``.

    Returns
    -------
    DataFrame
        ``group``, ``scale``, ``control`` (mean over references of their mean over seeds), ``ci_low``, ``ci_high``
        (bootstrap over references), ``shift`` (mean over rows); sorted by group and scale.
    """
    rows = []
    for (g, sc), t in scaled.groupby(["group", "scale"]):
        v = t.groupby("ref").control.mean().to_numpy(dtype=float)
        low, high = mean_bootstrap_ci(v)
        rows.append(dict(group=g, scale=sc, control=v.mean(), ci_low=low, ci_high=high, shift=t["shift"].mean()))
    return pd.DataFrame(rows, columns=["group", "scale", "control", "ci_low", "ci_high", "shift"])


def empty_classes(categories: Mapping[int, Categories], classes: Sequence[str] = CLASSES) -> list[tuple[int, str]]:
    """``(seed, class)`` for every class with no feature, seeds in the mapping's order."""
    return [(s, g) for s, c in categories.items() for g in classes if not c.mask(g).any()]


def _seeds(seeds: Sequence[int]) -> str:
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return "seeds " + ", ".join(str(s) for s in seeds[:-1]) + f" and {seeds[-1]}"


def empty_class_text(empty: Sequence[tuple[int, str]], seeds: Sequence[int]) -> str:
    """One sentence per class that is empty in some seed: which seeds its edits (and their random control) use.

    Parameters
    ----------
    empty : sequence of (seed, class)
        :func:`empty_classes`.
    seeds : sequence of int
        Every seed.

    >>> empty_class_text([(0, "ImgD"), (1, "ImgD")], (0, 1, 2))
    'ImgD is empty for seeds 0 and 1: its edits and their random control come from seed 2 only.'
    >>> empty_class_text([], (0, 1))
    'No class is empty in any seed: every edit is averaged over all seeds.'
    """
    lines = []
    for g in dict.fromkeys(c for _, c in empty):
        gone = [s for s, c in empty if c == g]
        rest = [s for s in seeds if s not in gone]
        lines.append(f"{g} is empty for {_seeds(gone)}: its edits and their random control come from {_seeds(rest)} "
                     "only." if rest else f"{g} is empty for every seed: there is no {g} edit.")
    return " ".join(lines) or "No class is empty in any seed: every edit is averaged over all seeds."
