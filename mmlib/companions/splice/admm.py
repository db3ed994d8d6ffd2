"""Batched, device-agnostic solvers of many non-negative lasso problems sharing one dictionary.

For a dictionary ``C`` (``(K, d)``, one atom per row) and targets ``z`` (``(n, d)``), :func:`nonneg_lasso_admm`
solves, for every target at once,

    min_w  1/2 ||C^T w - z||^2 + lambda ||w||_1     subject to  w >= 0

by one of two methods (:class:`AdmmConfig` ``method``):

* ``"active_set"`` (the default): exact, by batched block principal pivoting (Kim & Park 2011) over the whole
  dictionary. Each target keeps a free set ``F`` of atoms; a step solves ``C_F C_F^T w_F = C_F z - lambda`` for
  every target at once (float64 Cholesky of the ``|F| x |F|`` systems, Gram rows computed only for atoms that
  enter), correlates the residuals with all ``K`` atoms (one ``(n, d) x (d, K)`` product, or, for ``d >= 128``
  late in the solve, only the atoms that a Cauchy-Schwarz bound from the last product does not rule out), and
  exchanges the infeasible variables (negative weights leave; atoms correlating above ``lambda + kkt_tol``
  enter, the most correlated first, a few per step; a free set that spans the space takes a simplex pivot
  instead). It stops when the KKT conditions of the full problem hold (to ``kkt_tol`` on the correlations),
  typically after 5-12 steps; the weights are then exact up to rounding (objective gaps of 1e-12 to 1e-9 against
  a tight scikit-learn solve in the benchmark). A target on which it cannot proceed (numerically singular free
  sets even with a small ridge; ``max_pivots`` reached) is handed to ADMM and flagged (``AdmmResult.fallback``);
  ADMM's support then warm-starts the active set once more to polish the solution (kept only if that certifies
  it). On the benchmark's data no target falls back; on small dense problems whose supports reach the rank ``d``
  a few percent do.
* ``"admm"``: scaled-form ADMM with over-relaxation and per-target residual balancing of ``rho``, stopping on the
  primal and dual residuals (Boyd et al. 2011). Over the whole dictionary (``working_set=None``) the ``w``-update's
  ``K x K`` system is reduced by the Woodbury identity to a ``d x d`` one, factorised once (an
  eigendecomposition, so a per-target ``rho`` costs nothing), and each iteration costs ``O(n K d)``. With
  ``working_set=m`` each target is solved on the ``m`` atoms most correlated with it (its own ``m x m`` system,
  Cholesky-factorised), then the KKT conditions of the full problem are checked against the whole dictionary,
  the worst violators swapped in, the set doubled when the support fills half of it, and the problem re-solved
  (warm-started) until no violation remains.

Both are cross-checked against scikit-learn's ``Lasso(positive=True, fit_intercept=False)``
(:func:`nonneg_lasso_sklearn`, whose objective is ours divided by ``d``); :func:`compare_with_sklearn` tabulates
that check. Nothing here knows about CLIP: SpLiCE (:mod:`mmlib.companions.splice.model`) is one user.

Note on scaling [ours]: SpLiCE's code minimises ``||C^T w - z||^2 + l1_penalty ||w||_1`` (no 1/2), so its
``l1_penalty`` is twice the ``l1_penalty`` (lambda) used here.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import tqdm

from mmlib.core.errors import ArgumentTypeError, ConfigError, InputError
from mmlib.core.validation import at_least, between, check_finite, greater_than, validate_config

__all__ = ["AdmmConfig", "AdmmResult", "nonneg_lasso_admm", "nonneg_lasso_sklearn", "lasso_objective",
           "compare_with_sklearn"]

@dataclasses.dataclass(frozen=True)
class AdmmConfig:
    """How :func:`nonneg_lasso_admm` runs (none of these change the solution beyond the tolerances).

    ``method``, ``kkt_tol``, ``max_pivots`` and ``chunk_size`` apply to the active-set method; the others to ADMM
    (which also serves the active-set method's fallback).

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
        A concept outside the working set (ADMM) or the free set (active set) violates optimality if its
        correlation with the residual exceeds ``l1_penalty + kkt_tol`` (for the active set, ``kkt_tol`` is raised
        to the rounding error of the correlations where that is larger: ``4 eps sqrt(d) max ||c_k|| max ||z||``,
        about ``4e-6`` for unit vectors in float32 at ``d = 64``).
    max_rounds : int
        Working-set rounds before giving up on the KKT check (reported per embedding).
    chunk_size : int
        Embeddings solved together (memory: a few ``(chunk_size, K)`` tensors).
    method : {"active_set", "admm"}
        The exact batched active-set method (block principal pivoting) or ADMM; see the module docstring.
    max_pivots : int
        Active-set steps per embedding before it is handed to ADMM (flagged in ``AdmmResult.fallback``; ADMM's
        solution then warm-starts the active set once more, to polish it).
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
    kkt_tol: float = 1e-6
    max_rounds: int = 30
    chunk_size: int = 128
    method: Literal["active_set", "admm"] = "active_set"
    max_pivots: int = 50

    def __post_init__(self) -> None:
        validate_config(self)  # the types first, so that the checks below can compare
        if self.rho is not None and self.rho <= 0:
            raise ConfigError(f"rho must be positive (or None), got {self.rho}")
        if self.balance <= 1.0:
            raise ConfigError(f"balance must exceed 1, got {self.balance}")
        if not 1.0 <= self.relaxation < 2.0:
            raise ConfigError(f"relaxation must lie in [1, 2), got {self.relaxation}")
        for name in ("max_iter", "check_every", "max_rounds", "chunk_size", "max_pivots"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.working_set is not None and self.working_set < 1:
            raise ConfigError(f"working_set must be a positive integer or None, got {self.working_set}")
        validate_config(self, rho=greater_than(0.0), relaxation=between(1.0, 2.0, high_open=True),
                        max_iter=at_least(1), eps_abs=at_least(0.0), eps_rel=at_least(0.0), check_every=at_least(1),
                        balance=greater_than(1.0), working_set=at_least(1), kkt_tol=at_least(0.0),
                        max_rounds=at_least(1), chunk_size=at_least(1), max_pivots=at_least(1))


@dataclasses.dataclass(frozen=True)
class AdmmResult:
    """Solutions of ``n`` non-negative lasso problems.

    Attributes
    ----------
    weights : Tensor
        ``(n, K)`` non-negative, exactly sparse (the active-set solution, or the ADMM ``z`` iterate), on the
        targets' device.
    iterations : Tensor
        ``(n,)`` active-set steps plus ADMM iterations (summed over working-set rounds).
    converged : Tensor
        ``(n,)`` bool: the KKT conditions hold (active set), or residuals within tolerance and, with a working
        set, no KKT violation left (ADMM).
    primal_residual, dual_residual : Tensor
        ``(n,)`` ADMM's last residual norms; for an embedding solved by the active-set method, 0 and its largest
        correlation excess ``max(0, max_k c_k (z - C^T w) - l1_penalty)`` over the atoms off the free set (within
        the tolerance, see ``AdmmConfig.kkt_tol``).
    fallback : Tensor
        ``(n,)`` bool: the active-set method gave up on the embedding (a numerically singular free set, no
        possible exchange, or ``max_pivots`` reached) and handed it to ADMM. Its weights are then ADMM's, polished
        by the active set where that certified them (then ``primal_residual`` is 0 and ``converged`` means the KKT
        conditions hold; otherwise both are ADMM's). Always False with ``method="admm"``.
    seconds : float
        Wall time of the solve.
    """

    weights: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    primal_residual: torch.Tensor
    dual_residual: torch.Tensor
    fallback: torch.Tensor
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


def _admm_chunk(dictionary: torch.Tensor, targets: torch.Tensor, l1_penalty: float, config: AdmmConfig,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ADMM on one chunk of rows; returns ``weights (b, K)``, iterations, converged, primal, dual."""
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


_GROW = 0.5      # a row admits at most max(_ADMIT_MIN, _GROW |F|) new atoms to its free set per step
_ADMIT_MIN = 8
_BLOCK = 32      # atoms per block when choosing the entering atoms from all K correlations
_BOUND_DIM = 128  # from this dimension on, correlations are bounded from the last exact ones when that is cheaper


def _cholesky_solve(gram: torch.Tensor, rhs: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``gram^{-1} rhs`` per row for ``gram (t, p, p)`` symmetric positive definite and ``rhs (t, p)``.

    A row whose system is numerically singular (duplicate atoms, more free atoms than dimensions) is retried
    with a ridge of ``1e-12``, then ``1e-9``, then ``1e-6`` times ``p`` times its largest diagonal entry (the
    solution of a barely perturbed problem, which the caller must check against the unperturbed one). Returns the
    solutions ``(t, p)``, ``failed (t,)`` (the rows still singular), ``ridged (t,)`` (the rows solved with a
    ridge) and the upper Cholesky factors ``(t, p, p)`` (``gram = U^T U``).
    """
    factor, info = torch.linalg.cholesky_ex(gram, upper=True)  # upper: no transposing copy
    failed = info != 0
    ridged = failed.clone() if bool(failed.any()) else failed
    eye = None
    for scale in (1e-12, 1e-9, 1e-6):
        if not bool(failed.any()):
            break
        if eye is None:
            eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        ridge = scale * gram.shape[-1] * gram[failed].diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-30)
        retry, info_retry = torch.linalg.cholesky_ex(gram[failed] + ridge[:, None, None] * eye, upper=True)
        factor[failed] = retry
        failed = failed.masked_scatter(failed, info_retry != 0)
    return torch.cholesky_solve(rhs.unsqueeze(2), factor, upper=True).squeeze(2), failed, ridged & ~failed, factor


def _exchange(dictionary: torch.Tensor, targets: torch.Tensor, l1_penalty: float, free: torch.Tensor,
              atoms: torch.Tensor, gram: torch.Tensor, rhs: torch.Tensor, leaving: torch.Tensor,
              entering: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The free sets after ``leaving (t, p)`` (bool) leave and ``entering (t, q)`` (atom indices, ``K``: none) enter.

    The sets are kept in slots: ``free (t, p)`` (``K`` marks an empty slot), their atoms ``atoms (t, p', d)``
    (``p' >= p`` slots allocated, so that growing rarely copies), their float64 Gram matrix ``gram (t, p, p)``
    (identity rows and columns at empty slots) and right-hand sides ``rhs (t, p)`` (``c_j z - lambda``, 0 at empty
    slots). Leaving atoms empty their slots, entering ones take the first empty slots, and only the Gram rows and
    right-hand sides of the entering atoms are computed; trailing slots empty in every row are dropped.
    """
    k = dictionary.shape[0]
    t, p = free.shape
    free = free.masked_fill(leaving, k)
    empty = free == k
    entering = entering[:, :int((entering != k).sum(1).max())]       # the entering atoms come first in each row
    need = entering.shape[1] - int(empty.sum(1).min())                 # every row needs that many empty slots
    if need > 0:
        free = F.pad(free, (0, need), value=k)
        gram = F.pad(gram, (0, need, 0, need))
        rhs = F.pad(rhs, (0, need))
        empty = F.pad(empty, (0, need), value=True)
        p += need
        if atoms.shape[1] < p:  # room for the next steps' atoms too
            atoms = F.pad(atoms, (0, 0, 0, max(p + 8, 2 * atoms.shape[1]) - atoms.shape[1]))
    slots = torch.argsort((~empty).to(torch.uint8), dim=1, stable=True)[:, :entering.shape[1]]      # (t, q)
    free = free.scatter(1, slots, entering)
    new = dictionary.index_select(0, entering.clamp_max(k - 1).flatten()).view(t, -1, dictionary.shape[1])
    atoms[torch.arange(t, device=atoms.device).unsqueeze(1), slots] = new
    cross = (new @ atoms[:, :p].transpose(1, 2)).to(gram.dtype)                                   # (t, q, p)
    gram = gram.scatter_(1, slots.unsqueeze(2).expand(-1, -1, p), cross)
    gram = gram.scatter_(2, slots.unsqueeze(1).expand(-1, p, -1), cross.transpose(1, 2))
    rhs = rhs.scatter(1, slots, (new * targets.unsqueeze(1)).sum(2).to(rhs.dtype) - l1_penalty)
    empty = free == k
    occupied = (~empty).any(0)
    used = int(occupied.nonzero().max()) + 1 if bool(occupied.any()) else 0
    if used < p:
        free, gram, rhs, empty = free[:, :used], gram[:, :used, :used], rhs[:, :used], empty[:, :used]
    gram = gram.masked_fill_(empty.unsqueeze(2), 0.0).masked_fill_(empty.unsqueeze(1), 0.0)
    gram.diagonal(dim1=1, dim2=2).add_(empty.to(gram.dtype))
    return free, atoms, gram, rhs.masked_fill_(empty, 0.0)


def _saturated_pivot(dictionary: torch.Tensor, atoms: torch.Tensor, factor: torch.Tensor, free: torch.Tensor,
                     x: torch.Tensor, leaving: torch.Tensor, entering: torch.Tensor, saturated: torch.Tensor,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """A simplex pivot for rows whose free set spans the space (``|F| = d``), is optimal on itself (``x >= 0``)
    and yet has a violating atom ``j`` outside (``entering[:, 0]``).

    Then ``c_j = C_F^T a`` with ``a = G_FF^{-1} C_F c_j``, and moving weight ``s`` onto ``j`` while taking ``s a``
    off ``F`` leaves the residual unchanged and lowers the objective at the rate ``lambda (1 - sum(a)) < 0``
    (``j`` violates: ``c_j r = lambda sum(a) > lambda``), until the first free weight reaches zero (the ratio
    test ``min x_i / a_i`` over ``a_i > 0``): that atom leaves and ``j`` enters, ``|F|`` stays ``d``, and the next
    solve is nonsingular (adding ``j`` instead would make it singular).
    """
    k = dictionary.shape[0]
    rows = (saturated & (entering[:, 0] != k)).nonzero().squeeze(1)
    j = entering[rows, 0]
    column = torch.bmm(atoms[rows, :free.shape[1]], dictionary[j].unsqueeze(2)).to(factor.dtype)   # C_F c_j
    a = torch.cholesky_solve(column, factor[rows], upper=True).squeeze(2)
    members = free[rows] != k
    ratio = torch.where(members & (a > 1e-12), x[rows] / a, math.inf)
    out = ratio.argmin(1)
    leaving = leaving.clone()
    leaving[rows, out] = torch.isfinite(ratio.gather(1, out.unsqueeze(1))).squeeze(1)
    entering = entering.clone()
    entering[rows] = k
    entering[rows, 0] = j
    return leaving, entering


def _active_set_chunk(dictionary: torch.Tensor, norms: torch.Tensor, targets: torch.Tensor, l1_penalty: float,
                      config: AdmmConfig, start: torch.Tensor | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact solutions of one chunk of rows over the whole dictionary by batched block principal pivoting.

    Each row keeps a free set ``F`` of atoms (in slots, see :func:`_exchange`). A step solves
    ``C_F C_F^T w_F = C_F z - lambda`` for every row at once (float64 Cholesky), correlates the residual with
    every atom (one ``(t, d) x (d, K)`` product) and exchanges the infeasible variables: free atoms whose weight
    came out negative leave; atoms outside ``F`` whose correlation exceeds ``lambda + tol`` enter, the most
    correlated first (the best of each of the most violating blocks of ``_BLOCK`` atoms) and at most
    ``max(_ADMIT_MIN, _GROW |F|)`` per step, keeping ``|F| <= d`` (the rank). A row is solved when nothing is
    infeasible: its weights are non-negative and satisfy the KKT conditions of the full problem. When its count
    of infeasible variables has not decreased for three steps, a row exchanges only its infeasible variable of
    highest index (Murty's rule, which makes block principal pivoting finite; Kim & Park 2011). A row whose free
    set spans the space and is optimal on itself takes a simplex pivot instead (:func:`_saturated_pivot`). From
    ``d = _BOUND_DIM`` on, a step whose residual moved little since the last full product bounds every
    correlation by ``corr_ref + ||c_k|| ||r - r_ref||`` and computes exactly only those that may exceed the
    threshold. ``tol`` is ``kkt_tol``, or the rounding error of the row's correlations where larger. A row whose
    free-set system needed a ridge (:func:`_cholesky_solve`) is solved only if its free atoms also satisfy
    ``c_j (z - C^T w) = lambda`` to ``tol`` in the unperturbed system.

    Parameters
    ----------
    dictionary : Tensor
        ``(K, d)``.
    norms : Tensor
        ``(K',)`` the atoms' norms, zero-padded to ``K'``, a multiple of ``_BLOCK`` above ``K``.
    targets : Tensor
        ``(b, d)``.
    start : Tensor, optional
        ``(b, K)`` weights whose support (at most ``d`` atoms, the largest) is the first free set (a warm start).

    Returns
    -------
    weights : Tensor
        ``(b, K)``.
    steps : Tensor
        ``(b,)`` long.
    solved : Tensor
        ``(b,)`` bool (rows not solved: singular systems even with a ridge, no exchange possible, or
        ``max_pivots`` reached).
    violation : Tensor
        ``(b,)`` ``max(0, max_k corr(c_k, z - C^T w) - lambda)`` over the atoms outside the free set (at most the
        tolerance for a solved row).
    """
    b, d = targets.shape
    k, k_pad = dictionary.shape[0], norms.shape[0]
    device, dtype, exact = targets.device, targets.dtype, torch.float64
    # per row (so that a row's answer does not depend on the rows solved beside it): kkt_tol, or the rounding
    # error of its correlations where larger; (b, 1)
    rounding = 4 * torch.finfo(dtype).eps * math.sqrt(d) * float(norms.max()) if k else 0.0
    tol = torch.linalg.vector_norm(targets, dim=1, keepdim=True).mul_(rounding).clamp_min_(config.kkt_tol)
    threshold = tol + l1_penalty
    cap = min(d, k)
    bounded = d >= _BOUND_DIM
    weights = torch.zeros(b, k, dtype=dtype, device=device)
    steps = torch.zeros(b, dtype=torch.long, device=device)
    solved = torch.zeros(b, dtype=torch.bool, device=device)
    violation = torch.zeros(b, dtype=dtype, device=device)
    order = torch.arange(1, k_pad + 1, device=device)                   # Murty's rule: the highest index first
    # (b, K') buffers, allocated once (fresh large allocations page-fault): the excess correlations (tail -inf),
    # scratch, and the excess at the reference residual
    buffer = torch.full((b, k_pad), -math.inf, dtype=dtype, device=device)
    scratch = torch.empty(b, k_pad, dtype=dtype, device=device)
    saved, spare = (torch.empty(b, k_pad, dtype=dtype, device=device) for _ in range(2)) if bounded else (None, None)
    rows = torch.arange(b, device=device)
    free = torch.full((b, 0), k, dtype=torch.long, device=device)
    atoms = targets.new_zeros(b, 0, d)
    gram = torch.zeros(b, 0, 0, dtype=exact, device=device)
    best = torch.full((b,), k_pad + 1, dtype=torch.long, device=device)
    patience = torch.full((b,), 3, dtype=torch.long, device=device)
    rhs = torch.zeros(b, 0, dtype=exact, device=device)
    reference = reference_excess = None
    v = targets
    if start is not None:
        top, chosen = start.topk(min(cap, int((start > 0).sum(1).max())), dim=1)
        free, atoms, gram, rhs = _exchange(dictionary, targets, l1_penalty, free, atoms, gram, rhs, free == k,
                                           chosen.masked_fill_(top <= 0, k))
    for step in range(1, config.max_pivots + 1):
        t, p = free.shape
        pad = free == k
        if p:
            x, failed, ridged, factor = _cholesky_solve(gram, rhs)
            if bool(failed.any()):  # given up below; keep their numbers finite meanwhile
                x = x.masked_fill(failed.unsqueeze(1), 0.0)
            residual = v - torch.bmm(x.to(dtype).unsqueeze(1), atoms[:, :p]).squeeze(1)
        else:
            x = factor = torch.zeros(t, 0, dtype=exact, device=device)
            failed = ridged = torch.zeros(t, dtype=torch.bool, device=device)
            residual = v

        # Correlations in excess of lambda + tol: all K of them (`excess`), or the few that may be positive
        # (`candidates`, `found`); -inf for the free atoms (their KKT conditions hold by construction).
        candidates = None
        if reference is not None:
            drift = torch.linalg.vector_norm(residual - reference, dim=1, keepdim=True)
            # worth it when at most K / 32 atoms per row may exceed the threshold: estimated on every 16th first
            sample = torch.addcmul(reference_excess[:, ::16], drift, norms[::16])
            if int((sample > 0).sum(1).max()) * 16 * 32 <= 2 * k:
                bound = torch.addcmul(reference_excess, drift, norms, out=scratch[:t]).scatter_(1, free, -math.inf)
                n_candidates = int(torch.gt(bound, 0.0, out=spare[:t]).sum(1).max())
            else:
                n_candidates = k
            if n_candidates * 32 <= k:
                top_bound, candidates = bound.topk(max(n_candidates, 1), dim=1)
                near = dictionary.index_select(0, candidates.clamp_max(k - 1).flatten()).view(t, -1, d)
                found = torch.bmm(near, residual.unsqueeze(2)).squeeze(2)
                found = found.sub_(threshold).masked_fill_(top_bound <= 0, -math.inf)
                n_violating = (found > 0).sum(1)
                largest = found.amax(1)
        if candidates is None:
            excess = buffer[:t]
            torch.mm(residual, dictionary.T, out=excess[:, :k])
            excess[:, :k].sub_(threshold)
            if bounded:
                reference, reference_excess = residual, saved[:t].copy_(excess)
            excess.scatter_(1, free, -math.inf)
            n_violating = torch.gt(excess, 0.0, out=scratch[:t]).sum(1).to(torch.long)
            block_max = excess.view(t, -1, _BLOCK).amax(2)                             # (t, K' / block)
            largest = block_max.amax(1)
        leaving = x < 0
        n_infeasible = n_violating + leaving.sum(1)
        done = (n_infeasible == 0) & ~failed
        if bool(ridged.any()):  # solved with a ridge: certify c_j r = lambda on F on the unperturbed system
            off = torch.bmm(gram[ridged], x[ridged].unsqueeze(2)).squeeze(2).sub_(rhs[ridged]).abs_().amax(1)
            done[ridged] &= off <= tol[ridged].squeeze(1)

        improved = n_infeasible < best
        best = torch.where(improved, n_infeasible, best)
        patience = torch.where(improved, 3, patience - 1)
        n_leaving = leaving.sum(1)
        kept = p - pad.sum(1) - n_leaving
        room = torch.minimum(cap - kept, (kept * _GROW).long().clamp_min(_ADMIT_MIN)).clamp_min(0)
        saturated = (room == 0) & (n_leaving == 0) & (n_violating > 0)       # at the rank, optimal on F only
        admit = torch.minimum(n_violating, torch.where(saturated, 1, room))
        if candidates is None:  # the most violating atom of each of the q most violating blocks
            q = min(max(int(admit.max()), 1), block_max.shape[1])
            top, blocks = block_max.topk(q, dim=1)
            columns = blocks.unsqueeze(2) * _BLOCK + torch.arange(_BLOCK, device=device)   # (t, q, block)
            within = excess.gather(1, columns.view(t, -1)).view(t, q, _BLOCK).argmax(2, keepdim=True)
            entering = columns.gather(2, within).squeeze(2)
        else:
            q = min(max(int(admit.max()), 1), candidates.shape[1])
            top, position = found.topk(q, dim=1)
            entering = candidates.gather(1, position)
        entering = entering.masked_fill_((top <= 0) | (torch.arange(q, device=device) >= admit[:, None]), k)
        backup = patience < 0
        if bool(backup.any()):  # Murty: exchange the infeasible variable of highest index only
            if candidates is None:
                top_in = ((excess > 0) * order).amax(1) - 1                             # -1: none
            else:
                top_in = torch.where(found > 0, candidates, -1).amax(1)
            top_out = torch.where(leaving, free, -1).amax(1) if p else torch.full_like(top_in, -1)
            # at the rank an atom can only enter by a simplex pivot (saturated rows); else the free-set system
            # would turn singular: a row with |F| = rank and a negative weight drops that one instead
            full = kept + n_leaving >= cap
            out = (top_out > top_in) | (full & (top_out >= 0))
            leaving = torch.where(backup[:, None], leaving & (free == top_out[:, None]) & out[:, None], leaving)
            single = torch.full_like(entering, k)
            single[:, 0] = torch.where(out | (full & ~saturated), k, top_in)
            entering = torch.where(backup[:, None], single, entering)
        if bool(saturated.any()):
            leaving, entering = _saturated_pivot(dictionary, atoms, factor, free, x, leaving, entering, saturated)
        stalled = ~leaving.any(1) & (entering == k).all(1)                       # nothing can move: give up
        finished = done | failed | stalled | (step == config.max_pivots)
        if bool(finished.any()):
            where = rows[finished]
            done_free = free[finished]                      # (f, p): each atom at most once per row, K: empty
            member = done_free != k
            weights[where.unsqueeze(1).expand_as(done_free)[member], done_free[member]] = \
                x[finished][member].clamp_min(0.0).to(dtype)
            steps[where] = step
            solved[where] = done[finished]
            violation[where] = (largest[finished] + tol[finished].squeeze(1)).clamp_min(0.0).to(dtype)
            keep = ~finished
            if not bool(keep.any()):
                break
            rows, v, free, rhs, gram = rows[keep], v[keep], free[keep], rhs[keep], gram[keep]
            atoms = atoms[:, :p][keep]  # the used slots only: a full copy is large at d = 512
            tol, threshold = tol[keep], threshold[keep]
            leaving, entering, best, patience = leaving[keep], entering[keep], best[keep], patience[keep]
            if reference is not None:
                reference, reference_excess = reference[keep], reference_excess[keep]

        free, atoms, gram, rhs = _exchange(dictionary, v, l1_penalty, free, atoms, gram, rhs, leaving, entering)
    return weights, steps, solved, violation


def _solve_chunk(dictionary: torch.Tensor, norms: torch.Tensor, targets: torch.Tensor, l1_penalty: float,
                 config: AdmmConfig) -> tuple[torch.Tensor, ...]:
    """Solve one chunk of rows ``targets (b, d)`` over ``dictionary (K, d)`` (``norms (K',)``, see
    :func:`_active_set_chunk`).

    Returns ``weights (b, K)``, ``iterations (b,)``, ``converged (b,)``, ``primal (b,)``, ``dual (b,)`` and
    ``fallback (b,)`` (the rows the active-set method handed to ADMM), as in :class:`AdmmResult`.
    """
    if config.method == "admm":
        weights, iterations, converged, primal, dual = _admm_chunk(dictionary, targets, l1_penalty, config)
        return weights, iterations, converged, primal, dual, torch.zeros_like(converged)
    weights, iterations, converged, dual = _active_set_chunk(dictionary, norms, targets, l1_penalty, config)
    primal = torch.zeros_like(dual)
    fallback = converged.logical_not()
    if bool(fallback.any()):  # hard rows (supports near the rank, duplicate atoms): ADMM, then polished
        rest = fallback.nonzero().squeeze(1)
        w, extra, ok, pr, du = _admm_chunk(dictionary, targets[rest], l1_penalty, config)
        polished, more, exact_ok, violation = _active_set_chunk(dictionary, norms, targets[rest], l1_penalty, config,
                                                                start=w)
        weights[rest] = torch.where(exact_ok.unsqueeze(1), polished, w)
        converged[rest] = ok | exact_ok
        iterations[rest] += extra + more
        primal[rest] = torch.where(exact_ok, 0.0, pr)
        dual[rest] = torch.where(exact_ok, violation, du)
    return weights, iterations, converged, primal, dual, fallback


def _require_finite(x: torch.Tensor, name: str) -> None:
    """:func:`~mmlib.core.validation.check_finite` at the cost of one summation.

    A non-finite entry makes the sum non-finite, so the full scan (and its error naming the first bad entry) runs
    only when the sum is.
    """
    if (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x.sum()).all()):
        check_finite(x, name)


def nonneg_lasso_admm(dictionary: torch.Tensor, targets: torch.Tensor, l1_penalty: float,
                      config: AdmmConfig = AdmmConfig(), progress: bool = False) -> AdmmResult:
    """Solve ``min_w 1/2 ||C^T w - z||^2 + l1_penalty ||w||_1, w >= 0`` for many targets at once.

    By ``config.method``: the exact active-set method (the default; an embedding on which it gives up is handed
    to ADMM and flagged in ``AdmmResult.fallback``) or ADMM; see the module docstring. Deterministic for given
    inputs, ``config`` and thread count.

    Parameters
    ----------
    dictionary : Tensor
        ``(K, d)`` concept embeddings ``C`` (rows), float32 or float64. Its device and dtype are used for the
        computation.
    targets : Tensor
        ``(n, d)`` embeddings ``z`` to decompose, real floating point (converted to the dictionary's device and
        dtype).
    l1_penalty : float
        ``lambda``, finite and ``>= 0``.
    config : AdmmConfig
    progress : bool
        A tqdm bar over chunks.

    Returns
    -------
    AdmmResult
        ``weights`` ``(n, K)`` in the dictionary's dtype on the targets' device, and per embedding ``(n,)``
        ``iterations``, ``converged``, ``primal_residual``, ``dual_residual`` and ``fallback``.

    Raises
    ------
    ArgumentTypeError
        ``dictionary`` or ``targets`` is not a tensor, ``l1_penalty`` not a number, ``config`` not an
        :class:`AdmmConfig`.
    InputError
        Shapes other than ``(K, d)`` and ``(n, d)`` with the same ``d``; a dictionary other than float32 or
        float64, or targets not real floating point; ``l1_penalty`` negative or not finite; norms so large that
        their products overflow the dtype.
    NonFiniteError
        NaN or an infinity in ``dictionary`` or ``targets`` (the first one is named).
    """
    for name, value in (("dictionary", dictionary), ("targets", targets)):
        if not isinstance(value, torch.Tensor):
            raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dictionary.dim() != 2 or targets.dim() != 2 or dictionary.shape[1] != targets.shape[1]:
        raise InputError(f"need dictionary (K, d) and targets (n, d), got {tuple(dictionary.shape)} and "
                         f"{tuple(targets.shape)}")
    if dictionary.dtype not in (torch.float32, torch.float64):  # half precision: no Cholesky, too coarse for KKT
        raise InputError(f"dictionary must be float32 or float64, got {dictionary.dtype}; convert it with .float()")
    if not targets.is_floating_point():
        raise InputError(f"targets must be a real floating-point tensor, got {targets.dtype}")
    _require_finite(dictionary, "dictionary")
    _require_finite(targets, "targets")
    if not isinstance(config, AdmmConfig):
        raise ArgumentTypeError(f"config must be an AdmmConfig, got {type(config).__name__}")
    if isinstance(l1_penalty, torch.Tensor) and l1_penalty.numel() == 1:
        l1_penalty = l1_penalty.item()
    if isinstance(l1_penalty, (bool, np.bool_)) or not isinstance(l1_penalty, numbers.Real):
        raise ArgumentTypeError(f"l1_penalty must be a number, got {l1_penalty!r} ({type(l1_penalty).__name__})")
    penalty = float(l1_penalty)
    if not math.isfinite(penalty) or penalty < 0:
        raise InputError(f"l1_penalty must be a finite number >= 0, got {l1_penalty!r}")
    started = time.perf_counter()
    out_device = targets.device
    v_all = targets.to(device=dictionary.device, dtype=dictionary.dtype)
    n, k = v_all.shape[0], dictionary.shape[0]
    parts: list[tuple[torch.Tensor, ...]] = []
    with torch.inference_mode():
        norms = torch.linalg.vector_norm(dictionary, dim=1)
        scale = max(float(norms.max()) if k else 0.0,
                    float(torch.linalg.vector_norm(v_all, dim=1).max()) if n else 0.0)
        if not scale * scale < torch.finfo(dictionary.dtype).max / 4:  # also catches an overflowed (inf) norm
            raise InputError(f"dictionary and targets have norms up to {scale:.3g}, too large for "
                             f"{dictionary.dtype} (their products overflow); rescale them (unit norm, say)")
        norms = torch.cat([norms, norms.new_zeros(_BLOCK - k % _BLOCK)])           # (K'), K < K' = a block multiple
        bounds = range(0, n, config.chunk_size)
        for start in tqdm.tqdm(bounds, desc="SpLiCE lasso", unit="chunk", disable=not progress):
            parts.append(_solve_chunk(dictionary, norms, v_all[start:start + config.chunk_size], penalty, config))
    if not parts:
        def empty(*shape: int, dtype: torch.dtype = dictionary.dtype) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=out_device)
        return AdmmResult(weights=empty(0, k), iterations=empty(0, dtype=torch.long),
                          converged=empty(0, dtype=torch.bool), primal_residual=empty(0), dual_residual=empty(0),
                          fallback=empty(0, dtype=torch.bool), seconds=time.perf_counter() - started)
    weights, iterations, converged, primal, dual, fallback = (torch.cat(t).to(out_device) for t in zip(*parts))
    return AdmmResult(weights=weights, iterations=iterations, converged=converged, primal_residual=primal,
                      dual_residual=dual, fallback=fallback, seconds=time.perf_counter() - started)


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


def compare_with_sklearn(dictionary: torch.Tensor, targets: torch.Tensor, l1_penalty: float,
                         solvers: Mapping[str, tuple[AdmmConfig, torch.dtype]], support_tol: float = 1e-6
                         ) -> pd.DataFrame:
    """The ADMM solver under several settings against scikit-learn's coordinate descent on the same problems.

    Parameters
    ----------
    dictionary : Tensor
        ``(K, d)`` atoms (used in float64 for the reference and the objectives).
    targets : Tensor
        ``(n, d)`` targets.
    l1_penalty : float
    solvers : mapping
        name -> ``(config, dtype)``: each ADMM run solves in ``dtype`` with ``config``.
    support_tol : float
        A weight above this is in the support.

    Returns
    -------
    DataFrame
        One row per solver, then one for scikit-learn: ``solver``, ``seconds``, ``converged`` (share of targets),
        ``max_abs_diff`` (largest weight difference to scikit-learn), ``same_support`` (share of targets with the
        same support) and ``max_rel_objective_gap`` (largest ``(f_admm - f_sklearn) / f_sklearn``).
    """
    dictionary, targets = dictionary.double(), targets.double()
    started = time.perf_counter()
    reference = nonneg_lasso_sklearn(dictionary, targets, l1_penalty)
    sklearn_seconds = time.perf_counter() - started
    f_ref = lasso_objective(dictionary, targets, reference, l1_penalty)
    rows = []
    for name, (config, dtype) in solvers.items():
        started = time.perf_counter()
        result = nonneg_lasso_admm(dictionary.to(dtype), targets.to(dtype), l1_penalty, config)
        seconds = time.perf_counter() - started
        weights = result.weights.double()
        f_admm = lasso_objective(dictionary, targets, weights, l1_penalty)
        same = ((weights > support_tol) == (reference > support_tol)).all(1)
        rows.append(dict(solver=name, seconds=seconds, converged=float(result.converged.float().mean()),
                         max_abs_diff=float((weights - reference).abs().max()),
                         same_support=float(same.double().mean()),
                         max_rel_objective_gap=float(((f_admm - f_ref) / f_ref).max())))
    rows.append(dict(solver="scikit-learn Lasso(positive=True)", seconds=sklearn_seconds, converged=1.0,
                     max_abs_diff=0.0, same_support=1.0, max_rel_objective_gap=0.0))
    return pd.DataFrame(rows)
