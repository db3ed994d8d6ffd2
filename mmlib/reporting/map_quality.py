"""Chapter 02's comparison of the feature maps, one table per question: does the SAE recover a planted dictionary,
how faithful, sparse and alive is each map, where does the SAE sit on the sparsity-reconstruction frontier, how much
of CLIP's downstream accuracy survives the map, and how pure are the features against the world's ground truth.

Every function computes one of the chapter's tables from feature maps already trained (or trains them through
the artifact store: :func:`planted_recovery`, :func:`sae_sweep`), so that the notebook reads as the method. The
diagnostics themselves are :mod:`mmlib.feature_maps.diagnostics`; intervals across training seeds are
:func:`mmlib.core.stats.across_seeds`, shown by :func:`ci_cells`.

``maps`` below is always ``{seed: {map name: TrainedFeatureMap}}``, as built by one
:func:`mmlib.pipeline.trained_maps` call per seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from mmlib.analysis.embsim import best_purity
from mmlib.data.embeddings import Embeddings
from mmlib.data.planted import ATOM_CLASSES, PlantedData, atom_recovery
from mmlib.data.world import World, WorldSplit
from mmlib.feature_maps.base import FeatureMap
from mmlib.feature_maps.diagnostics import (
    downstream_retention,
    effective_rank,
    fvu,
    l0,
    reconstruction_report,
    top_m_purity,
)
from mmlib.feature_maps.sae import SAEConfig
from mmlib.feature_maps.store import TrainedFeatureMap, load_or_train_feature_map
from mmlib.models.clip import ModelBundle
from mmlib.models.prompts import class_prompt_sets, encode_texts, prompt_context
from mmlib.profiles import Profile

__all__ = ["Variant", "MapsBySeed", "ci_cells", "value_range", "sae_variants", "planted_recovery", "recovery_window",
           "map_diagnostics", "sae_sweep", "retrieval_in_galleries", "zero_shot_prompts", "retention_table",
           "purity_table", "random_purity", "purity_summary", "profile_row"]

#: One SAE setting of a sweep: ``(kind, label, config)``, e.g. ``("relu_l1", "λ=0.3", SAEConfig(...))``.
Variant = tuple[str, str, SAEConfig]
#: The trained maps of a chapter: seed -> map name (``"raw"``, ``"SAE"``, ``"NCL"``) -> trained map.
MapsBySeed = Mapping[int, Mapping[str, TrainedFeatureMap]]


def ci_cells(table: pd.DataFrame, value: str = "mean", digits: int = 3) -> pd.Series:
    """One display string per row of an across-seeds table: ``"mean [low, high]"``.

    A row without a finite ``value`` reads ``"-"`` (e.g. the reconstruction error of a map without a decoder); a
    row whose interval is undefined or narrower than the last shown digit reads as its value alone (raw dimensions
    do not depend on the seed).

    Parameters
    ----------
    table : DataFrame
        Rows of :func:`mmlib.core.stats.across_seeds` (columns ``value``, ``ci_low``, ``ci_high``).
    value : str
        The column shown.
    digits : int
        Decimals.

    Returns
    -------
    Series of str, same index as ``table``.
    """
    def one(r: pd.Series) -> str:
        if not np.isfinite(r[value]):
            return "-"
        if not np.isfinite(r["ci_low"]) or r["ci_high"] - r["ci_low"] < 10 ** -digits:
            return f"{r[value]:.{digits}f}"
        return f"{r[value]:.{digits}f} [{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]"

    if table.empty:
        return pd.Series([], index=table.index, dtype=object)
    return table.apply(one, axis=1)


def value_range(values: Sequence[float] | pd.Series | np.ndarray, fmt: str = ".3f") -> str:
    """``"low to high"`` of the finite values, each formatted with ``fmt`` (one value when both ends read the same;
    ``"n/a"`` when none is finite): how the prose quotes a quantity that varies over seeds or modalities.

    Parameters
    ----------
    values : sequence of float ``(n,)``
    fmt : str
        A format spec, e.g. ``".3f"``.

    Returns
    -------
    str
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if not len(x):
        return "n/a"
    low, high = format(float(x.min()), fmt), format(float(x.max()), fmt)
    return low if low == high else f"{low} to {high}"


