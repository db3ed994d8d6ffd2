"""CLIP-InterpreT's five analyses on a per-head decomposition, and the tie-in with the book's features.

Madasu, Gandelsman, Lal & Howard (2024, arXiv:2409.06579): property-based nearest neighbours
(:func:`property_nearest_neighbors`), per-head topic segmentation (:func:`head_heatmap`), contrastive segmentation
(:func:`contrastive_heatmap`), per-head nearest neighbours of an image (:func:`head_image_neighbors`) and of a text
(:func:`head_text_neighbors`). :func:`head_feature_projections` and :func:`attribution_by_category` tie the heads
to the book's monosemantic features and their modality categories.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mmlib.companions.clip_interpret.decomposition import Head, ImageDecomposition
from mmlib.companions.clip_interpret.textspan import TextPool
from mmlib.core.errors import InputError
from mmlib.core.validation import check_finite

__all__ = ["head_embeddings", "nearest_neighbors", "property_nearest_neighbors", "head_image_neighbors",
           "head_text_neighbors", "head_heatmap", "contrastive_heatmap", "upsample_heatmap",
           "head_feature_projections", "attribution_by_category", "neighbour_agreement", "dominant_property",
           "value_queries", "per_head_neighbours", "segmentation_maps", "share_by_head"]

def _as_heads(heads: Head | Sequence[Head]) -> list[Head]:
    if len(heads) == 2 and all(isinstance(x, (int, np.integer)) for x in heads):
        return [(int(heads[0]), int(heads[1]))]  # type: ignore[index]
    out = [(int(la), int(h)) for la, h in heads]  # type: ignore[misc]
    if not out:
        raise InputError("no heads given")
    return out


def head_embeddings(decomposition: ImageDecomposition, heads: Head | Sequence[Head]) -> torch.Tensor:
    """The summed contributions ``(n, d)`` of the given heads: each image in a head subspace."""
    return sum(decomposition.head(la, h) for la, h in _as_heads(heads))  # type: ignore[return-value]


def nearest_neighbors(query: torch.Tensor, database: torch.Tensor, k: int = 5,
                      exclude: torch.Tensor | Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine nearest neighbours of ``query (q, d)`` among ``database (n, d)``.

    ``exclude`` ``(q,)``: for each query, a database index to skip (e.g. the query image itself).

    Returns
    -------
    indices, scores : Tensor
        ``(q, k)`` each, best first.
    """
    query, database = torch.as_tensor(query), torch.as_tensor(database)
    if query.ndim != 2 or database.ndim != 2 or query.shape[1] != database.shape[1]:
        raise InputError(f"query {tuple(query.shape)} and database {tuple(database.shape)} must be (q, d) and (n, d)")
    check_finite(query, "query")
    check_finite(database, "database")
    scores = F.normalize(query.float(), dim=-1) @ F.normalize(database.float(), dim=-1).T
    if exclude is not None:
        exclude = torch.as_tensor(np.asarray(exclude), dtype=torch.long)
        scores[torch.arange(len(scores)), exclude] = -math.inf
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return top.indices, top.values


