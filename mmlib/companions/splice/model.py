"""The SpLiCE decomposition model: a concept dictionary, the modality means and the sparsity penalty.

Bhalla et al. (2024), "Interpreting CLIP with Sparse Linear Concept Embeddings (SpLiCE)". An image embedding ``z``
(``(d,)``) is written, without any training, as a sparse non-negative combination of the text embeddings of a
concept vocabulary (the rows of a *concept dictionary* ``C``, ``(K, d)``):

    min_w  1/2 ||C^T w - z||^2 + lambda ||w||_1     subject to  w >= 0,

solved by :func:`mmlib.companions.splice.admm.nonneg_lasso_admm`. As in SpLiCE, both modalities are mean-centred
first (image embeddings with an image mean, concepts with the concept mean, each then renormalised) -- a named
parameter here (``center``), because the modality gap makes it matter. A decomposition is recomposed into an
embedding by adding the image mean back (:meth:`Splice.recompose`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from mmlib.companions.splice.admm import AdmmConfig, AdmmResult, nonneg_lasso_admm
from mmlib.companions.splice.vocabulary import ConceptVocabulary, check_vocabulary
from mmlib.core.errors import ConfigError, InputError
from mmlib.core.validation import check_finite
from mmlib.models.clip import ModelBundle
from mmlib.models.prompts import encode_texts

__all__ = ["modality_mean", "center_embeddings", "SpliceDecomposition", "Splice", "build_splice"]

def modality_mean(embeddings: torch.Tensor) -> torch.Tensor:
    """The mean ``(d,)`` of the L2-normalised rows of ``embeddings (n, d)`` (SpLiCE's centring offset)."""
    if len(embeddings) == 0:
        raise InputError("cannot take the mean of zero embeddings")
    check_finite(embeddings, "embeddings")
    return F.normalize(embeddings.float(), dim=-1).mean(0)


def center_embeddings(embeddings: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    """``normalize(normalize(x) - mean)`` per row (or just ``normalize(x)`` when ``mean`` is None); ``(n, d)``."""
    check_finite(embeddings, "embeddings")
    x = F.normalize(embeddings.float(), dim=-1)
    if mean is None:
        return x
    check_finite(mean, "mean")
    return F.normalize(x - mean.to(x), dim=-1)


@dataclasses.dataclass(frozen=True)
class SpliceDecomposition:
    """SpLiCE decompositions of ``n`` embeddings.

    Attributes
    ----------
    weights : Tensor
        ``(n, K)`` non-negative concept weights.
    l0 : Tensor
        ``(n,)`` number of non-zero weights.
    cosine : Tensor
        ``(n,)`` cosine between the recomposed embedding (image mean added back) and the dense embedding.
    cosine_centered : Tensor
        ``(n,)`` cosine between ``C^T w`` and the centred target (the fit of the lasso itself).
    solver : AdmmResult
        Iterations, convergence and residuals.
    l1_penalty : float
    """

    weights: torch.Tensor
    l0: torch.Tensor
    cosine: torch.Tensor
    cosine_centered: torch.Tensor
    solver: AdmmResult
    l1_penalty: float

    def __len__(self) -> int:
        return int(self.weights.shape[0])


@dataclasses.dataclass(frozen=True)
class Splice:
    """A SpLiCE decomposer: concept dictionary, modality means, sparsity penalty and solver settings.

    Build it with :func:`build_splice`. It works on precomputed embeddings only (no model in memory).

    Attributes
    ----------
    vocabulary : ConceptVocabulary
    dictionary : Tensor
        ``(K, d)`` unit-norm concept embeddings, centred with ``concept_mean`` when ``center``.
    image_mean : Tensor or None
        ``(d,)`` mean of normalised image embeddings subtracted before decomposing (None: no centring).
    concept_mean : Tensor or None
        ``(d,)`` mean of the normalised concept embeddings (None: no centring).
    l1_penalty : float
        ``lambda`` of ``1/2 ||C^T w - z||^2 + lambda ||w||_1``.
    admm : AdmmConfig
    model : str
        Identity of the model whose text tower embedded the concepts.
    """

    vocabulary: ConceptVocabulary
    dictionary: torch.Tensor
    image_mean: torch.Tensor | None
    concept_mean: torch.Tensor | None
    l1_penalty: float = 0.1
    admm: AdmmConfig = AdmmConfig()
    model: str = ""

    def __post_init__(self) -> None:
        if self.dictionary.shape[0] != len(self.vocabulary):
            raise InputError(f"{self.dictionary.shape[0]} dictionary rows for {len(self.vocabulary)} concepts")
        check_finite(self.dictionary, "Splice.dictionary", hint="re-embed the vocabulary")
        for name in ("image_mean", "concept_mean"):
            value = getattr(self, name)
            if value is not None:
                check_finite(value, f"Splice.{name}")
                if tuple(value.shape) != (self.dictionary.shape[1],):
                    raise InputError(f"Splice.{name} has shape {tuple(value.shape)}, expected "
                                     f"({self.dictionary.shape[1]},)")
        if isinstance(self.l1_penalty, bool) or not isinstance(self.l1_penalty, (int, float)) or \
                not np.isfinite(self.l1_penalty) or self.l1_penalty < 0:
            raise ConfigError(f"Splice.l1_penalty must be a finite number >= 0, got {self.l1_penalty!r}")
        if not isinstance(self.admm, AdmmConfig):
            raise ConfigError(f"Splice.admm must be an AdmmConfig, got {type(self.admm).__name__}")

    @property
    def center(self) -> bool:
        """Whether embeddings are mean-centred per modality."""
        return self.image_mean is not None

    def with_penalty(self, l1_penalty: float) -> Splice:
        """A copy with another sparsity penalty."""
        return dataclasses.replace(self, l1_penalty=float(l1_penalty))

    def prepare(self, image_emb: torch.Tensor) -> torch.Tensor:
        """The targets ``(n, d)`` of the decomposition: normalised, centred with ``image_mean``, renormalised."""
        image_emb = torch.as_tensor(image_emb)
        if image_emb.ndim != 2:
            raise InputError(f"image_emb must be embeddings (n, d), got shape {tuple(image_emb.shape)}")
        check_finite(image_emb, "image_emb")
        if image_emb.shape[-1] != self.dictionary.shape[1]:
            raise InputError(f"embeddings have d={image_emb.shape[-1]} but the dictionary d="
                             f"{self.dictionary.shape[1]} (another model?)")
        return center_embeddings(image_emb, self.image_mean)

    def decompose(self, image_emb: torch.Tensor, progress: bool = False) -> SpliceDecomposition:
        """Decompose embeddings ``(n, d)`` (unnormalised is fine) into concept weights ``(n, K)``."""
        target = self.prepare(image_emb)
        solved = nonneg_lasso_admm(self.dictionary, target, self.l1_penalty, self.admm, progress=progress)
        weights = solved.weights.float().cpu()
        fitted = weights @ self.dictionary.float().cpu()
        dense = F.normalize(image_emb.float().cpu(), dim=-1)
        return SpliceDecomposition(
            weights=weights, l0=(weights > 0).sum(1), solver=solved, l1_penalty=self.l1_penalty,
            cosine=F.cosine_similarity(self.recompose(weights), dense, dim=-1),
            cosine_centered=F.cosine_similarity(fitted, target.cpu(), dim=-1))

    def recompose(self, weights: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings ``(n, d)`` from weights ``(n, K)``: ``normalize(normalize(C^T w) + image_mean)``.

        An all-zero weight vector recomposes to the image mean's direction (or to zero without centring).
        """
        weights = torch.as_tensor(weights)
        if weights.ndim != 2 or weights.shape[1] != self.dictionary.shape[0]:
            raise InputError(f"weights must be (n, {self.dictionary.shape[0]}) (one per concept), got "
                             f"{tuple(weights.shape)}")
        check_finite(weights, "weights")
        fitted = F.normalize(weights.float().cpu() @ self.dictionary.float().cpu(), dim=-1)
        if self.image_mean is None:
            return fitted
        return F.normalize(fitted + self.image_mean.float().cpu(), dim=-1)


def build_splice(bundle: ModelBundle, vocabulary: ConceptVocabulary, image_reference: torch.Tensor | None = None,
                 image_mean: torch.Tensor | None = None, center: bool = True, l1_penalty: float = 0.1,
                 admm: AdmmConfig = AdmmConfig(), template: str = "{}", batch_size: int = 256) -> Splice:
    """Embed a vocabulary with the model's text tower and set up the decomposition.

    Parameters
    ----------
    bundle : ModelBundle
    vocabulary : ConceptVocabulary
        Checked against the tokenizer's context length first (:func:`check_vocabulary`).
    image_reference : Tensor, optional
        ``(n, d)`` image embeddings whose normalised mean is the image mean (e.g. the training split).
    image_mean : Tensor, optional
        ``(d,)`` a precomputed image mean instead (e.g. SpLiCE's published MSCOCO mean).
    center : bool
        Per-modality mean-centring (SpLiCE's default). ``False`` decomposes raw normalised embeddings into raw
        normalised concepts.
    l1_penalty : float
    admm : AdmmConfig
    template : str
        Format string each concept is embedded through (``"{}"``: the bare concept, as SpLiCE).
    batch_size : int
        Texts per text-tower pass.

    Raises
    ------
    VocabularyError
        for concepts longer than the context length.
    ValueError
        with ``center=True`` but neither ``image_reference`` nor ``image_mean``.
    """
    if "{}" not in template:
        raise InputError(f"template must contain '{{}}', got {template!r}")
    check_vocabulary(vocabulary, bundle.tokenizer, template)
    if center and image_reference is None and image_mean is None:
        raise InputError("center=True needs image_reference (image embeddings to average) or image_mean")
    if image_reference is not None:
        check_finite(image_reference, "image_reference")
    if image_mean is not None:
        check_finite(image_mean, "image_mean")
    concepts = F.normalize(encode_texts(bundle, [template.format(c) for c in vocabulary.concepts], batch_size),
                           dim=-1)
    concept_mean = None
    mean = None
    if center:
        concept_mean = concepts.mean(0)
        concepts = F.normalize(concepts - concept_mean, dim=-1)
        mean = image_mean.float().cpu() if image_mean is not None else modality_mean(image_reference.cpu())
        if mean.shape != (concepts.shape[1],):
            raise InputError(f"image mean has shape {tuple(mean.shape)}, expected ({concepts.shape[1]},)")
    return Splice(vocabulary=vocabulary, dictionary=concepts, image_mean=mean, concept_mean=concept_mean,
                  l1_penalty=float(l1_penalty), admm=admm, model=bundle.identity)
