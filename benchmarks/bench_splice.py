"""Speed of SpLiCE's batched ADMM (:func:`mmlib.companions.splice.nonneg_lasso_admm`) against scikit-learn's Lasso.

Run with ``python benchmarks/bench_splice.py`` (CPU, offline; a few minutes on 2 cores). It decomposes
``--n`` = 10 000 embeddings into ``--k`` = 10 000 concepts in ``d`` = 64 dimensions (the tiny model's joint
space; target <= 30 s) and then in ``d`` = 512 (ViT-B-32's), and prints:

* the ADMM time with working sets (the default) and, extrapolated from ``--full-n`` embeddings, without;
* scikit-learn's ``Lasso(positive=True, fit_intercept=False)`` timed on the first ``--sklearn-n`` embeddings
  and **extrapolated** linearly to ``--n`` (it solves one embedding at a time), the ratio of the two, and the
  agreement of both solutions on that subset (largest weight difference, relative objective gap).

The data are synthetic, not CLIP embeddings: unit-norm concepts with a decaying spectrum (per-dimension
scale ``i^-1/2``, an anisotropic space like CLIP's) and targets that are normalised sparse non-negative
mixtures of 8 concepts plus noise of norm 0.3; ``--penalty`` 0.1 then gives about 30 non-zero weights per
embedding at d = 64 (SpLiCE's decompositions have 5 to 30). Timings depend on the load of the machine: on a
shared machine, ``--threads 1`` avoids OpenMP threads spinning against other processes.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mmlib.companions.splice import AdmmConfig, lasso_objective, nonneg_lasso_admm, nonneg_lasso_sklearn


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


def run(d: int, args: argparse.Namespace) -> None:
    concepts, targets = planted(args.n, args.k, d, seed=d)
    print(f"\n--- d = {d}: {args.n} embeddings x {args.k} concepts, penalty {args.penalty} ---", flush=True)
    config = AdmmConfig()
    result = nonneg_lasso_admm(concepts, targets, args.penalty, config)
    l0 = (result.weights > 0).sum(1).float()
    print(f"ADMM, working sets of {config.working_set}: {result.seconds:8.2f} s   "
          f"(mean L0 {l0.mean():.1f}, mean iterations {result.iterations.float().mean():.0f}, "
          f"converged {result.converged.float().mean():.1%})", flush=True)
    if args.full_n > 0:
        full = nonneg_lasso_admm(concepts, targets[:args.full_n], args.penalty, AdmmConfig(working_set=None,
                                                                                          chunk_size=1024))
        print(f"ADMM, whole vocabulary  : {full.seconds / args.full_n * args.n:8.2f} s   extrapolated from "
              f"{args.full_n} embeddings ({full.seconds:.2f} s; mean iterations "
              f"{full.iterations.float().mean():.0f})", flush=True)
    m = args.sklearn_n
    started = time.perf_counter()
    reference = nonneg_lasso_sklearn(concepts, targets[:m], args.penalty, tol=1e-8)
    sk = time.perf_counter() - started
    sk_total = sk / m * args.n
    print(f"scikit-learn Lasso      : {sk_total:8.2f} s   EXTRAPOLATED from {m} embeddings "
          f"({sk:.2f} s, {1000 * sk / m:.0f} ms per embedding)")
    print(f"ratio sklearn / ADMM    : {sk_total / result.seconds:8.1f}x   (target for d = 64: ADMM <= 30 s)")
    ours = lasso_objective(concepts, targets[:m], result.weights[:m], args.penalty)
    ref = lasso_objective(concepts, targets[:m], reference, args.penalty)
    print(f"agreement on those {m}  : max |w_admm - w_sklearn| = "
          f"{float((result.weights[:m].double() - reference).abs().max()):.1e}, relative objective gap "
          f"{float(((ours - ref) / ref).max()):.1e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="embeddings")
    parser.add_argument("--k", type=int, default=10_000, help="concepts")
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--penalty", type=float, default=0.1)
    parser.add_argument("--sklearn-n", type=int, default=20, help="embeddings solved by scikit-learn")
    parser.add_argument("--full-n", type=int, default=200,
                        help="embeddings for the whole-vocabulary ADMM (0 to skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    for d in args.dims:
        run(d, args)


if __name__ == "__main__":
    main()
