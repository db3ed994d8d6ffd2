"""Interpretability of features without an external judge: EmbSim, WinRate and ground-truth purity.

Definitions ([ours], Method page `method-interpretability`; the paper uses the top ``m = 20`` samples and gives no
formula):

* **top-m samples** of feature ``k`` on one side (images or captions): the ``m`` samples with the largest
  activation ``a[:, k]`` (:func:`top_samples`; streamed over chunks, ties broken by the order of ``torch.topk``).
  With ``require_active`` (the default) a feature with fewer than ``m`` firing samples (``> eps``) gets no
  score (NaN): its top-m would be padded with samples where it is silent.
* **EmbSim_k** = mean pairwise cosine similarity of the top-m samples' embeddings (images for the image side,
  captions for the text side, under a stated encoder): ``(|sum_i e_i|^2 - sum_i |e_i|^2) / (m (m - 1))`` over
  the L2-normalised embeddings ``e_i`` (:func:`embsim`).
* **WinRate (a)**, against random samples: each feature's EmbSim is compared with the EmbSim of every one of
  ``R`` random ``m``-sets (drawn without replacement, seeded); a win counts 1, a tie 1/2. WinRate (a) is the
  mean over features of the share of random sets beaten, i.e. the probability that a feature beats a fresh
  random set (:func:`winrate_vs_random`).
* **WinRate (b)**, map A against map B (:func:`winrate_between`): ``pairing="all"`` (default) compares every
  feature of A with every feature of B (the Mann–Whitney probability ``P(EmbSim_A > EmbSim_B)``, ties 1/2);
  ``pairing="rank"`` sorts both maps' scores and compares the i-th best of A with the i-th best of B (over the
  shorter list).
* **purity** (the embedded world only): share of the top-m samples that carry the most common value of a
  factor (:func:`purity`, :func:`best_purity`).

Intervals are seeded percentile bootstraps over features (:mod:`mmlib.core.stats`); across training seeds use
:func:`mmlib.core.stats.across_seeds`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mmlib.analysis.categories import CLASSES, Categories
from mmlib.core.errors import InputError
from mmlib.core.stats import mean_bootstrap_ci
from mmlib.core.validation import check_finite

ArrayLike = torch.Tensor | np.ndarray
M_GRID: tuple[int, ...] = (5, 10, 20, 30, 50)


@dataclasses.dataclass(frozen=True, eq=False)
class TopSamples:
    """The top-m samples of every feature on one side.

    Attributes
    ----------
    indices : (K, m) int64 tensor
        Sample indices, most activating first.
    values : (K, m) tensor
        Their activations.
    n_active : (K,) int64 tensor
        Samples where the feature fires (``> eps``), over all samples.
    eps : float
    """

    indices: torch.Tensor
    values: torch.Tensor
    n_active: torch.Tensor
    eps: float

    @property
    def m(self) -> int:
        """The number of top samples kept per feature."""
        return self.indices.shape[1]

    @property
    def complete(self) -> torch.Tensor:
        """``(K,)`` bool: the feature fires on at least ``m`` samples."""
        return self.n_active >= self.m

    def first(self, m: int) -> TopSamples:
        """The top ``m <= self.m`` samples."""
        if not 1 <= m <= self.m:
            raise InputError(f"m must lie in [1, {self.m}], got {m}")
        return TopSamples(self.indices[:, :m], self.values[:, :m], self.n_active, self.eps)


def top_samples(activations: ArrayLike | Iterable[ArrayLike], m: int = 20, eps: float = 0.0) -> TopSamples:
    """Top-``m`` samples per feature from activations ``(n, K)`` or an iterable of chunks ``(b, K)`` in order.

    Memory is ``O(m K)`` plus one chunk.
    """
    if m < 2:
        raise InputError(f"m must be at least 2 (EmbSim needs pairs), got {m}")
    chunks = [activations] if isinstance(activations, (torch.Tensor, np.ndarray)) else activations
    best_v = best_i = n_active = None
    offset = 0
    for i, chunk in enumerate(chunks):
        a = torch.as_tensor(chunk)
        where = "activations" if isinstance(activations, (torch.Tensor, np.ndarray)) else f"activations (chunk {i})"
        if a.ndim != 2:
            raise InputError(f"expected {where} of shape (n, K), got {tuple(a.shape)}")
        if best_v is not None and a.shape[1] != best_v.shape[1]:
            raise InputError(f"{where} has {a.shape[1]} features but the earlier chunks {best_v.shape[1]}")
        check_finite(a, where)
        if len(a) == 0:
            continue
        v, i = a.topk(min(m, len(a)), dim=0)                     # (m', K)
        i = i + offset
        if best_v is None:
            best_v, best_i, n_active = v, i, (a > eps).sum(0)
        else:
            v, j = torch.cat([best_v, v]).topk(min(m, len(best_v) + len(v)), dim=0)
            best_i = torch.cat([best_i, i]).gather(0, j)
            best_v = v
            n_active = n_active + (a > eps).sum(0)
        offset += len(a)
    if best_v is None:
        raise InputError("no samples given")
    if offset < m:
        raise InputError(f"only {offset} samples: cannot take the top {m}")
    return TopSamples(best_i.T.contiguous(), best_v.T.contiguous(), n_active, float(eps))


def embsim(embeddings: ArrayLike, top: TopSamples | ArrayLike, require_active: bool = True,
           block: int = 1024) -> np.ndarray:
    """EmbSim ``(K,)``: mean pairwise cosine similarity of each feature's top-m samples' embeddings ``(n, d)``.

    Parameters
    ----------
    top : TopSamples, or indices ``(K, m)``
    require_active : NaN for features that fire on fewer than ``m`` samples (only with a TopSamples).
    """
    idx = top.indices if isinstance(top, TopSamples) else torch.as_tensor(top, dtype=torch.int64)
    if not isinstance(embeddings, (torch.Tensor, np.ndarray)):
        embeddings = np.asarray(embeddings)
    if idx.ndim != 2 or idx.shape[1] < 2:
        raise InputError(f"need indices (K, m) with m >= 2, got {tuple(idx.shape)}")
    if len(idx) and (idx.min() < 0 or idx.max() >= len(embeddings)):
        raise InputError(f"sample indices out of range for {len(embeddings)} embeddings")
    k, m = idx.shape
    out = np.empty(k)
    for start in range(0, k, block):
        rows = idx[start:start + block]
        flat = rows.reshape(-1)                                  # only the needed rows are read and normalised
        g = embeddings[flat] if isinstance(embeddings, torch.Tensor) else embeddings[flat.numpy()]
        _check_rows(g, flat, "embeddings")
        g = F.normalize(torch.as_tensor(g, dtype=torch.float64), dim=-1).reshape(len(rows), m, -1)  # (b, m, d)
        total = g.sum(1).pow(2).sum(-1)
        own = g.pow(2).sum((1, 2))
        out[start:start + block] = ((total - own) / (m * (m - 1))).numpy()
    if require_active and isinstance(top, TopSamples):
        out[~top.complete.numpy()] = np.nan
    return out


def random_embsim(embeddings: ArrayLike, m: int, n_draws: int = 1000, seed: int = 0) -> np.ndarray:
    """EmbSim ``(n_draws,)`` of random ``m``-sets of samples (each drawn without replacement, seeded)."""
    n = len(embeddings)
    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 1:
        raise InputError(f"n_draws must be a positive integer, got {n_draws!r}")
    if not 2 <= m <= n:
        raise InputError(f"need 2 <= m <= n = {n}, got m = {m}")
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(n, size=m, replace=False) for _ in range(n_draws)])
    return embsim(embeddings, idx)


@dataclasses.dataclass(frozen=True)
class WinRate:
    """A win rate with its bootstrap interval.

    Attributes
    ----------
    value : float
    ci_low, ci_high : float
    n : int
        Features scored (``vs_random``), features of A (``all``) or compared pairs (``rank``).
    kind : {"vs_random", "all", "rank"}
    """

    value: float
    ci_low: float
    ci_high: float
    n: int
    kind: str


def win_probability(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per score, the share of ``reference`` values it beats (ties 1/2): ``(len(scores),)``."""
    ref = np.sort(np.asarray(check_finite(np.asarray(reference, dtype=float), "reference"), dtype=float))
    if len(ref) == 0:
        raise InputError("empty reference: pass at least one reference value")
    scores = np.asarray(check_finite(np.asarray(scores, dtype=float), "scores"), dtype=float)
    below = np.searchsorted(ref, scores, side="left")
    not_above = np.searchsorted(ref, scores, side="right")
    return (below + not_above) / (2 * len(ref))