def property_nearest_neighbors(database: ImageDecomposition, heads: Sequence[Head], query_indices: Sequence[int],
                               k: int = 5, query: ImageDecomposition | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-InterpreT's property-based search: neighbours in the subspace of the heads of one property.

    Parameters
    ----------
    database : ImageDecomposition
    heads : sequence of (layer, head)
        E.g. :func:`property_heads` of ``"colour"``.
    query_indices : sequence of int
        Images of ``query`` (default: of ``database``, the image itself then excluded).
    query : ImageDecomposition, optional
    """
    source = database if query is None else query
    q = head_embeddings(source.select(query_indices), heads)
    exclude = query_indices if query is None else None
    return nearest_neighbors(q, head_embeddings(database, heads), k, exclude)


def head_image_neighbors(database: ImageDecomposition, layer: int, head: int, query_indices: Sequence[int],
                         k: int = 5, query: ImageDecomposition | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head nearest neighbours of images: cosine of one head's contributions."""
    return property_nearest_neighbors(database, [(layer, head)], query_indices, k, query)


def head_text_neighbors(database: ImageDecomposition, layer: int, head: int, text_emb: torch.Tensor, k: int = 5
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head nearest neighbours of texts ``(q, d)``: the images whose head contribution is closest to each."""
    text_emb = check_finite(torch.as_tensor(text_emb), "text_emb")
    text_emb = text_emb.unsqueeze(0) if text_emb.dim() == 1 else text_emb
    return nearest_neighbors(text_emb, database.head(layer, head), k)


def head_heatmap(decomposition: ImageDecomposition, heads: Head | Sequence[Head], text_emb: torch.Tensor
                 ) -> torch.Tensor:
    """Per-head topic segmentation: each patch's contribution through the heads, dotted with a text.

    Parameters
    ----------
    decomposition : ImageDecomposition
        With per-token terms for the heads' layers (``token_layers``).
    heads : (layer, head) or sequence of them
        Summed.
    text_emb : Tensor
        ``(d,)`` a text embedding (normalised here).

    Returns
    -------
    Tensor
        ``(n, g_h, g_w)`` (the class token's own share is left out).
    """
    text_emb = check_finite(torch.as_tensor(text_emb), "text_emb")
    if text_emb.numel() != decomposition.dim:
        raise InputError(f"text_emb must be one embedding ({decomposition.dim},), got shape {tuple(text_emb.shape)}")
    text = F.normalize(text_emb.float().reshape(-1), dim=0)
    total = sum(decomposition.head_tokens(la, h) for la, h in _as_heads(heads))  # (n, T, d)
    scores = total[:, 1:] @ text                                                # type: ignore[index]
    return scores.reshape(len(decomposition), *decomposition.grid)


def contrastive_heatmap(decomposition: ImageDecomposition, heads: Head | Sequence[Head], text_emb: torch.Tensor,
                        other_emb: torch.Tensor) -> torch.Tensor:
    """Contrastive segmentation: the heatmap of one text minus that of another, ``(n, g_h, g_w)``."""
    return head_heatmap(decomposition, heads, text_emb) - head_heatmap(decomposition, heads, other_emb)


def upsample_heatmap(heatmap: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of heatmaps ``(n, g_h, g_w)`` to image size ``(n, H, W)`` (for overlays)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(heatmap.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False).squeeze(1)


def head_feature_projections(decomposition: ImageDecomposition, directions: torch.Tensor,
                             activations: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
    """Which heads write each feature: the mean projection of each head's contribution on each direction.

    Parameters
    ----------
    decomposition : ImageDecomposition
        Use ``decomposition.normalized()`` if the features live on unit-norm embeddings.
    directions : Tensor
        ``(K, d)`` the features' directions in the embedding space (e.g. SAE decoder rows).
    activations : Tensor, optional
        ``(n, K)`` non-negative feature activations on the same images: the mean over images is then weighted
        by each feature's activation (what the head writes when the feature fires).
    normalize : bool
        Use unit-norm directions.

    Returns
    -------
    Tensor
        ``(K, L, H)``.
    """
    dirs = check_finite(torch.as_tensor(directions), "directions").float()
    if dirs.ndim != 2 or dirs.shape[1] != decomposition.dim:
        raise InputError(f"directions have d={dirs.shape[1]} but the decomposition d={decomposition.dim}")
    if normalize:
        dirs = F.normalize(dirs, dim=-1)
    n = len(decomposition)
    if activations is None:
        weights = torch.full((n, dirs.shape[0]), 1.0 / n)
    else:
        if activations.shape != (n, dirs.shape[0]):
            raise InputError(f"activations must be (n, K) = ({n}, {dirs.shape[0]}), got {tuple(activations.shape)}")
        act = activations.float().clamp_min(0)
        weights = act / act.sum(0, keepdim=True).clamp_min(1e-12)
    proj = torch.einsum("nlhd,kd->nlhk", decomposition.heads, dirs)           # (n, L, H, K)
    return torch.einsum("nlhk,nk->klh", proj, weights)


def attribution_by_category(projections: torch.Tensor, categories: Sequence[str]) -> pd.DataFrame:
    """Aggregate :func:`head_feature_projections` ``(K, L, H)`` per feature category (e.g. ImgD/TextD/CrossD).

    Returns
    -------
    DataFrame
        One row per (category, layer, head): ``features`` (count), ``projection`` (mean over the category's
        features) and ``share`` (mean over features of the head's projection divided by the sum of absolute
        projections over all heads).
    """
    projections = check_finite(torch.as_tensor(projections), "projections")
    if len(categories) != projections.shape[0]:
        raise InputError(f"{len(categories)} categories for {projections.shape[0]} features")
    k, n_layers, n_heads = projections.shape
    flat = projections.reshape(k, -1)
    share = flat / flat.abs().sum(1, keepdim=True).clamp_min(1e-12)
    cats = np.asarray(categories, dtype=object)
    rows = []
    for cat in pd.unique(cats):
        mask = torch.from_numpy(cats == cat)
        mean_proj = flat[mask].mean(0)
        mean_share = share[mask].mean(0)
        for j in range(n_layers * n_heads):
            rows.append(dict(category=cat, layer=j // n_heads, head=j % n_heads, features=int(mask.sum()),
                             projection=float(mean_proj[j]), share=float(mean_share[j])))
    return pd.DataFrame(rows)


def neighbour_agreement(neighbours: torch.Tensor | np.ndarray, values: np.ndarray,
                        queries: Sequence[int] | np.ndarray) -> float:
    """Share of (query, neighbour) pairs whose neighbour has the query's value.

    Parameters
    ----------
    neighbours : Tensor or array
        ``(q, k)`` database indices of each query's neighbours (e.g. from :func:`property_nearest_neighbors`).
    values : array
        ``(n,)`` a property's value index of every database image.
    queries : sequence of int
        ``(q,)`` the queries' database indices.
    """
    nn = np.asarray(neighbours)
    values = np.asarray(values)
    return float((values[nn] == values[np.asarray(queries)][:, None]).mean())


def dominant_property(table: pd.DataFrame) -> str:
    """The property with the most labelled heads in a :func:`~.textspan.head_properties` table.

    Ties go to the property of the most consistent head among them (heads are counted in order of decreasing
    consistency).
    """
    labelled = table.dropna(subset=["property"])
    if labelled.empty:
        raise InputError("no head is labelled with a property")
    return str(labelled.sort_values("consistency", ascending=False)["property"].value_counts().index[0])


def value_queries(pool: TextPool, prop: str, n_values: int) -> list[int]:
    """Per value of ``prop``, the position of the first text in ``pool`` that names it (a text query per value).

    Raises
    ------
    ValueError
        if a value has no text in the pool.
    """
    out = []
    for v in range(n_values):
        hits = [i for i in range(len(pool)) if pool.properties[i] == prop and pool.values[i] == v]
        if not hits:
            raise InputError(f"no text in the pool names value {v} of {prop!r}")
        out.append(hits[0])
    return out


def per_head_neighbours(decomposition: ImageDecomposition, table: pd.DataFrame, values: Mapping[str, np.ndarray],
                        pool: TextPool, text_emb: torch.Tensor, queries: Sequence[int] | np.ndarray,
                        n_values: Mapping[str, int], k: int = 5) -> pd.DataFrame:
    """Per labelled head, how well its image and text neighbours agree with the head's property.

    Parameters
    ----------
    decomposition : ImageDecomposition
        The database, ``n`` images.
    table : DataFrame
        :func:`~.textspan.head_properties`; heads without a property are skipped.
    values : mapping
        property -> ``(n,)`` value index of every database image.
    pool : TextPool
        With ``text_emb`` ``(len(pool), d)``: every text naming the head's property is a text query.
    queries : sequence of int
        Database images used as image queries (each excluded from its own neighbours).
    n_values : mapping
        property -> its number of values (chance = 1 / that).
    k : int

    Returns
    -------
    DataFrame
        One row per labelled head: ``head`` (``L{l}H{h}``), ``layer``, ``head_index``, ``property``,
        ``image_nn_agreement`` (:func:`neighbour_agreement` of :func:`head_image_neighbors`),
        ``text_nn_precision`` (share of the ``k`` images nearest to each text query, by :func:`head_text_neighbors`,
        that have the value it names) and ``chance``.
    """
    rows = []
    for _, r in table.dropna(subset=["property"]).iterrows():
        la, h, prop = int(r["layer"]), int(r["head"]), r["property"]
        v = np.asarray(values[prop])
        nn_image, _ = head_image_neighbors(decomposition, la, h, queries, k=k)
        texts = [i for i in range(len(pool)) if pool.properties[i] == prop]
        named = np.array([pool.values[i] for i in texts])
        nn_text, _ = head_text_neighbors(decomposition, la, h, text_emb[texts], k=k)
        rows.append(dict(head=f"L{la}H{h}", layer=la, head_index=h, property=prop,
                         image_nn_agreement=neighbour_agreement(nn_image, v, queries),
                         text_nn_precision=float((v[nn_text.numpy()] == named[:, None]).mean()),
                         chance=1 / n_values[prop]))
    return pd.DataFrame(rows)


def segmentation_maps(decomposition: ImageDecomposition, heads: Head | Sequence[Head], own: torch.Tensor,
                      other: torch.Tensor, size: int | tuple[int, int]) -> np.ndarray:
    """Topic and contrastive heatmaps of each image with its own pair of texts, upsampled to image size.

    Parameters
    ----------
    decomposition : ImageDecomposition
        ``n`` images, with per-token terms for the heads' layers.
    heads : (layer, head) or sequence of them
    own, other : Tensor
        ``(n, d)``: image ``j``'s topic text ``own[j]``, and the text ``other[j]`` its contrastive map subtracts.
    size : int or (int, int)

    Returns
    -------
    array
        ``(2, n, H, W)``: row 0 the topic maps (:func:`head_heatmap`), row 1 the contrastive maps
        (:func:`contrastive_heatmap`).
    """
    n = len(decomposition)
    if len(own) != n or len(other) != n:
        raise InputError(f"one pair of texts per image: {n} images, {len(own)} and {len(other)} texts")
    topic = torch.stack([head_heatmap(decomposition.select([j]), heads, own[j])[0] for j in range(n)])
    contrast = torch.stack([contrastive_heatmap(decomposition.select([j]), heads, own[j], other[j])[0]
                            for j in range(n)])
    return torch.stack([upsample_heatmap(topic, size), upsample_heatmap(contrast, size)]).numpy()


def share_by_head(attribution: pd.DataFrame, categories: Sequence[str] = ("ImgD", "CrossD", "TextD")
                  ) -> pd.DataFrame:
    """:func:`attribution_by_category`'s ``share`` as a table: one row per category (in ``categories``' order,
    absent ones dropped), one column per head (``L{l}H{h}``).
    """
    named = attribution.assign(head="L" + attribution["layer"].astype(str) + "H" + attribution["head"].astype(str))
    pivot = named.pivot(index="category", columns="head", values="share")
    return pivot.reindex(list(categories)).dropna(how="all")
