"""What the SpLiCE paper does with the decompositions: sweeps, interventions, spurious-correlation detection.

Faithfulness against sparsity (:func:`sparsity_sweep`: cosine to the dense embedding and zero-shot accuracy over a
range of penalties), the top concepts of an embedding (:func:`top_concepts`), concept interventions
(:func:`remove_concepts`, :func:`intervene`, :func:`intervention_report`) and spurious-correlation detection
(:func:`class_concept_weights`, :func:`factor_weight_share`, :func:`spurious_concepts`; on the generated world,
whose shape -> background tie is known, :func:`audit_spurious`), and naming feature directions by their top
concepts (:func:`name_features`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import tqdm

from mmlib.analysis.zero_shot import zero_shot_accuracy
from mmlib.companions.splice.admm import AdmmConfig, nonneg_lasso_admm
from mmlib.companions.splice.model import Splice
from mmlib.companions.splice.vocabulary import ConceptVocabulary
from mmlib.core.errors import InputError
from mmlib.core.stats import proportion_ci
from mmlib.core.validation import check_finite
from mmlib.data.world import SPURIOUS_BACKGROUND, World, WorldConfig, generate_world
from mmlib.models.clip import ModelBundle
from mmlib.models.embed import EmbedConfig, embed_dataset
from mmlib.models.prompts import class_embeddings, encode_texts

__all__ = ["sparsity_sweep", "top_concepts", "remove_concepts", "intervene", "intervention_report",
           "class_concept_weights", "factor_weight_share", "spurious_concepts", "zero_shot_tasks",
           "with_wilson_intervals", "faithful_penalties", "tied_value", "tied_weights", "tied_concept_lift",
           "tied_hits", "SpuriousAudit", "audit_spurious", "name_features"]

def sparsity_sweep(splice: Splice, image_emb: torch.Tensor, class_emb: torch.Tensor,
                   labels: torch.Tensor | np.ndarray, l1_penalties: Sequence[float],
                   progress: bool = True) -> pd.DataFrame:
    """Zero-shot accuracy and cosine to the dense embedding against sparsity, over a range of penalties.

    Parameters
    ----------
    image_emb : Tensor
        ``(n, d)`` dense image embeddings.
    class_emb : Tensor
        ``(c, d)`` class text embeddings (kept dense, as in SpLiCE).
    labels : array
        ``(n,)`` class indices.
    l1_penalties : sequence of float

    Returns
    -------
    DataFrame
        One row per penalty: ``l1_penalty``, ``l0_mean``, ``l0_median``, ``cosine``, ``cosine_centered``,
        ``accuracy`` with a 95 % Wilson CI (``ci_low``, ``ci_high``), ``dense_accuracy``, ``iterations``
        (mean) and ``converged`` (share).
    """
    labels = np.asarray(labels)
    dense = zero_shot_accuracy(image_emb, class_emb, labels)
    rows = []
    for lam in tqdm.tqdm(list(l1_penalties), desc="sparsity sweep", disable=not progress):
        dec = splice.with_penalty(lam).decompose(image_emb)
        acc = zero_shot_accuracy(splice.recompose(dec.weights), class_emb, labels)
        low, high = proportion_ci(round(acc * len(labels)), len(labels))
        rows.append(dict(l1_penalty=float(lam), l0_mean=float(dec.l0.float().mean()),
                         l0_median=float(dec.l0.float().median()), cosine=float(dec.cosine.mean()),
                         cosine_centered=float(dec.cosine_centered.mean()), accuracy=acc, ci_low=low,
                         ci_high=high, dense_accuracy=dense,
                         iterations=float(dec.solver.iterations.float().mean()),
                         converged=float(dec.solver.converged.float().mean())))
    return pd.DataFrame(rows)


def top_concepts(weights: torch.Tensor, vocabulary: ConceptVocabulary, k: int = 8) -> pd.DataFrame:
    """The ``k`` largest non-zero weights of each embedding.

    Parameters
    ----------
    weights : Tensor
        ``(n, K)`` or ``(K,)``.

    Returns
    -------
    DataFrame
        Columns ``sample``, ``rank``, ``concept``, ``factor``, ``weight`` (zero weights omitted).
    """
    w = weights.float().cpu()
    if w.dim() == 1:
        w = w.unsqueeze(0)
    if w.shape[1] != len(vocabulary):
        raise InputError(f"weights have {w.shape[1]} columns for a vocabulary of {len(vocabulary)}")
    values, index = w.topk(min(k, w.shape[1]), dim=1)
    rows = []
    for i in range(w.shape[0]):
        for rank, (value, j) in enumerate(zip(values[i].tolist(), index[i].tolist())):
            if value <= 0:
                break
            rows.append(dict(sample=i, rank=rank, concept=vocabulary.concepts[j], factor=vocabulary.factors[j],
                             weight=value))
    return pd.DataFrame(rows, columns=["sample", "rank", "concept", "factor", "weight"])


def remove_concepts(weights: torch.Tensor, vocabulary: ConceptVocabulary, concepts: Sequence[str] = (),
                    factors: Sequence[str] = ()) -> torch.Tensor:
    """A copy of ``weights (n, K)`` with the named concepts and every concept of the named factors set to 0."""
    index = vocabulary.indices(concepts, factors)
    if len(index) == 0:
        raise InputError("nothing to remove: name at least one concept or factor")
    out = weights.clone()
    out[:, torch.from_numpy(index)] = 0
    return out


def intervene(splice: Splice, weights: torch.Tensor, concepts: Sequence[str] = (),
              factors: Sequence[str] = ()) -> torch.Tensor:
    """SpLiCE model editing: remove concepts from decompositions ``(n, K)`` and recompose; ``(n, d)`` unit norm."""
    return splice.recompose(remove_concepts(weights, splice.vocabulary, concepts, factors))


def intervention_report(splice: Splice, image_emb: torch.Tensor,
                        tasks: Mapping[str, tuple[torch.Tensor, torch.Tensor | np.ndarray]],
                        concepts: Sequence[str] = (), factors: Sequence[str] = ()) -> pd.DataFrame:
    """Zero-shot accuracy per task for dense, recomposed and concept-removed embeddings.

    Parameters
    ----------
    image_emb : Tensor
        ``(n, d)`` dense image embeddings.
    tasks : mapping
        ``name -> (class_emb (c, d), labels (n,))``, e.g. one task per world factor.
    concepts, factors :
        What to remove (see :func:`remove_concepts`).

    Returns
    -------
    DataFrame
        One row per task: ``dense``, ``recomposed``, ``intervened`` accuracies, ``drop`` (recomposed minus
        intervened) and ``n``.
    """
    dec = splice.decompose(image_emb)
    recomposed = splice.recompose(dec.weights)
    edited = intervene(splice, dec.weights, concepts, factors)
    rows = []
    for name, (class_emb, labels) in tasks.items():
        labels = np.asarray(labels)
        base = zero_shot_accuracy(recomposed, class_emb, labels)
        after = zero_shot_accuracy(edited, class_emb, labels)
        rows.append(dict(task=name, n=len(labels), dense=zero_shot_accuracy(image_emb, class_emb, labels),
                         recomposed=base, intervened=after, drop=base - after))
    return pd.DataFrame(rows)


def class_concept_weights(weights: torch.Tensor, labels: torch.Tensor | np.ndarray,
                          vocabulary: ConceptVocabulary, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean concept weight per class: a ``(classes, K)`` DataFrame (index: class names, columns: concepts)."""
    labels = np.asarray(labels)
    if len(labels) != weights.shape[0]:
        raise InputError(f"{weights.shape[0]} decompositions but {len(labels)} labels")
    classes = np.unique(labels)
    w = weights.float().cpu().numpy()
    table = np.stack([w[labels == c].mean(0) for c in classes])
    names = [class_names[c] if class_names is not None else str(c) for c in classes]
    return pd.DataFrame(table, index=pd.Index(names, name="class"), columns=list(vocabulary.concepts))