def winrate_vs_random(feature_embsim: np.ndarray, random: np.ndarray, n_boot: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> WinRate:
    """WinRate (a): mean over features (NaN dropped) of the share of random ``m``-sets whose EmbSim they beat."""
    scores = _finite(feature_embsim, "feature_embsim")
    wins = win_probability(scores, _finite(random, "random"))
    low, high = mean_bootstrap_ci(wins, n_boot, seed, confidence)
    return WinRate(float(wins.mean()), low, high, len(wins), "vs_random")


def winrate_between(embsim_a: np.ndarray, embsim_b: np.ndarray, pairing: str = "all", n_boot: int = 1000,
                    seed: int = 0, confidence: float = 0.95) -> WinRate:
    """WinRate (b): how often map A's features beat map B's in EmbSim (NaN dropped; ties 1/2).

    ``pairing="all"``: over all (A feature, B feature) pairs, with a two-sample bootstrap (features of A and B
    resampled independently). ``pairing="rank"``: the i-th best of A against the i-th best of B, bootstrap
    over the compared pairs.
    """
    a, b = _finite(embsim_a, "embsim_a"), _finite(embsim_b, "embsim_b")
    if pairing == "rank":
        n = min(len(a), len(b))
        outcome = np.sign(np.sort(a)[::-1][:n] - np.sort(b)[::-1][:n]) / 2 + 0.5
        low, high = mean_bootstrap_ci(outcome, n_boot, seed, confidence)
        return WinRate(float(outcome.mean()), low, high, n, "rank")
    if pairing != "all":
        raise InputError(f"unknown pairing {pairing!r}; choose 'all' or 'rank'")
    value = float(win_probability(a, b).mean())
    rng = np.random.default_rng(seed)
    boots = np.array([win_probability(rng.choice(a, len(a)), rng.choice(b, len(b))).mean() for _ in range(n_boot)])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(boots, [tail, 100 - tail]) if len(a) > 1 and len(b) > 1 else (np.nan, np.nan)
    return WinRate(value, float(low), float(high), len(a), "all")


def purity(top: TopSamples | ArrayLike, labels: ArrayLike, require_active: bool = True) -> np.ndarray:
    """Purity ``(K,)``: share of each feature's top-m samples that carry their most common label ``(n,)``."""
    idx = (top.indices if isinstance(top, TopSamples) else torch.as_tensor(top)).numpy()
    labels = np.asarray(labels)
    got = labels[idx]                                              # (K, m)
    out = np.max([(got == v).sum(1) for v in np.unique(got)], axis=0) / idx.shape[1]
    out = out.astype(float)
    if require_active and isinstance(top, TopSamples):
        out[~top.complete.numpy()] = np.nan
    return out


def best_purity(top: TopSamples | ArrayLike, labels: Mapping[str, ArrayLike],
                require_active: bool = True) -> pd.DataFrame:
    """Per feature, the factor whose values its top-m samples are purest in.

    Parameters
    ----------
    labels : factor name -> value per sample ``(n,)`` (e.g. ``{f: split.values(f) for f in names}``)

    Returns
    -------
    DataFrame: ``feature``, ``factor``, ``purity``, ``chance`` (the factor's most common value share over all
    samples, the purity floor of an uninformative top-m).
    """
    if not labels:
        raise InputError("no labels given")
    names = list(labels)
    table = np.stack([purity(top, labels[f], require_active) for f in names], 1)   # (K, F)
    filled = np.where(np.isnan(table), -np.inf, table)
    best = filled.argmax(1)
    chance = np.array([np.unique(np.asarray(labels[f]), return_counts=True)[1].max() / len(labels[f])
                       for f in names])
    value = table[np.arange(len(best)), best]
    return pd.DataFrame({"feature": np.arange(len(best)),
                         "factor": np.where(np.isnan(value), "", np.asarray(names, dtype=object)[best]),
                         "purity": value, "chance": np.where(np.isnan(value), np.nan, chance[best])})


def m_sweep(activations: ArrayLike, embeddings: ArrayLike, ms: Sequence[int] = M_GRID, *,
            labels: Mapping[str, ArrayLike] | None = None, n_random: int = 1000, n_boot: int = 1000,
            seed: int = 0, eps: float = 0.0, confidence: float = 0.95) -> pd.DataFrame:
    """EmbSim, WinRate (a) and (optionally) purity of one map on one side, for each ``m``.

    Parameters
    ----------
    activations : (n, K) activations on one side (image activations with image embeddings, or text with text)
    embeddings : (n, d) the embeddings of the same samples under the stated encoder
    labels : optional factor name -> values ``(n,)``, for the best-factor purity

    Returns
    -------
    DataFrame, one row per ``m``: ``m``, ``n_scored`` (features with at least ``m`` firing samples),
    ``embsim`` (mean over scored features) with ``embsim_ci_low/high``, ``random_embsim`` (mean over random
    sets), ``winrate`` with ``winrate_ci_low/high``, and with labels ``purity`` with ``purity_ci_low/high``
    and ``purity_chance``.
    """
    if len(activations) != len(embeddings):
        raise InputError(f"{len(activations)} activation rows but {len(embeddings)} embeddings; pass activations "
                         "and embeddings of the same samples")
    check_finite(activations, "activations")
    check_finite(embeddings, "embeddings")
    ms = sorted(set(int(m) for m in ms))
    top_all = top_samples(activations, max(ms), eps)
    rows = []
    for m in ms:
        top = top_all.first(m)
        sims = embsim(embeddings, top)
        row: dict[str, float] = dict(m=m, n_scored=int(np.isfinite(sims).sum()))
        finite = sims[np.isfinite(sims)]
        row["embsim"] = float(finite.mean()) if len(finite) else np.nan
        row["embsim_ci_low"], row["embsim_ci_high"] = mean_bootstrap_ci(finite, n_boot, seed, confidence)
        rand = random_embsim(embeddings, m, n_random, seed)
        row["random_embsim"] = float(rand.mean())
        if len(finite):
            w = winrate_vs_random(finite, rand, n_boot, seed, confidence)
            row.update(winrate=w.value, winrate_ci_low=w.ci_low, winrate_ci_high=w.ci_high)
        else:
            row.update(winrate=np.nan, winrate_ci_low=np.nan, winrate_ci_high=np.nan)
        if labels is not None:
            pur = best_purity(top, labels)
            p = pur["purity"].to_numpy(dtype=float)
            row["purity"] = float(np.nanmean(p)) if np.isfinite(p).any() else np.nan
            row["purity_ci_low"], row["purity_ci_high"] = mean_bootstrap_ci(p, n_boot, seed, confidence)
            row["purity_chance"] = float(np.nanmean(pur["chance"])) if np.isfinite(p).any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def class_interpretability(sims: np.ndarray, purities: np.ndarray, categories: Categories,
                           random: np.ndarray, n_boot: int = 200, seed: int = 0,
                           min_features: int = 2) -> pd.DataFrame:
    """EmbSim, WinRate (a) and purity of one map on one side, per class.

    Parameters
    ----------
    sims : (K,) EmbSim of the features (NaN: not scored, :func:`embsim`)
    purities : (K,) best-factor purity of their top-m samples (:func:`best_purity`)
    categories : the features' classes ``(K,)``
    random : EmbSim of random m-sets (:func:`random_embsim`), the reference of WinRate (a)
    n_boot, seed : bootstrap of WinRate (a)
    min_features : a class with fewer scored features gets no scores (NaN)

    Returns
    -------
    DataFrame, one row per class: ``category``, ``n_scored`` and, with enough scored features, ``embsim``
    (mean), ``winrate`` (WinRate (a)) and ``purity`` (mean over the scored features).
    """
    sims, purities = np.asarray(sims, dtype=float), np.asarray(purities, dtype=float)
    _check_no_inf(sims, "sims")          # NaN: a feature not scored (documented); an infinity is never an EmbSim
    _check_no_inf(purities, "purities")
    if not len(sims) == len(purities) == len(categories.labels):
        raise InputError(f"{len(sims)} EmbSim values, {len(purities)} purities and {len(categories.labels)} "
                         "categorised features")
    rows = []
    for c in CLASSES:
        keep = categories.mask(c) & np.isfinite(sims)
        row: dict[str, object] = dict(category=c, n_scored=int(keep.sum()), embsim=np.nan, winrate=np.nan,
                                      purity=np.nan)
        if keep.sum() >= min_features:
            row.update(embsim=float(np.mean(sims[keep])),
                       winrate=winrate_vs_random(sims[keep], random, n_boot=n_boot, seed=seed).value,
                       purity=float(np.nanmean(purities[keep])))
        rows.append(row)
    return pd.DataFrame(rows)


def _finite(x: np.ndarray, what: str) -> np.ndarray:
    """The non-NaN values of ``x`` (NaN: a feature not scored, dropped); an infinity raises NonFiniteError."""
    x = np.asarray(x, dtype=float).ravel()
    _check_no_inf(x, what)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        raise InputError(f"no finite {what} to compare (all {x.size} are NaN or none given)")
    return x


def _check_no_inf(x: np.ndarray, name: str) -> None:
    """NonFiniteError naming ``name`` if ``x`` holds an infinity (NaN, a feature not scored, passes)."""
    x = np.asarray(x, dtype=float)
    check_finite(np.where(np.isnan(x), 0.0, x), name, hint="EmbSim values are cosines; NaN marks an unscored feature")


def _check_rows(g: ArrayLike, rows: torch.Tensor, name: str) -> None:
    """NonFiniteError naming the first non-finite embedding row among the gathered ``g`` ``(len(rows), d)``."""
    g = torch.as_tensor(g)
    if not g.is_floating_point():
        return
    bad = ~torch.isfinite(g)
    if bool(bad.any()):
        r, c = (int(i) for i in bad.nonzero()[0])
        check_finite(torch.as_tensor(g)[r:r + 1], f"{name} (row {int(rows[r])})",
                     hint=f"column {c} of that row is not finite; remove or impute the bad rows first")
