"""Speed of SpLiCE's batched non-negative lasso solver (:func:`mmlib.companions.splice.nonneg_lasso_admm`, by default
the exact batched active-set method, ADMM as its fallback and as ``method="admm"``) against scikit-learn's Lasso at
its fair tolerance.

Run with ``python benchmarks/bench_splice.py`` (CPU, offline; a few minutes on 2 cores; ``--quick``: seconds). For
``d`` = 64 (the tiny model's joint space) and ``d`` = 512 (ViT-B-32's) it decomposes ``n`` embeddings into ``k``
concepts both ways and prints the per-pair time ratio ADMM / scikit-learn (goal: median <= 0.1, i.e. ADMM >= 10x
faster), interleaved in A-B / B-A pairs with both sides warmed and both under the same torch **and** BLAS thread
limit (:mod:`fair`), both solving the **same** ``n`` embeddings (nothing is extrapolated).

scikit-learn's ``Lasso(positive=True, fit_intercept=False)`` runs at its *fair* tolerance, found and checked in the
run: on the first ``check_n`` embeddings a tight solve (``tol=1e-8``) gives reference objectives, and the loosest
``tol`` of 1e-2, 1e-3, 1e-4, ... whose objectives are all within 1e-4 (relative) of them is used. Our solver's own
objective gap on the same embeddings (printed as "ADMM's gap"; the active set stops when the KKT conditions hold to
``kkt_tol = 1e-6``, raised to the float32 rounding of the correlations, a few 1e-6) is reported beside it. The
scaling table gives both times against ``k``.

The data are synthetic, not CLIP embeddings: unit-norm concepts with a decaying spectrum (per-dimension
scale ``i^-1/2``, an anisotropic space like CLIP's) and targets that are normalised sparse non-negative
mixtures of 8 concepts plus noise of norm 0.3; ``penalty`` 0.1 then gives about 30 non-zero weights per
embedding at d = 64 (SpLiCE's decompositions have 5 to 30).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from fair import compare, limit_threads, ratio_row  # noqa: E402

from mmlib.companions.splice import lasso_objective, nonneg_lasso_admm, nonneg_lasso_sklearn  # noqa: E402

GOAL = 0.1
OBJECTIVE_TOLERANCE = 1e-4
TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
TIGHT = 1e-8


def planted(n: int, k: int, d: int, seed: int = 0, active: int = 8, noise: float = 0.3
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Concepts ``(k, d)`` and targets ``(n, d)``, float32, unit norm (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, d + 1, dtype=torch.float32) ** -0.5
    concepts = F.normalize(torch.randn(k, d, generator=g) * scale, dim=1)
    pick = torch.randint(0, k, (n, active), generator=g)
    mix = (torch.rand(n, active, generator=g)[..., None] * concepts[pick]).sum(1)
    targets = F.normalize(mix, dim=1) + noise * F.normalize(torch.randn(n, d, generator=g), dim=1)
    return concepts, F.normalize(targets, dim=1)


def relative_gap(concepts: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, reference: torch.Tensor,
                 penalty: float) -> float:
    """The largest relative objective excess of ``weights`` over ``reference`` (per embedding)."""
    ours = lasso_objective(concepts, targets, weights, penalty)
    ref = lasso_objective(concepts, targets, reference, penalty)
    return float(((ours - ref) / ref).max())


def fair_tolerance(concepts: torch.Tensor, targets: torch.Tensor, penalty: float) -> tuple[float, float, torch.Tensor]:
    """The loosest scikit-learn ``tol`` of :data:`TOLERANCES` within :data:`OBJECTIVE_TOLERANCE` of a ``tol=1e-8``
    solve on ``targets``; returns it, its gap and the tight weights.
    """
    tight = nonneg_lasso_sklearn(concepts, targets, penalty, tol=TIGHT)
    for tol in TOLERANCES:
        gap = relative_gap(concepts, targets, nonneg_lasso_sklearn(concepts, targets, penalty, tol=tol), tight,
                           penalty)
        if gap <= OBJECTIVE_TOLERANCE:
            return tol, gap, tight
    return TIGHT, 0.0, tight


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Embeddings, concepts, dimensions, penalty, tolerance-check subset, interleaved pairs, threads, scaling."""

    n: int = 1000
    k: int = 10_000
    dims: tuple[int, ...] = (64, 512)
    penalty: float = 0.1
    check_n: int = 20
    pairs: int = 3
    threads: int = 1
    scaling_k: tuple[int, ...] = (1000, 3000, 10_000, 30_000)
    scaling_n: int = 100

    @classmethod
    def quick(cls) -> Sizes:
        """The book's variant (seconds)."""
        return cls(n=100, k=5000, check_n=10, pairs=3, scaling_k=(1000, 3000, 10_000), scaling_n=50)