def factor_weight_share(weights: torch.Tensor, labels: torch.Tensor | np.ndarray, vocabulary: ConceptVocabulary,
                        class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Share of each class's total concept weight that goes to each factor's concepts (rows sum to 1).

    Concepts without a factor are pooled under ``"(none)"``. With a spurious world (background tied to shape),
    background concepts take a visible share in the decompositions of the shape classes.
    """
    per_class = class_concept_weights(weights, labels, vocabulary, class_names)
    groups = [f if f is not None else "(none)" for f in vocabulary.factors]
    summed = per_class.T.groupby(groups, sort=False).sum().T
    total = summed.sum(axis=1).replace(0.0, np.nan)
    return summed.div(total, axis=0)


def spurious_concepts(weights: torch.Tensor, labels: torch.Tensor | np.ndarray, vocabulary: ConceptVocabulary,
                      class_names: Sequence[str] | None = None, exclude_factors: Sequence[str] = (),
                      top: int = 5) -> pd.DataFrame:
    """Concepts over-represented in each class's decompositions: candidates for spurious correlations.

    For each class, the concepts whose mean weight inside the class most exceeds their mean weight in the
    other classes (``lift = in_class - elsewhere``), leaving out the factors named in ``exclude_factors``
    (typically the class's own factor, whose concepts are expected to be there).

    Returns
    -------
    DataFrame
        Columns ``class``, ``rank``, ``concept``, ``factor``, ``in_class``, ``elsewhere``, ``lift``.
    """
    labels = np.asarray(labels)
    w = weights.float().cpu().numpy()
    excluded = set(exclude_factors)
    keep = np.array([f not in excluded for f in vocabulary.factors])
    rows = []
    for c in np.unique(labels):
        inside = w[labels == c].mean(0)
        outside = w[labels != c].mean(0) if (labels != c).any() else np.zeros(w.shape[1])
        lift = np.where(keep, inside - outside, -np.inf)
        for rank, j in enumerate(np.argsort(-lift)[:top]):
            if not np.isfinite(lift[j]):
                break
            rows.append(dict(**{"class": class_names[c] if class_names is not None else str(c)}, rank=rank,
                             concept=vocabulary.concepts[j], factor=vocabulary.factors[j],
                             in_class=float(inside[j]), elsewhere=float(outside[j]), lift=float(lift[j])))
    return pd.DataFrame(rows)


def zero_shot_tasks(bundle: ModelBundle, world: World, names: Sequence[str], split: str = "test",
                    reading: str = "ensemble") -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """Zero-shot tasks on the generated world: per factor, its class embeddings and the labels of a split.

    Parameters
    ----------
    bundle : ModelBundle
        Whose text tower embeds the class prompts.
    world : World
    names : sequence of str
        The factors (e.g. ``("shape", "colour")``).
    split : str
    reading : str
        The prompt reading (:func:`mmlib.models.prompts.class_embeddings`; ``"ensemble"``: ``(c, d)`` prompt
        ensembles, as :func:`sparsity_sweep` needs).

    Returns
    -------
    dict
        name -> ``(class_emb (c, d), labels (n,))``, the input of :func:`sparsity_sweep` and
        :func:`intervention_report`.
    """
    encode = functools.partial(encode_texts, bundle)
    part = world.subset(split)
    return {name: (class_embeddings(encode, world.factor(name), world.factors, reading=reading), part.values(name))
            for name in names}


def with_wilson_intervals(table: pd.DataFrame, columns: Sequence[str], n: str = "n", digits: int = 3
                          ) -> pd.DataFrame:
    """A copy of ``table`` with a ``<column>_ci`` text column (``"[lo, hi]"``, 95 % Wilson) per accuracy column.

    ``table[n]`` holds the number of trials of each row (e.g. :func:`intervention_report`).
    """
    out = table.copy()
    for col in columns:
        bounds = [proportion_ci(round(a * m), m) for a, m in zip(out[col], out[n])]
        out[col + "_ci"] = [f"[{lo:.{digits}f}, {hi:.{digits}f}]" for lo, hi in bounds]
    return out


def faithful_penalties(sweeps: Mapping[str, pd.DataFrame], max_l0: float = 10, min_cosine: float = 0.8,
                       retain: float = 0.9) -> tuple[list[float], bool]:
    """Which penalties of :func:`sparsity_sweep` tables give sparse, faithful decompositions for every task.

    A penalty is *faithful* for a task when its mean L0 is at most ``max_l0``, its mean cosine to the dense
    embedding at least ``min_cosine`` and the upper end of its accuracy interval at least ``retain`` times the
    dense accuracy. A task is *lost* when it has sparse penalties (mean L0 at most ``max_l0``) and every one of them
    has its interval's upper end below ``retain`` times the dense accuracy.

    Parameters
    ----------
    sweeps : mapping
        task name -> :func:`sparsity_sweep` table (the same penalties for every task).
    max_l0, min_cosine, retain : float

    Returns
    -------
    good : list of float
        The penalties faithful for every task, increasing.
    lost : bool
        Whether some task is lost.
    """
    good: set[float] | None = None
    lost = False
    for t in sweeps.values():
        sparse = t[t["l0_mean"] <= max_l0]
        ok = sparse[(sparse["cosine"] >= min_cosine) & (sparse["ci_high"] >= retain * sparse["dense_accuracy"])]
        good = set(ok["l1_penalty"]) if good is None else good & set(ok["l1_penalty"])
        lost = lost or (len(sparse) > 0 and bool((sparse["ci_high"] < retain * sparse["dense_accuracy"]).all()))
    return sorted(good or ()), lost


def tied_value(class_index: np.ndarray | int) -> np.ndarray:
    """The background index the generated world ties to each shape index when ``spurious > 0``.

    The world's own map (:func:`mmlib.data.world.sample_latents`): shape ``s`` -> background ``s mod 4``.
    """
    return SPURIOUS_BACKGROUND[np.asarray(class_index) % len(SPURIOUS_BACKGROUND)]


def tied_weights(weights: torch.Tensor, vocabulary: ConceptVocabulary, n_classes: int,
                 factor: str = "background") -> np.ndarray:
    """Per decomposition and class ``c``, the summed weight on the concepts of ``factor`` naming :func:`tied_value`
    ``(c)``.

    Parameters
    ----------
    weights : Tensor
        ``(n, K)`` decompositions.
    n_classes : int

    Returns
    -------
    array
        ``(n, n_classes)``.
    """
    w_all = weights.float().cpu().numpy()
    out = np.zeros((len(w_all), n_classes))
    for c in range(n_classes):
        cols = [j for j, (f, v) in enumerate(zip(vocabulary.factors, vocabulary.values))
                if f == factor and v == tied_value(c)]
        out[:, c] = w_all[:, cols].sum(1)
    return out


def tied_concept_lift(weights: torch.Tensor, labels: np.ndarray, vocabulary: ConceptVocabulary,
                      factor: str = "background") -> np.ndarray:
    """Per class, the lift of the weight on the concepts of its tied value of ``factor``.

    For class ``c`` the concepts of ``factor`` that name value :func:`tied_value` ``(c)`` are summed per
    decomposition; the lift is their mean inside the class minus their mean in the other classes.

    Parameters
    ----------
    weights : Tensor
        ``(n, K)`` decompositions.
    labels : array
        ``(n,)`` class indices ``0 .. C-1``.
    vocabulary : ConceptVocabulary

    Returns
    -------
    array
        ``(C,)`` one lift per class index.
    """
    labels = np.asarray(labels)
    tied = tied_weights(weights, vocabulary, int(labels.max()) + 1, factor)
    return np.array([tied[labels == c, c].mean() - tied[labels != c, c].mean() for c in range(tied.shape[1])])


def tied_hits(top: pd.DataFrame, vocabulary: ConceptVocabulary, class_names: Sequence[str],
              factor: str = "background") -> int:
    """In how many classes the top concept of :func:`spurious_concepts` names the class's tied value of ``factor``.

    ``class_names[c]`` is the ``class`` of class index ``c`` in ``top``; the tied value is :func:`tied_value`.
    """
    first = top[top["rank"] == 0].set_index("class")
    hits = 0
    for c, name in enumerate(class_names):
        j = vocabulary.index(first.loc[name, "concept"])
        hits += int(vocabulary.factors[j] == factor and vocabulary.values[j] == tied_value(c))
    return hits


@dataclasses.dataclass(frozen=True)
class SpuriousAudit:
    """SpLiCE's audit of one generated world for the shape -> background correlation.

    Attributes
    ----------
    strength : float
        The world's ``spurious`` knob.
    tie_rate : float
        Share of images whose background is the one tied to their shape.
    hits : int
        Shape classes whose top non-shape concept names their tied background (:func:`tied_hits`).
    lift : dict
        shape name -> :func:`tied_concept_lift`.
    top : DataFrame
        :func:`spurious_concepts` per shape class, the shape concepts left out.
    background_accuracy : float
        Dense zero-shot background accuracy on the world's images (whether the model reads backgrounds at all).
    tied_weight : array, optional
        ``(n, C)`` :func:`tied_weights` of each audited image (for intervals of the lift).
    labels : array, optional
        ``(n,)`` shape class of each audited image.
    """

    strength: float
    tie_rate: float
    hits: int
    lift: dict[str, float]
    top: pd.DataFrame
    background_accuracy: float
    tied_weight: np.ndarray | None = None
    labels: np.ndarray | None = None


def audit_spurious(splice: Splice, bundle: ModelBundle, config: WorldConfig, embed: EmbedConfig,
                   top: int = 3) -> SpuriousAudit:
    """Generate a world, embed its test split with ``bundle`` and audit it for the shape -> background tie.

    The images of each shape class are decomposed; the non-shape concepts over-represented in a class are the
    candidate spurious features (:func:`spurious_concepts`); the tied background's own lift and whether it tops the
    class are measured, and so is the model's dense zero-shot background accuracy (prompt ensembles).

    Parameters
    ----------
    splice : Splice
        A decomposer built from ``bundle``.
    bundle : ModelBundle
        The fixed model (not retrained on the audited world).
    config : WorldConfig
        The world to audit (its ``spurious`` knob sets the correlation; its test split is audited).
    embed : EmbedConfig
    top : int
        Concepts per class in :attr:`SpuriousAudit.top`.
    """
    world = generate_world(config)
    part = world.subset("test")
    emb = embed_dataset(bundle, part, embed, progress=False)
    labels = part.values("shape")
    shapes = world.factor("shape").values
    weights = splice.decompose(emb.image).weights
    found = spurious_concepts(weights, labels, splice.vocabulary, class_names=shapes, exclude_factors=["shape"],
                              top=top)
    lift = tied_concept_lift(weights, labels, splice.vocabulary)
    background = zero_shot_tasks(bundle, world, ["background"])["background"]
    tie_rate = float(np.mean(part.values("background") == tied_value(labels)))
    return SpuriousAudit(strength=config.spurious, tie_rate=tie_rate,
                         hits=tied_hits(found, splice.vocabulary, shapes), lift=dict(zip(shapes, lift.tolist())),
                         top=found, background_accuracy=zero_shot_accuracy(emb.image, *background),
                         tied_weight=tied_weights(weights, splice.vocabulary, len(shapes)), labels=np.asarray(labels))


def name_features(splice: Splice, directions: torch.Tensor, l1_penalty: float, config: AdmmConfig | None = None,
                  k: int = 3, roles: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Name feature directions by their top concepts: each direction decomposed against the centred dictionary.

    A direction is already a difference, so no image mean is subtracted: the unit-norm direction itself is the
    lasso's target.

    Parameters
    ----------
    splice : Splice
    directions : Tensor
        ``(m, d)`` e.g. SAE decoder rows.
    l1_penalty : float
    config : AdmmConfig, optional
        Default: ``splice.admm``.
    k : int
        Concepts in a name (the largest non-zero weights).
    roles : mapping, optional
        factor -> its role (e.g. ``{f.name: f.role for f in world.factors}``), for a ``top_role`` column.

    Returns
    -------
    DataFrame
        One row per direction: ``name`` (the top concepts, ``", "``-joined, ``"(none)"`` for an all-zero
        decomposition), ``top_factor`` (factor of the top concept, ``"(none)"`` if unknown), ``top_role`` (with
        ``roles``) and ``l0``.
    """
    directions = check_finite(torch.as_tensor(directions), "directions")
    units = F.normalize(directions.float(), dim=-1)
    weights = nonneg_lasso_admm(splice.dictionary, units, l1_penalty, config or splice.admm).weights
    voc = splice.vocabulary
    rows = []
    for w in weights:
        order = [int(i) for i in torch.argsort(w, descending=True)[:k] if w[i] > 0]
        factor = voc.factors[order[0]] if order else None
        row = dict(name=", ".join(voc.concepts[i] for i in order) or "(none)", top_factor=factor or "(none)")
        if roles is not None:
            row["top_role"] = roles.get(factor, "(none)")
        rows.append(dict(**row, l0=int((w > 0).sum())))
    return pd.DataFrame(rows)