def sae_variants(base: SAEConfig, l1_coefs: Sequence[float] = (), topk: Sequence[int] = (),
                 seeds: Sequence[int] = ()) -> list[Variant]:
    """The settings of an SAE sweep around ``base``: the L1 strengths, then TopK SAEs, then other seeds of ``base``.

    Parameters
    ----------
    base : SAEConfig
        The reference setting (a ReLU + L1 SAE).
    l1_coefs : floats
        ``λ`` values: kind ``"relu_l1"``, label ``"λ=<c>"``.
    topk : ints
        ``k`` values: kind ``"topk"``, label ``"k=<k>"`` (``base`` with ``kind="topk"``).
    seeds : ints
        Training seeds of ``base`` (``base.seed`` itself is skipped): kind ``"relu_l1 (seed)"``, label
        ``"λ=<base λ>, seed <s>"``.

    Returns
    -------
    list of (kind, label, SAEConfig)
    """
    return ([("relu_l1", f"λ={c:g}", dataclasses.replace(base, l1_coef=c)) for c in l1_coefs]
            + [("topk", f"k={k}", dataclasses.replace(base, kind="topk", k=k)) for k in topk]
            + [("relu_l1 (seed)", f"λ={base.l1_coef:g}, seed {s}", dataclasses.replace(base, seed=s))
               for s in seeds if s != base.seed])