def run(sizes: Sizes = Sizes(), log=print) -> dict[str, Any]:
    """Run the comparisons and the scaling; returns ``{"ratios": [rows], "tables": {...}}`` (see :mod:`report`)."""
    rows = []
    for d in sizes.dims:
        concepts, targets = planted(sizes.n, sizes.k, d, seed=d)
        log(f"SpLiCE d={d}: {sizes.n} embeddings x {sizes.k} concepts, penalty {sizes.penalty}, "
            f"{sizes.threads} thread(s)")
        with limit_threads(sizes.threads):
            subset = targets[:sizes.check_n]
            tol, gap, tight = fair_tolerance(concepts, subset, sizes.penalty)
            admm_gap = relative_gap(concepts, subset, nonneg_lasso_admm(concepts, subset, sizes.penalty).weights,
                                    tight, sizes.penalty)
        log(f"  scikit-learn's fair tol {tol:g} (objective gap {gap:.1e} on {sizes.check_n}); ADMM's gap "
            f"{admm_gap:.1e}")
        with limit_threads(sizes.threads):  # untimed: how many embeddings the active set handed to ADMM
            solved = nonneg_lasso_admm(concepts, targets, sizes.penalty)
        fallback, converged = int(solved.fallback.sum()), int(solved.converged.sum())
        log(f"  ours: {fallback} of {sizes.n} embeddings fell back to ADMM, {converged} converged, iterations "
            f"mean {float(solved.iterations.float().mean()):.1f}, max {int(solved.iterations.max())}")
        fair = compare(lambda: nonneg_lasso_admm(concepts, targets, sizes.penalty),
                       lambda: nonneg_lasso_sklearn(concepts, targets, sizes.penalty, tol=tol),
                       pairs=sizes.pairs, warmup=1, threads=sizes.threads)
        log("  " + fair.line("ADMM / scikit-learn"))
        rows.append(ratio_row(f"SpLiCE ADMM, d = {d}", GOAL,
                              f"scikit-learn Lasso(positive), tol={tol:g}, {sizes.n} x {sizes.k}",
                              "nonneg_lasso_admm (active set, ADMM fallback)", fair, sklearn_tol=tol,
                              sklearn_gap=gap, admm_gap=admm_gap, speedup_median=1 / fair.ratio_median,
                              fallback=fallback, converged=converged))
    scaling = []
    d = sizes.dims[0]
    with limit_threads(sizes.threads):
        for k in sizes.scaling_k:
            concepts, targets = planted(sizes.scaling_n, k, d, seed=d)
            nonneg_lasso_admm(concepts, targets[:2], sizes.penalty)  # warm
            started = time.perf_counter()
            nonneg_lasso_admm(concepts, targets, sizes.penalty)
            admm_s = time.perf_counter() - started
            tol = rows[0]["sklearn_tol"]
            started = time.perf_counter()
            nonneg_lasso_sklearn(concepts, targets, sizes.penalty, tol=tol)
            sk_s = time.perf_counter() - started
            scaling.append({"concepts": k, "admm_s": admm_s, "sklearn_s": sk_s})
            log(f"  k={k}: ADMM {admm_s:.3f} s, scikit-learn {sk_s:.3f} s")
    table = {"title": f"SpLiCE: time vs concepts (d = {d}, {sizes.scaling_n} embeddings, scikit-learn at the fair "
                      "tol of the comparison, one run each)",
             "rows": scaling, "x": "concepts", "y": ["admm_s", "sklearn_s"], "ylabel": "seconds"}
    return {"ratios": rows, "tables": {"splice_vs_k": table}, "other": []}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the book's small variant")
    parser.add_argument("--n", type=int, default=None, help="embeddings")
    parser.add_argument("--k", type=int, default=None, help="concepts")
    parser.add_argument("--dims", type=int, nargs="+", default=None)
    parser.add_argument("--pairs", type=int, default=None, help="interleaved timing pairs")
    parser.add_argument("--threads", type=int, default=None, help="torch and BLAS threads of both sides")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    chosen = {k: getattr(args, k) for k in ("n", "k", "pairs", "threads") if getattr(args, k) is not None}
    if args.dims:
        chosen["dims"] = tuple(args.dims)
    for row in run(dataclasses.replace(sizes, **chosen))["ratios"]:
        print(f"{row['comparison']}: median {row['ratio_median']:.3f} (speed-up {row['speedup_median']:.1f}x; goal "
              f"ratio <= {GOAL}): {'met' if row['met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
