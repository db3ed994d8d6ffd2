"""SpLiCE: sparse, non-negative decompositions of CLIP embeddings into concept embeddings.

Bhalla et al. (2024), "Interpreting CLIP with Sparse Linear Concept Embeddings (SpLiCE)". An image
embedding ``z`` (``(d,)``) is written, without any training, as a sparse non-negative combination of the text
embeddings of a word vocabulary (the rows of a *concept dictionary* ``C``, ``(K, d)``):

    min_w  1/2 ||C^T w - z||^2 + lambda ||w||_1     subject to  w >= 0.

As in SpLiCE, both modalities are mean-centred first (image embeddings with an image mean, concepts with the
concept mean, each then renormalised) -- a named parameter here (``center``), because the modality gap makes
it matter. The decomposition is recomposed into an embedding by adding the image mean back.

The solver is a batched, device-agnostic ADMM in torch (:func:`nonneg_lasso_admm`; scaled form with
over-relaxation and per-embedding residual balancing of ``rho``, stopping on the primal and dual residuals).
Over the whole vocabulary (``working_set=None``) the ``w``-update's ``K x K`` system is reduced by the Woodbury
identity to a ``d x d`` one, factorised once (an eigendecomposition, so a per-embedding ``rho`` costs nothing),
and each iteration costs ``O(n K d)``. With ``working_set=m`` (the default, ``m = 64``) each embedding is
solved on the ``m`` concepts most correlated with it (its own ``m x m`` system, Cholesky-factorised), then the
optimality (KKT) conditions of the full problem are checked against the whole vocabulary (``O(n K d)``), the
worst violators swapped in, the set doubled when the support fills half of it, and the problem re-solved
(warm-started) until no violation remains: the same solution, at ``O(n m^2)`` per iteration, about ten times
faster for ``K = 10^4``. Both are cross-checked against scikit-learn's ``Lasso(positive=True,
fit_intercept=False)`` (:func:`nonneg_lasso_sklearn`), whose objective is ours divided by ``d``.

Note on scaling [ours]: SpLiCE's code minimises ``||C^T w - z||^2 + l1_penalty ||w||_1`` (no 1/2), so its
``l1_penalty`` is twice the ``l1_penalty`` (lambda) used here.

Helpers cover what the SpLiCE paper does with the decompositions: cosine to the dense embedding and zero-shot
accuracy against sparsity (:func:`sparsity_sweep`), the top concepts of an embedding (:func:`top_concepts`),
concept interventions (:func:`intervene`, :func:`intervention_report`) and spurious-correlation detection
(:func:`class_concept_weights`, :func:`factor_weight_share`, :func:`spurious_concepts`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import tqdm

from mmlib.analysis.zero_shot import zero_shot_accuracy
from mmlib.core.stats import proportion_ci
from mmlib.data.world import CAPTION_PREFIXES, OBJECT_NOUNS, Factor, default_factors, phrase
from mmlib.models.clip import ModelBundle
from mmlib.models.embed import context_length
from mmlib.models.prompts import encode_texts

__all__ = [
    "VocabularyError", "ConceptVocabulary", "world_vocabulary", "read_vocabulary", "check_vocabulary",
    "AdmmConfig", "AdmmResult", "nonneg_lasso_admm", "nonneg_lasso_sklearn", "lasso_objective",
    "modality_mean", "center_embeddings", "Splice", "SpliceDecomposition", "build_splice",
    "sparsity_sweep", "top_concepts", "remove_concepts", "intervene", "intervention_report",
    "class_concept_weights", "factor_weight_share", "spurious_concepts",
]


# ------------------------------------------------------------------------------------------------ vocabulary

_STOPWORDS = frozenset({"a", "an", "the", "of", "on", "in", "by", "to", "that", "is"})

class VocabularyError(ValueError):
    """A concept vocabulary is unusable: empty, with duplicates, blank entries or over-long concepts."""


@dataclasses.dataclass(frozen=True)
class ConceptVocabulary:
    """The ``K`` concepts of a SpLiCE dictionary, with their ground-truth factor where known.

    Attributes
    ----------
    concepts : tuple of str
        The concept texts (embedded as they are, or through a template, see :func:`build_splice`).
    factors : tuple of (str or None)
        Per concept, the world factor it names (``None`` for unknown / filler words); defaults to all
        ``None`` (a vocabulary read from a file).
    values : tuple of (int or None)
        Per concept, the index of the factor value it names (``None`` where unknown).
    source : str
        Where the vocabulary came from (``"world"``, a file path, ...).

    Raises
    ------
    VocabularyError
        if empty, if a concept is blank, or if concepts repeat (the repeated ones are named).
    """

    concepts: tuple[str, ...]
    factors: tuple[str | None, ...] = ()
    values: tuple[int | None, ...] = ()
    source: str = "custom"

    def __post_init__(self) -> None:
        concepts = tuple(str(c) for c in self.concepts)
        object.__setattr__(self, "concepts", concepts)
        if not concepts:
            raise VocabularyError(f"the concept vocabulary ({self.source}) is empty: SpLiCE needs at least one "
                                  "concept")
        blank = [i for i, c in enumerate(concepts) if not c.strip()]
        if blank:
            raise VocabularyError(f"the concept vocabulary ({self.source}) has blank concepts at positions "
                                  f"{blank[:10]}{' ...' if len(blank) > 10 else ''}")
        repeated = [c for c, k in Counter(concepts).items() if k > 1]
        if repeated:
            raise VocabularyError(f"the concept vocabulary ({self.source}) has {len(repeated)} duplicate "
                                  f"concept(s): {', '.join(map(repr, repeated[:20]))}"
                                  f"{' ...' if len(repeated) > 20 else ''}; each concept must appear once")
        for name in ("factors", "values"):
            given = tuple(getattr(self, name))
            if not given:
                given = (None,) * len(concepts)
            if len(given) != len(concepts):
                raise VocabularyError(f"{len(concepts)} concepts but {len(given)} {name}")
            object.__setattr__(self, name, given)

    def __len__(self) -> int:
        return len(self.concepts)

    def index(self, concept: str) -> int:
        """Position of ``concept`` (``KeyError`` with close matches otherwise)."""
        try:
            return self.concepts.index(concept)
        except ValueError:
            close = difflib.get_close_matches(concept, self.concepts, n=5, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise KeyError(f"concept {concept!r} is not in the vocabulary.{hint}") from None

    def indices(self, concepts: Sequence[str] = (), factors: Sequence[str] = ()) -> np.ndarray:
        """Sorted positions of the named ``concepts`` and of every concept of the named ``factors``."""
        known = {f for f in self.factors if f is not None}
        unknown = [f for f in factors if f not in known]
        if unknown:
            raise KeyError(f"no concept of factor(s) {unknown}; factors in this vocabulary: {sorted(known)}")
        picked = {self.index(c) for c in concepts}
        picked |= {i for i, f in enumerate(self.factors) if f is not None and f in set(factors)}
        return np.array(sorted(picked), dtype=np.int64)

    def table(self) -> pd.DataFrame:
        """One row per concept: ``concept``, ``factor``, ``value``."""
        return pd.DataFrame({"concept": self.concepts, "factor": self.factors, "value": self.values})


def world_vocabulary(factors: Sequence[Factor] | None = None, phrases: bool = True,
                     grammar_words: bool = True) -> ConceptVocabulary:
    """The ``tiny`` profile's vocabulary: the words and phrases of the generated world's caption grammar.

    Parameters
    ----------
    factors : sequence of Factor, optional
        The world's factors (default :func:`mmlib.data.world.default_factors`). Every synonym of every value becomes
        a concept labelled with its factor and value.
    phrases : bool
        Also add the caption clause of each clause-type synonym (``"on a black background"``,
        ``"owned by alice"``, ...), labelled like the word.
    grammar_words : bool
        Also add the grammar's filler words (object nouns such as ``"thing"``, prefix nouns such as
        ``"photo"``), with factor ``None``.

    Raises
    ------
    VocabularyError
        if two factors share a synonym (the duplicates are named).
    """
    factors = tuple(default_factors() if factors is None else factors)
    concepts: list[str] = []
    labels: list[str | None] = []
    values: list[int | None] = []
    for f in factors:
        for v, synonyms in enumerate(f.synonyms):
            for word in synonyms:
                concepts.append(word)
                labels.append(f.name)
                values.append(v)
    if phrases:
        for f in factors:
            for v, synonyms in enumerate(f.synonyms):
                for word in synonyms:
                    clause = phrase(f.name, word)
                    if clause != word:
                        concepts.append(clause)
                        labels.append(f.name)
                        values.append(v)
    if grammar_words:
        fillers = list(OBJECT_NOUNS) + [w for p in CAPTION_PREFIXES for w in p.split() if w not in _STOPWORDS]
        for word in fillers:
            if word not in concepts:
                concepts.append(word)
                labels.append(None)
                values.append(None)
    return ConceptVocabulary(tuple(concepts), tuple(labels), tuple(values), source="world")


def read_vocabulary(path: str | Path, size: int | None = None, separator: str | None = ", ") -> ConceptVocabulary:
    """The ``paper`` profile's vocabulary: a user-supplied word list, one concept per line.

    Parameters
    ----------
    path : path
        A UTF-8 text file. Blank lines and lines starting with ``#`` are skipped.
    size : int, optional
        Keep only the last ``size`` concepts (SpLiCE's LAION vocabulary files are sorted by increasing
        frequency and SpLiCE keeps the last 10 000).
    separator : str or None
        If given, only the text before its first occurrence is kept (SpLiCE's files hold ``"word, count"``
        lines); ``None`` keeps whole lines.

    Raises
    ------
    FileNotFoundError, VocabularyError
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} does not exist (one concept per line expected)")
    concepts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if separator:
            text = text.split(separator)[0].strip()
        concepts.append(text)
    if size is not None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        concepts = concepts[-size:]
    return ConceptVocabulary(tuple(concepts), source=str(path))