def planted_recovery(planted: PlantedData, variants: Sequence[Variant], threshold: float = 0.9,
                     progress: bool = False) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Train (or reload) an SAE per setting on planted pairs, and score how many planted atoms it recovers.

    An atom counts as recovered when some decoder direction has cosine ``>= threshold`` with it (best match,
    :func:`mmlib.data.planted.atom_recovery`).

    Parameters
    ----------
    planted : PlantedData
        ``n`` pairs generated from ``A`` unit atoms (:func:`mmlib.data.planted.generate_planted`).
    variants : list of (kind, label, SAEConfig)
        :func:`sae_variants`.
    threshold : float
        Cosine from which an atom counts as recovered.
    progress : bool
        Training progress bars.

    Returns
    -------
    (DataFrame, dict)
        One row per setting: ``kind``, ``setting`` (the label), ``seed``, ``l0_image`` and ``l0_text`` (active
        latents per embedding), ``fvu`` (both modalities together), ``recovered`` (share of the ``A`` atoms),
        ``seconds`` (training time when computed) and ``recovered_<class>`` per planted class
        (:data:`mmlib.data.planted.ATOM_CLASSES`); and label -> best-match cosine of every atom ``(A,)``.
    """
    emb = planted.as_embeddings()
    rows, cosines = [], {}
    for kind, label, cfg in variants:
        t = load_or_train_feature_map("sae", cfg, emb, progress=progress)
        rec = atom_recovery(t.fmap.dictionary, planted.dictionary).numpy()
        cosines[label] = rec
        z_hat = {m: t.fmap.reconstruct(getattr(planted, m), m) for m in ("image", "text")}
        row = dict(kind=kind, setting=label, seed=cfg.seed,
                   l0_image=l0(t.fmap.encode(planted.image, "image")), l0_text=l0(t.fmap.encode(planted.text, "text")),
                   fvu=fvu(torch.cat([planted.image, planted.text]), torch.cat([z_hat["image"], z_hat["text"]])),
                   recovered=float(np.mean(rec >= threshold)), seconds=t.seconds)
        row.update({f"recovered_{c}": float(np.mean(rec[planted.atom_class == c] >= threshold)) for c in ATOM_CLASSES})
        rows.append(row)
    return pd.DataFrame(rows), cosines


def recovery_window(table: pd.DataFrame, share: float = 1.0) -> pd.DataFrame:
    """The settings of a planted sweep that recover at least ``share`` of the atoms, and their L0.

    Parameters
    ----------
    table : DataFrame
        :func:`planted_recovery`'s table.
    share : float
        The recovery that counts as complete.

    Returns
    -------
    DataFrame
        The rows with ``recovered >= share`` (columns ``kind``, ``setting``, ``recovered``, ``l0``: the mean L0
        of the two modalities), in the table's order.
    """
    rows = table[table.recovered >= share]
    return rows.assign(l0=(rows.l0_image + rows.l0_text) / 2)[["kind", "setting", "recovered", "l0"]]


def map_diagnostics(maps: MapsBySeed, test: Embeddings) -> pd.DataFrame:
    """Reconstruction, sparsity, liveness and effective rank of every map and seed on held-out pairs.

    Parameters
    ----------
    maps : {seed: {map name: TrainedFeatureMap}}
    test : Embeddings
        The evaluation pairs, ``(n, d)`` per modality.

    Returns
    -------
    DataFrame
        Per seed, map and modality, the columns of :func:`mmlib.feature_maps.diagnostics.reconstruction_report`
        (``mse``, ``fvu``, ``cosine`` for maps with a decoder; ``l0``, ``dead``, ``dead_both``) plus ``eff_rank``
        (centred effective rank of the activations ``(n, K)``), ``map``, ``seed`` and ``K``; and per seed the rows
        ``map = "CLIP embeddings"`` with the effective rank of the embeddings themselves (``K = d``).
    """
    rows = []
    for seed, fm in maps.items():
        for name, t in fm.items():
            report = reconstruction_report(t.fmap, test.image, test.text)
            h_image, h_text = t.fmap.activations(test)
            report["eff_rank"] = [effective_rank(h_image, center=True), effective_rank(h_text, center=True)]
            rows.append(report.assign(map=name, seed=seed, K=t.fmap.n_features))
        rows.append(pd.DataFrame([dict(map="CLIP embeddings", seed=seed, modality=m, K=test.dim, n=len(z),
                                       eff_rank=effective_rank(z, center=True))
                                  for m, z in (("image", test.image), ("text", test.text))]))
    return pd.concat(rows, ignore_index=True)


def sae_sweep(variants: Sequence[Variant], train: Embeddings, test: Embeddings, device: str = "cpu",
              progress: bool = False) -> pd.DataFrame:
    """Train (or reload) an SAE per setting on ``train`` and report its sparsity and fidelity on ``test``.

    Parameters
    ----------
    variants : list of (kind, label, SAEConfig)
        :func:`sae_variants`.
    train, test : Embeddings
        Training and evaluation pairs.
    device : str
        Where to train (part of the artifact key).
    progress : bool
        Training progress bars.

    Returns
    -------
    DataFrame
        One row per setting: ``kind``, ``setting``, ``l0`` and ``fvu`` (means of the two modalities),
        ``fvu_image``, ``fvu_text``, ``cosine`` (mean), ``dead_both`` and ``train_seconds``.
    """
    rows = []
    for kind, label, cfg in variants:
        t = load_or_train_feature_map("sae", cfg, train, progress=progress, device=device)
        rep = reconstruction_report(t.fmap, test.image, test.text)
        rows.append(dict(kind=kind, setting=label, l0=rep.l0.mean(), fvu=rep.fvu.mean(), fvu_image=rep.fvu.iloc[0],
                         fvu_text=rep.fvu.iloc[1], cosine=rep.cosine.mean(), dead_both=rep.dead_both.iloc[0],
                         train_seconds=t.seconds))
    return pd.DataFrame(rows)


def retrieval_in_galleries(fmap: FeatureMap, image: torch.Tensor, text: torch.Tensor, size: int) -> pd.DataFrame:
    """The retrieval rows of :func:`~mmlib.feature_maps.diagnostics.downstream_retention`, averaged over
    disjoint galleries of ``size`` consecutive pairs.

    Parameters
    ----------
    fmap : FeatureMap
    image, text : (n, d) tensors
        Paired embeddings; the last gallery is shorter when ``size`` does not divide ``n``.
    size : int
        Pairs per gallery.

    Returns
    -------
    DataFrame
        One row per metric (``i2t@k``, ``t2i@k``): ``metric``, ``original`` and ``mapped`` (mean recall over the
        galleries) and ``retention`` (``mapped / original``).
    """
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    parts = [downstream_retention(fmap, image[i:i + size], text[i:i + size]) for i in range(0, len(image), size)]
    table = pd.concat(parts).groupby("metric", sort=False)[["original", "mapped"]].mean().reset_index()
    return table.assign(retention=table.mapped / table.original)


def zero_shot_prompts(bundle: ModelBundle, world: World, factors: Sequence[str]) -> dict[str, torch.Tensor]:
    """The joint class prompts of each factor, embedded by the model and left unnormalised.

    Parameters
    ----------
    bundle : ModelBundle
        The model whose text tower embeds the prompts.
    world : World
        Where the factors and their prompt context come from (:func:`mmlib.models.prompts.prompt_context`).
    factors : names

    Returns
    -------
    dict
        factor -> ``(k, p, d)`` text embeddings: ``k`` classes, ``p`` prompts per class (the class named with each
        value of its context, e.g. "a photo of a red circle").
    """
    prompts = {}
    for name in factors:
        f = world.factor(name)
        sets = class_prompt_sets(f, prompt_context(world.factors, f))
        prompts[name] = encode_texts(bundle, [t for s in sets for t in s]).reshape(len(sets), len(sets[0]), -1)
    return prompts


def retention_table(maps: MapsBySeed, test: Embeddings, split: WorldSplit, prompts: Mapping[str, torch.Tensor],
                    gallery: int) -> pd.DataFrame:
    """Downstream retention of every map and seed: retrieval in galleries, and zero-shot accuracy per factor.

    Parameters
    ----------
    maps : {seed: {map name: TrainedFeatureMap}}
    test : Embeddings
        Embeddings of ``split``, ``(n, d)`` per modality.
    split : WorldSplit
        The pairs' ground truth.
    prompts : dict
        factor -> ``(k, p, d)`` class prompts (:func:`zero_shot_prompts`); each factor is scored on the images
        that depict it.
    gallery : int
        Retrieval gallery size (:func:`retrieval_in_galleries`).

    Returns
    -------
    DataFrame
        Rows ``metric`` (``i2t@1``, ``i2t@5``, ``t2i@1``, ``t2i@5``, ``zero-shot <factor>``) per ``map`` and
        ``seed``, with ``original`` (CLIP's embeddings), ``mapped`` and ``retention``.
    """
    rows = []
    for seed, fm in maps.items():
        for name, t in fm.items():
            rows.append(retrieval_in_galleries(t.fmap, test.image, test.text, gallery).assign(map=name, seed=seed))
            for factor, classes in prompts.items():
                shown = torch.from_numpy(split.depicted(factor))
                zs = downstream_retention(t.fmap, test.image[shown], test.text[shown], classes,
                                          split.values(factor)[shown.numpy()])
                rows.append(zs[zs.metric == "zero_shot"].assign(metric=f"zero-shot {factor}", map=name, seed=seed))
    return pd.concat(rows, ignore_index=True)


def purity_table(maps: MapsBySeed, test: Embeddings, labels: Mapping[str, np.ndarray], m: int) -> pd.DataFrame:
    """Top-``m`` purity of every feature of every map and seed, on each side of the held-out pairs.

    Parameters
    ----------
    maps : {seed: {map name: TrainedFeatureMap}}
    test : Embeddings
    labels : dict
        factor -> ground-truth value of each pair ``(n,)``.
    m : int
        Top samples per feature.

    Returns
    -------
    DataFrame
        :func:`mmlib.feature_maps.diagnostics.top_m_purity` rows (``feature``, ``factor``, ``purity``, ``chance``;
        NaN purity for a feature active on fewer than ``m`` samples) with ``map``, ``seed`` and ``side``.
    """
    rows = []
    for seed, fm in maps.items():
        for name, t in fm.items():
            h_image, h_text = t.fmap.activations(test)
            for side, h in (("image", h_image), ("text", h_text)):
                rows.append(top_m_purity(h, labels, m).assign(map=name, seed=seed, side=side))
    return pd.concat(rows, ignore_index=True)


def random_purity(labels: Mapping[str, np.ndarray], m: int, n_draws: int = 2000, seed: int = 0) -> np.ndarray:
    """Best-factor purity of random sets of ``m`` samples: what a feature that means nothing scores.

    Parameters
    ----------
    labels : dict
        factor -> value of each of ``n`` samples ``(n,)``.
    m : int
        Samples per set (drawn without replacement).
    n_draws : int
        Random sets.
    seed : int

    Returns
    -------
    ndarray ``(n_draws,)``
    """
    n = len(next(iter(labels.values())))
    rng = np.random.default_rng(seed)
    return best_purity(np.stack([rng.choice(n, m, replace=False) for _ in range(n_draws)]), labels).purity.to_numpy()


def purity_summary(purity: pd.DataFrame, random_q95: float, pure: float = 0.9) -> pd.DataFrame:
    """Per map, side and seed: the share of features scored, their mean purity, and the shares above the random
    95th percentile and above ``pure``.

    Parameters
    ----------
    purity : DataFrame
        :func:`purity_table`.
    random_q95 : float
        The 95th percentile of :func:`random_purity`.
    pure : float
        The purity from which a feature counts as pure.

    Returns
    -------
    DataFrame
        ``map``, ``side``, ``seed``, ``scored``, ``mean_purity``, ``share_above_random``, ``share_pure`` (the last
        two among the scored features).
    """
    return (purity.groupby(["map", "side", "seed"])
            .agg(scored=("purity", lambda p: p.notna().mean()), mean_purity=("purity", "mean"),
                 share_above_random=("purity", lambda p: (p.dropna() > random_q95).mean()),
                 share_pure=("purity", lambda p: (p.dropna() >= pure).mean()))
            .reset_index())


def profile_row(profile: Profile) -> dict[str, str | int]:
    """The feature-map parameters of a profile, one display value per row of chapter 02's profile table."""
    Q = profile
    return {"model": "tiny CLIP (trained in chapter 00)" if Q.is_tiny
            else f"open_clip {Q.open_clip_model} / {Q.pretrained}",
            "d": Q.arch.embed_dim if Q.is_tiny else 512,
            "training pairs": f"world train split ({Q.world.n_train})" if Q.is_tiny
            else "pairs = CC3M subset (CSV/TSV or shards)",
            "raw activation": Q.raw.activation,
            "SAE": f"{Q.sae.kind}, K={Q.sae.K}, λ={Q.sae.l1_coef:g}, normalize={Q.sae.normalize}",
            "SAE schedule": f"{Q.sae.epochs} epochs x {Q.sae.batch_size} pairs, lr {Q.sae.lr:g}",
            "NCL": f"{Q.ncl.head} head, {Q.ncl.nonneg}, K={Q.ncl.K}",
            "NCL schedule": f"{Q.ncl.epochs} epochs x {Q.ncl.batch_size} pairs, lr {Q.ncl.lr:g}",
            "seeds": ", ".join(map(str, Q.map_seeds)), "device": Q.device}
