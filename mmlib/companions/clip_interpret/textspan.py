"""TextSpan (Gandelsman et al., 2024) per head, and the head properties and scores of CLIP-InterpreT.

:func:`textspan`: for one head, greedily pick the text whose embedding direction explains the most variance of the
head's (centred) outputs over a set of images, project it out of the outputs and of all texts, repeat.
**Metrics** [ours, after Madasu, Gandelsman, Lal & Howard (2024, arXiv:2409.06579), whose head labels come from
ChatGPT in-context learning]: a head's *property* is the factor most of its TextSpan texts name (in the generated
world every text's factor is known, :func:`world_descriptions`); *consistency* (their association score) is the
share of its texts naming that property (:func:`head_properties`); *entanglement* is the share of labelled heads
whose property is shared with another head (:func:`head_property_scores`). :func:`random_assignment_baseline`
gives the same scores for texts drawn at random from the pool.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import tqdm

from mmlib.companions.clip_interpret.decomposition import Head, ImageDecomposition, layer_index
from mmlib.core.errors import InputError
from mmlib.core.validation import check_finite
from mmlib.data.world import Factor, compose_caption, default_factors

__all__ = ["TextPool", "world_descriptions", "TextSpanResult", "textspan", "textspan_heads", "head_properties",
           "head_property_scores", "property_heads", "random_assignment_baseline", "upper_tail_p"]

@dataclasses.dataclass(frozen=True)
class TextPool:
    """A pool of text descriptions for TextSpan, with the property (factor) each names where known.

    Attributes
    ----------
    texts : tuple of str
    properties : tuple of (str or None)
    values : tuple of (int or None)
        Index of the factor value named.
    """

    texts: tuple[str, ...]
    properties: tuple[str | None, ...]
    values: tuple[int | None, ...]

    def __post_init__(self) -> None:
        if not self.texts:
            raise InputError("the text pool is empty")
        if not len(self.texts) == len(self.properties) == len(self.values):
            raise InputError("one property and one value per text")

    def __len__(self) -> int:
        return len(self.texts)


def world_descriptions(factors: Sequence[Factor] | None = None,
                       templates: Sequence[str] = ("a photo of",)) -> TextPool:
    """Descriptions of the generated world in its own caption grammar, one per factor synonym and template.

    E.g. ``"a photo of a red object"``, ``"a photo of an object on a black background"``; each labelled with
    its factor (the property TextSpan's heads are scored against).
    """
    factors = tuple(default_factors() if factors is None else factors)
    texts, props, values = [], [], []
    for template in templates:
        for f in factors:
            for v, synonyms in enumerate(f.synonyms):
                for word in synonyms:
                    text = compose_caption({f.name: word}, prefix=template)
                    if text not in texts:
                        texts.append(text)
                        props.append(f.name)
                        values.append(v)
    return TextPool(tuple(texts), tuple(props), tuple(values))


@dataclasses.dataclass(frozen=True)
class TextSpanResult:
    """TextSpan's texts for one head.

    Attributes
    ----------
    layer, head : int
    indices : tuple of int
        Positions in the text pool, in the order chosen.
    texts : tuple of str
    explained : tuple of float
        Share of the head's (centred) output variance explained after each text, cumulative.
    """

    layer: int
    head: int
    indices: tuple[int, ...]
    texts: tuple[str, ...]
    explained: tuple[float, ...]


def textspan(outputs: torch.Tensor, text_emb: torch.Tensor, k: int = 5, rank: int | None = None
             ) -> tuple[list[int], list[float]]:
    """The TextSpan greedy basis of one component's outputs (Gandelsman et al. 2024, Algorithm 1).

    Parameters
    ----------
    outputs : Tensor
        ``(n, d)`` the component's contributions over ``n`` images.
    text_emb : Tensor
        ``(m, d)`` text embeddings (normalised here).
    k : int
        Texts to pick.
    rank : int, optional
        Project the texts onto the top-``rank`` right singular vectors of ``outputs`` first (the paper uses 80
        for ViT-L/H); ``None``: no projection.

    Returns
    -------
    indices : list of int
        Chosen texts in order (at most ``min(k, m)``; stops early when nothing is left to explain).
    explained : list of float
        Cumulative share of the centred outputs' variance explained after each pick.
    """
    outputs, text_emb = torch.as_tensor(outputs), torch.as_tensor(text_emb)
    if outputs.ndim != 2 or text_emb.ndim != 2:
        raise InputError(f"outputs {tuple(outputs.shape)} and text_emb {tuple(text_emb.shape)} must be (n, d) and "
                         "(m, d)")
    check_finite(outputs, "outputs")
    check_finite(text_emb, "text_emb")
    data = outputs.double()
    texts = F.normalize(text_emb.double(), dim=-1)
    if data.shape[1] != texts.shape[1]:
        raise InputError(f"outputs have d={data.shape[1]} but texts d={texts.shape[1]}")
    if rank is not None:
        _, _, vh = torch.linalg.svd(data, full_matrices=False)
        basis = vh[:rank]
        texts = texts @ basis.T @ basis
    data = data - data.mean(0, keepdim=True)
    total = float((data ** 2).sum())
    chosen: list[int] = []
    explained: list[float] = []
    if total == 0.0:
        return chosen, explained
    for _ in range(min(k, len(texts))):
        spread = (data @ texts.T).std(0)
        if chosen:
            spread[chosen] = -1.0
        j = int(spread.argmax())
        t = texts[j]
        norm = float(t @ t)
        if spread[j] <= 0 or norm < 1e-12:
            break
        data = data - torch.outer(data @ t / norm, t)
        texts = texts - torch.outer(texts @ t / norm, t)
        chosen.append(j)
        explained.append(1.0 - float((data ** 2).sum()) / total)
    return chosen, explained


def textspan_heads(decomposition: ImageDecomposition, text_emb: torch.Tensor, texts: Sequence[str] | TextPool,
                   layers: Sequence[int] | None = None, k: int = 5, rank: int | None = None,
                   progress: bool = False) -> list[TextSpanResult]:
    """:func:`textspan` for every head of the given layers (default: all).

    Parameters
    ----------
    decomposition : ImageDecomposition
        Over a set of images (the more varied, the better).
    text_emb : Tensor
        ``(m, d)`` embeddings of ``texts``.
    texts : sequence of str or TextPool
    """
    pool = texts.texts if isinstance(texts, TextPool) else tuple(texts)
    if len(pool) != len(text_emb):
        raise InputError(f"{len(pool)} texts but {len(text_emb)} text embeddings")
    layers = range(decomposition.n_layers) if layers is None else [layer_index(la, decomposition.n_layers)
                                                                     for la in layers]
    heads = [(la, h) for la in layers for h in range(decomposition.n_heads)]
    results = []
    for la, h in tqdm.tqdm(heads, desc="TextSpan", unit="head", disable=not progress):
        idx, explained = textspan(decomposition.head(la, h), text_emb, k, rank)
        results.append(TextSpanResult(la, h, tuple(idx), tuple(pool[i] for i in idx), tuple(explained)))
    return results


def head_properties(results: Sequence[TextSpanResult], properties: Sequence[str | None] | TextPool,
                    min_consistency: float = 0.0) -> pd.DataFrame:
    """Label each head with the property most of its TextSpan texts name, and score its consistency.

    Parameters
    ----------
    results : sequence of TextSpanResult
    properties : sequence or TextPool
        The property of every text in the pool (``None``: unknown; ignored in the vote).
    min_consistency : float
        Heads whose consistency is below this get no property (``None``).

    Returns
    -------
    DataFrame
        One row per head: ``layer``, ``head``, ``property``, ``consistency`` (share of the head's texts naming
        the property: Madasu et al.'s association score, with known labels instead of ChatGPT's),
        ``explained`` (variance explained by all its texts) and ``texts`` (joined by ``" | "``).
    """
    props = properties.properties if isinstance(properties, TextPool) else tuple(properties)
    rows = []
    for r in results:
        named = [props[i] for i in r.indices if props[i] is not None]
        prop, consistency = None, 0.0
        if named:
            counts = Counter(named)
            best = max(counts.values())
            prop = next(p for p in named if counts[p] == best)  # ties: the earliest-picked property
            consistency = best / len(r.indices)
        if consistency < min_consistency:
            prop = None
        rows.append(dict(layer=r.layer, head=r.head, property=prop, consistency=consistency,
                         explained=r.explained[-1] if r.explained else 0.0, texts=" | ".join(r.texts)))
    return pd.DataFrame(rows)


def head_property_scores(table: pd.DataFrame) -> dict[str, float]:
    """Model-level scores from :func:`head_properties` [ours, after Madasu et al.].

    Returns
    -------
    dict
        ``association``: mean consistency over heads; ``entanglement``: share of labelled heads whose property
        is also another head's; ``disentanglement``: ``1 - entanglement``; ``distinct_properties``;
        ``labelled_heads``; ``heads``.
    """
    labelled = table["property"].dropna()
    counts = labelled.value_counts()
    shared = float(labelled.map(counts).gt(1).mean()) if len(labelled) else float("nan")
    return {"association": float(table["consistency"].mean()) if len(table) else float("nan"),
            "entanglement": shared, "disentanglement": 1.0 - shared,
            "distinct_properties": float(labelled.nunique()), "labelled_heads": float(len(labelled)),
            "heads": float(len(table))}


def property_heads(table: pd.DataFrame, prop: str) -> list[Head]:
    """The ``(layer, head)`` pairs labelled with property ``prop`` in a :func:`head_properties` table."""
    rows = table[table["property"] == prop]
    return [(int(la), int(h)) for la, h in zip(rows["layer"], rows["head"])]


def random_assignment_baseline(results: Sequence[TextSpanResult], pool: TextPool, n_draws: int = 1000,
                               seed: int = 0) -> pd.DataFrame:
    """The scores of :func:`head_property_scores` when each head gets random texts instead of TextSpan's.

    Every draw gives each head as many texts as TextSpan picked for it, drawn from the pool without replacement.

    Parameters
    ----------
    results : sequence of TextSpanResult
        TextSpan's texts per head (only their number and the head are used).
    pool : TextPool
        The pool TextSpan chose from (its properties label the drawn texts).
    n_draws : int
    seed : int
        Of the generator (one stream for all draws, heads in order).

    Returns
    -------
    DataFrame
        One row per draw: ``association``, ``entanglement``, ``disentanglement``, ``distinct_properties``,
        ``labelled_heads`` and ``heads``.
    """
    if n_draws < 1:
        raise InputError(f"n_draws must be positive, got {n_draws}")
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_draws):
        fake = []
        for r in results:
            pick = rng.choice(len(pool), size=len(r.indices), replace=False)
            fake.append(TextSpanResult(r.layer, r.head, tuple(int(i) for i in pick),
                                       tuple(pool.texts[i] for i in pick), r.explained))
        rows.append(head_property_scores(head_properties(fake, pool)))
    return pd.DataFrame(rows)


def upper_tail_p(null: np.ndarray | Sequence[float], observed: float) -> float:
    """The permutation p-value of ``observed`` against draws ``null``: ``(1 + #{null >= observed}) / (1 + n)``."""
    null = np.asarray(null, dtype=float)
    return float((1 + (null >= observed).sum()) / (1 + len(null)))