def _token_lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    """Number of tokens of each text including start/end tokens (before any truncation)."""
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):  # open_clip's SimpleTokenizer: BPE ids without the start/end tokens
        return [len(encode(t)) + 2 for t in texts]
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a Hugging Face tokenizer
    if inner is not None and callable(inner):
        return [len(inner(t)["input_ids"]) for t in texts]
    raise TypeError(f"cannot count tokens with a {type(tokenizer).__name__}: it has neither .encode nor "
                    ".tokenizer")


def check_vocabulary(vocabulary: ConceptVocabulary, tokenizer, template: str = "{}") -> None:
    """Raise :class:`VocabularyError` naming every concept that does not fit the tokenizer's context length.

    open_clip tokenizers silently truncate long texts, so a concept cut short would be embedded as another
    concept; this check makes that an error instead.
    """
    context = context_length(tokenizer)
    texts = [template.format(c) for c in vocabulary.concepts]
    too_long = [(c, n) for c, n in zip(vocabulary.concepts, _token_lengths(tokenizer, texts)) if n > context]
    if too_long:
        listed = ", ".join(f"{c!r} ({n} tokens)" for c, n in too_long[:20])
        raise VocabularyError(f"{len(too_long)} concept(s) exceed the model's context length of {context} "
                              f"tokens (start and end tokens included): {listed}"
                              f"{' ...' if len(too_long) > 20 else ''}")


# ------------------------------------------------------------------------------------------------------ ADMM

@dataclasses.dataclass(frozen=True)
class AdmmConfig:
    """How :func:`nonneg_lasso_admm` runs (none of these change the solution beyond the tolerances).

    Attributes
    ----------
    rho : float or None
        Initial augmented-Lagrangian penalty (per embedding; adapted when ``adaptive_rho``). ``None``:
        ``10 * l1_penalty``, which keeps the soft threshold ``l1_penalty / rho = 0.1`` near the size of typical
        weights (a heuristic that converged fastest on world and synthetic data; SpLiCE uses a fixed 5).
    relaxation : float
        Over-relaxation ``alpha`` in ``[1, 2)`` (Boyd et al. 2011, sec. 3.4.3); 1 is plain ADMM as in SpLiCE.
    max_iter : int
        Iterations per solve (per working-set round).
    eps_abs, eps_rel : float
        Stopping tolerances on the primal and dual residuals (Boyd et al. 2011, sec. 3.3.1):
        ``||w - z|| <= sqrt(m) eps_abs + eps_rel max(||w||, ||z||)`` and
        ``rho ||z - z_prev|| <= sqrt(m) eps_abs + eps_rel ||rho u||``, ``m`` the number of concepts solved for.
    check_every : int
        Residuals are computed (and converged embeddings retired) every this many iterations.
    adaptive_rho : bool
        Residual balancing (Boyd et al. 2011, sec. 3.4.1, ``tau = 2``), per embedding, during the first half of
        ``max_iter``.
    balance : float
        Balancing threshold ``mu``: ``rho`` doubles when the primal residual exceeds ``mu`` times the dual one,
        halves in the opposite case.
    working_set : int or None
        Concepts solved for per embedding in a round (``None``: the whole vocabulary every iteration).
    kkt_tol : float
        A concept outside the working set violates optimality if its correlation with the residual exceeds
        ``l1_penalty + kkt_tol``.
    max_rounds : int
        Working-set rounds before giving up on the KKT check (reported per embedding).
    chunk_size : int
        Embeddings solved together (memory: a few ``(chunk_size, K)`` tensors).
    """

    rho: float | None = None
    relaxation: float = 1.6
    max_iter: int = 2000
    eps_abs: float = 1e-6
    eps_rel: float = 1e-4
    check_every: int = 10
    adaptive_rho: bool = True
    balance: float = 10.0
    working_set: int | None = 64
    kkt_tol: float = 1e-4
    max_rounds: int = 30
    chunk_size: int = 128

    def __post_init__(self) -> None:
        if self.rho is not None and self.rho <= 0:
            raise ValueError(f"rho must be positive (or None), got {self.rho}")
        if self.balance <= 1.0:
            raise ValueError(f"balance must exceed 1, got {self.balance}")
        if not 1.0 <= self.relaxation < 2.0:
            raise ValueError(f"relaxation must lie in [1, 2), got {self.relaxation}")
        for name in ("max_iter", "check_every", "max_rounds", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.working_set is not None and self.working_set < 1:
            raise ValueError(f"working_set must be a positive integer or None, got {self.working_set}")


@dataclasses.dataclass(frozen=True)
class AdmmResult:
    """Solutions of ``n`` non-negative lasso problems.

    Attributes
    ----------
    weights : Tensor
        ``(n, K)`` non-negative, exactly sparse (the ADMM ``z`` iterate), on the targets' device.
    iterations : Tensor
        ``(n,)`` ADMM iterations (summed over working-set rounds).
    converged : Tensor
        ``(n,)`` bool: residuals within tolerance and, with a working set, no KKT violation left.
    primal_residual, dual_residual : Tensor
        ``(n,)`` last residual norms.
    seconds : float
        Wall time of the solve.
    """

    weights: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    primal_residual: torch.Tensor
    dual_residual: torch.Tensor
    seconds: float


def _rowmat(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x (b, p) @ m``, where ``m`` is shared ``(p, q)`` or per row ``(b, p, q)``; returns ``(b, q)``."""
    if m.dim() == 2:
        return x @ m
    return torch.bmm(x.unsqueeze(1), m).squeeze(1)


class _LeastSquares:
    """The ADMM ``w``-update ``w = (D D^T + rho I)^{-1} (D v + rho a)`` for a batch of rows.

    ``D`` is one dictionary ``(m, d)`` shared by all rows, or one per row ``(b, m, d)`` (working sets).

    * Shared, ``m > d``: the Woodbury identity turns the ``m x m`` system into a ``d x d`` one,
      ``w = a + D (v - y) / rho`` with ``y = (rho I + D^T D)^{-1} (D^T D v + rho D^T a)``, at ``O(m d)`` per
      row and iteration. ``D^T D`` is eigendecomposed once, so ``rho`` may differ per row and change freely.
    * Shared, ``m <= d``: the same with the ``m x m`` matrix ``D D^T``.
    * Per row: ``(D_i D_i^T + rho_i I)^{-1}`` is formed by a batched Cholesky factorisation, redone only for
      the rows whose ``rho`` changed; one ``m x m`` product per row and iteration.
    """

    def __init__(self, dictionary: torch.Tensor, targets: torch.Tensor) -> None:
        self.D = dictionary
        self.V = targets
        m, d = dictionary.shape[-2:]
        self.per_row = dictionary.dim() == 3
        self.woodbury = not self.per_row and m > d
        Dt = dictionary.transpose(-1, -2)
        gram = Dt @ dictionary if self.woodbury else dictionary @ Dt   # (d, d), (m, m) or (b, m, m)
        if self.woodbury:
            self.VG = targets @ gram                                   # (b, d)
        else:
            self.c = _rowmat(targets, Dt)                              # (b, m) = D v
        if self.per_row:
            self.gram = gram
            self.inverse = torch.empty_like(gram)
            self.rho = torch.full((gram.shape[0], 1), math.nan, dtype=gram.dtype, device=gram.device)
        else:
            evals, self.evecs = torch.linalg.eigh(gram)
            self.evals = evals.clamp_min(0)

    def select(self, keep: torch.Tensor) -> _LeastSquares:
        """The same operator restricted to rows ``keep``."""
        new = object.__new__(_LeastSquares)
        new.per_row, new.woodbury, new.V = self.per_row, self.woodbury, self.V[keep]
        if self.woodbury:
            new.VG = self.VG[keep]
        else:
            new.c = self.c[keep]
        if self.per_row:
            new.D, new.gram, new.inverse, new.rho = self.D[keep], self.gram[keep], self.inverse[keep], self.rho[keep]
        else:
            new.D, new.evals, new.evecs = self.D, self.evals, self.evecs
        return new

    def _refactor(self, rho: torch.Tensor) -> None:
        """Per-row inverses ``(D_i D_i^T + rho_i I)^{-1}`` for the rows whose ``rho`` changed."""
        changed = (rho != self.rho).squeeze(1)
        if not bool(changed.any()):
            return
        eye = torch.eye(self.gram.shape[-1], dtype=self.gram.dtype, device=self.gram.device)
        system = self.gram[changed] + rho[changed].unsqueeze(-1) * eye
        factor, info = torch.linalg.cholesky_ex(system)
        if bool((info != 0).any()):  # loss of definiteness in low precision: add a little jitter
            factor = torch.linalg.cholesky(system + 1e-6 * system.diagonal(dim1=-2, dim2=-1).mean() * eye)
        self.inverse[changed] = torch.cholesky_inverse(factor)
        self.rho[changed] = rho[changed]

    def w_update(self, a: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        """``w (b, m)`` for ``a = z - u (b, m)`` and per-row penalties ``rho (b, 1)``."""
        if self.per_row:
            self._refactor(rho)
            return _rowmat(self.c + rho * a, self.inverse)
        if not self.woodbury:
            return self._eig_solve(self.c + rho * a, rho)
        y = self._eig_solve(self.VG + rho * (a @ self.D), rho)
        return torch.addmm(a, (self.V - y) / rho, self.D.T)

    def _eig_solve(self, rhs: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        """``(rho I + E diag(evals) E^T)^{-1} rhs`` per row for the shared matrix; ``rhs (b, p)``, ``rho (b, 1)``."""
        return ((rhs @ self.evecs) / (self.evals + rho)) @ self.evecs.T


@dataclasses.dataclass
class _RowsState:
    """Per-row outcome of one ADMM solve (written in place as rows converge)."""

    z: torch.Tensor
    u: torch.Tensor
    rho: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    primal: torch.Tensor
    dual: torch.Tensor


def _admm(op: _LeastSquares, z: torch.Tensor, u: torch.Tensor, rho: torch.Tensor, l1_penalty: float,
          config: AdmmConfig) -> _RowsState:
    """Scaled-form ADMM with over-relaxation on ``b`` rows; converged rows are retired every check."""
    b, m = z.shape
    out = _RowsState(z=z.clone(), u=u.clone(), rho=rho.clone(),
                     iterations=torch.zeros(b, dtype=torch.long, device=z.device),
                     converged=torch.zeros(b, dtype=torch.bool, device=z.device),
                     primal=torch.full((b,), math.inf, dtype=z.dtype, device=z.device),
                     dual=torch.full((b,), math.inf, dtype=z.dtype, device=z.device))
    rows = torch.arange(b, device=z.device)
    alpha = config.relaxation
    sqrt_m = math.sqrt(m)
    adapt_until = config.max_iter // 2 if config.adaptive_rho else 0
    for it in range(1, config.max_iter + 1):
        w = op.w_update(z - u, rho)
        check = it % config.check_every == 0 or it == config.max_iter
        z_prev = z
        t = torch.add(u, w, alpha=alpha) if alpha != 1.0 else w + u
        if alpha != 1.0:
            t.add_(z, alpha=1.0 - alpha)
        z = (t - l1_penalty / rho).clamp_(min=0.0)
        u = t.sub_(z)
        if not check:
            continue
        r = torch.linalg.vector_norm(w - z, dim=1)
        s = rho.squeeze(1) * torch.linalg.vector_norm(z - z_prev, dim=1)
        eps_pri = sqrt_m * config.eps_abs + config.eps_rel * torch.maximum(
            torch.linalg.vector_norm(w, dim=1), torch.linalg.vector_norm(z, dim=1))
        eps_dual = sqrt_m * config.eps_abs + config.eps_rel * rho.squeeze(1) * torch.linalg.vector_norm(u, dim=1)
        done = (r <= eps_pri) & (s <= eps_dual)
        out.iterations[rows] = it
        out.primal[rows] = r
        out.dual[rows] = s
        if it <= adapt_until:
            up = (r > config.balance * s) & ~done
            down = (s > config.balance * r) & ~done
            scale = torch.ones_like(r)
            scale[up] = 2.0
            scale[down] = 0.5
            rho = rho * scale.unsqueeze(1)
            u = u / scale.unsqueeze(1)
        if bool(done.any()) or it == config.max_iter:
            finished = done | (it == config.max_iter)
            idx = rows[finished]
            out.z[idx] = z[finished]
            out.u[idx] = u[finished]
            out.rho[idx] = rho[finished]
            out.converged[idx] = done[finished]
            keep = ~finished
            if not bool(keep.any()):
                break
            rows, z, u, rho = rows[keep], z[keep], u[keep], rho[keep]
            op = op.select(keep)
    return out


def _solve_chunk(dictionary: torch.Tensor, targets: torch.Tensor, l1_penalty: float, config: AdmmConfig,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve one chunk of rows; returns ``weights (b, K)``, iterations, converged, primal, dual."""
    b = targets.shape[0]
    k = dictionary.shape[0]
    rho_init = config.rho if config.rho is not None else (10.0 * l1_penalty if l1_penalty > 0 else 1.0)
    rho0 = torch.full((b, 1), max(rho_init, 1e-6), dtype=targets.dtype, device=targets.device)
    zeros = torch.zeros(b, k, dtype=targets.dtype, device=targets.device)
    if config.working_set is None or config.working_set >= k:
        state = _admm(_LeastSquares(dictionary, targets), zeros, zeros, rho0, l1_penalty, config)
        return state.z, state.iterations, state.converged, state.primal, state.dual

    # Working sets: solve on the m concepts most correlated with the residual, check the KKT conditions of
    # the full problem (corr(d_k, v - C^T w) <= lambda for every concept outside the set), grow, repeat.
    m = config.working_set
    z_full, u_full = zeros, zeros.clone()
    rho = rho0
    iterations = torch.zeros(b, dtype=torch.long, device=targets.device)
    converged = torch.zeros(b, dtype=torch.bool, device=targets.device)
    primal = torch.zeros(b, dtype=targets.dtype, device=targets.device)
    dual = torch.zeros_like(primal)
    scores = targets @ dictionary.T                                   # correlations with the residual (w = 0)
    todo = torch.arange(b, device=targets.device)
    for _ in range(config.max_rounds):
        if m >= k:  # the working set has grown to the whole vocabulary
            state = _admm(_LeastSquares(dictionary, targets[todo]), z_full[todo], u_full[todo], rho[todo],
                          l1_penalty, config)
            z_full[todo], u_full[todo] = state.z, state.u
            iterations[todo] += state.iterations
            converged[todo] = state.converged
            primal[todo], dual[todo] = state.primal, state.dual
            todo = todo[:0]
            break
        ranked = scores[todo].masked_fill(z_full[todo] > 0, math.inf)  # keep the current support
        idx = ranked.topk(m, dim=1).indices                            # (t, m)
        sub = dictionary[idx]                                          # (t, m, d)
        state = _admm(_LeastSquares(sub, targets[todo]), z_full[todo].gather(1, idx),
                      u_full[todo].gather(1, idx), rho[todo], l1_penalty, config)
        z_full[todo] = torch.zeros_like(z_full[todo]).scatter_(1, idx, state.z)
        u_full[todo] = torch.zeros_like(u_full[todo]).scatter_(1, idx, state.u)
        rho[todo] = state.rho
        iterations[todo] += state.iterations
        primal[todo], dual[todo] = state.primal, state.dual
        residual = targets[todo] - _rowmat(state.z, sub)
        round_scores = residual @ dictionary.T
        scores[todo] = round_scores
        outside = round_scores.scatter(1, idx, -math.inf)
        violations = (outside > l1_penalty + config.kkt_tol).sum(1)
        converged[todo] = state.converged & (violations == 0)
        if 2 * int((state.z > 0).sum(1).max()) > m:  # the support fills the set: double it
            m = min(k, 2 * m)
        todo = todo[violations > 0]
        if todo.numel() == 0:
            break
    converged[todo] = False  # KKT violations left after max_rounds
    return z_full, iterations, converged, primal, dual


def nonneg_lasso_admm(dictionary: torch.Tensor, targets: torch.Tensor, l1_penalty: float,
                      config: AdmmConfig = AdmmConfig(), progress: bool = False) -> AdmmResult:
    """Solve ``min_w 1/2 ||C^T w - z||^2 + l1_penalty ||w||_1, w >= 0`` for many targets at once.

    Parameters
    ----------
    dictionary : Tensor
        ``(K, d)`` concept embeddings ``C`` (rows). Its device and dtype are used for the computation.
    targets : Tensor
        ``(n, d)`` embeddings ``z`` to decompose.
    l1_penalty : float
        ``lambda >= 0``.
    config : AdmmConfig
    progress : bool
        A tqdm bar over chunks.

    Returns
    -------
    AdmmResult
        ``weights`` ``(n, K)`` on the targets' device.
    """
    if dictionary.dim() != 2 or targets.dim() != 2 or dictionary.shape[1] != targets.shape[1]:
        raise ValueError(f"need dictionary (K, d) and targets (n, d), got {tuple(dictionary.shape)} and "
                         f"{tuple(targets.shape)}")
    if l1_penalty < 0:
        raise ValueError(f"l1_penalty must be >= 0, got {l1_penalty}")
    started = time.perf_counter()
    out_device = targets.device
    v_all = targets.to(device=dictionary.device, dtype=dictionary.dtype)
    n, k = v_all.shape[0], dictionary.shape[0]
    parts: list[tuple[torch.Tensor, ...]] = []
    with torch.inference_mode():
        bounds = range(0, n, config.chunk_size)
        for start in tqdm.tqdm(bounds, desc="SpLiCE ADMM", unit="chunk", disable=not progress):
            parts.append(_solve_chunk(dictionary, v_all[start:start + config.chunk_size], float(l1_penalty),
                                      config))
    if not parts:
        empty = torch.zeros(0, k, dtype=dictionary.dtype)
        return AdmmResult(empty, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool),
                          torch.zeros(0), torch.zeros(0), 0.0)
    weights, iterations, converged, primal, dual = (torch.cat(t).to(out_device) for t in zip(*parts))
    return AdmmResult(weights=weights, iterations=iterations, converged=converged, primal_residual=primal,
                      dual_residual=dual, seconds=time.perf_counter() - started)


def nonneg_lasso_sklearn(dictionary: torch.Tensor, targets: torch.Tensor, l1_penalty: float,
                         tol: float = 1e-10, max_iter: int = 100_000) -> torch.Tensor:
    """The same problem solved by scikit-learn's coordinate descent (the reference for tests and benchmarks).

    scikit-learn minimises ``1/(2 n_samples) ||y - X w||^2 + alpha ||w||_1``; here ``X = C^T`` has
    ``n_samples = d`` rows, so ``alpha = l1_penalty / d`` gives our objective divided by ``d``.

    Returns
    -------
    Tensor
        ``(n, K)`` float64 weights.
    """
    from sklearn.linear_model import Lasso

    d = dictionary.shape[1]
    x = dictionary.detach().double().cpu().numpy().T          # (d, K)
    y = targets.detach().double().cpu().numpy().T              # (d, n)
    model = Lasso(alpha=float(l1_penalty) / d, positive=True, fit_intercept=False, tol=tol, max_iter=max_iter)
    model.fit(x, y if y.shape[1] > 1 else y[:, 0])
    return torch.from_numpy(np.atleast_2d(model.coef_).copy())


def lasso_objective(dictionary: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                    l1_penalty: float) -> torch.Tensor:
    """``1/2 ||C^T w - z||^2 + lambda ||w||_1`` per row, ``(n,)`` (float64)."""
    dictionary, targets, weights = dictionary.double(), targets.double(), weights.double().to(dictionary.device)
    residual = weights @ dictionary - targets.to(dictionary.device)
    return 0.5 * (residual ** 2).sum(1) + l1_penalty * weights.abs().sum(1)


# --------------------------------------------------------------------------------------------------- SpLiCE

def modality_mean(embeddings: torch.Tensor) -> torch.Tensor:
    """The mean ``(d,)`` of the L2-normalised rows of ``embeddings (n, d)`` (SpLiCE's centring offset)."""
    if len(embeddings) == 0:
        raise ValueError("cannot take the mean of zero embeddings")
    return F.normalize(embeddings.float(), dim=-1).mean(0)


def center_embeddings(embeddings: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    """``normalize(normalize(x) - mean)`` per row (or just ``normalize(x)`` when ``mean`` is None); ``(n, d)``."""
    x = F.normalize(embeddings.float(), dim=-1)
    if mean is None:
        return x
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
            raise ValueError(f"{self.dictionary.shape[0]} dictionary rows for {len(self.vocabulary)} concepts")
        if self.l1_penalty < 0:
            raise ValueError(f"l1_penalty must be >= 0, got {self.l1_penalty}")

    @property
    def center(self) -> bool:
        """Whether embeddings are mean-centred per modality."""
        return self.image_mean is not None

    def with_penalty(self, l1_penalty: float) -> Splice:
        """A copy with another sparsity penalty."""
        return dataclasses.replace(self, l1_penalty=float(l1_penalty))

    def prepare(self, image_emb: torch.Tensor) -> torch.Tensor:
        """The targets ``(n, d)`` of the decomposition: normalised, centred with ``image_mean``, renormalised."""
        if image_emb.shape[-1] != self.dictionary.shape[1]:
            raise ValueError(f"embeddings have d={image_emb.shape[-1]} but the dictionary d="
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
        raise ValueError(f"template must contain '{{}}', got {template!r}")
    check_vocabulary(vocabulary, bundle.tokenizer, template)
    if center and image_reference is None and image_mean is None:
        raise ValueError("center=True needs image_reference (image embeddings to average) or image_mean")
    concepts = F.normalize(encode_texts(bundle, [template.format(c) for c in vocabulary.concepts], batch_size),
                           dim=-1)
    concept_mean = None
    mean = None
    if center:
        concept_mean = concepts.mean(0)
        concepts = F.normalize(concepts - concept_mean, dim=-1)
        mean = image_mean.float().cpu() if image_mean is not None else modality_mean(image_reference.cpu())
        if mean.shape != (concepts.shape[1],):
            raise ValueError(f"image mean has shape {tuple(mean.shape)}, expected ({concepts.shape[1]},)")
    return Splice(vocabulary=vocabulary, dictionary=concepts, image_mean=mean, concept_mean=concept_mean,
                  l1_penalty=float(l1_penalty), admm=admm, model=bundle.identity)


# ------------------------------------------------------------------------------------------------- analyses

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
        raise ValueError(f"weights have {w.shape[1]} columns for a vocabulary of {len(vocabulary)}")
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
        raise ValueError("nothing to remove: name at least one concept or factor")
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
        raise ValueError(f"{weights.shape[0]} decompositions but {len(labels)} labels")
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
