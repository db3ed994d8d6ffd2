"""Time and peak memory of streaming MDS over 10^6 pairs x 4096 features (target: peak RSS <= 2 GB).

Run with ``python benchmarks/bench_mds.py`` (CPU; a few minutes on 2 cores) or ``--pairs 20000`` for a quick
run. Activations are generated chunk by chunk (``ReLU(x - t + b_k)`` on the image side and
``ReLU(x' - t - b_k)`` on the text side, ``x, x'`` standard normal, ``t`` = the 95 % quantile so ~5 % of
entries fire, ``b_k`` a per-feature modality preference), so the whole activation matrix never exists.
Prints the generation time, the time inside :meth:`mmlib.analysis.mds.MDSAccumulator.update`, the throughput and the
peak resident memory of the process (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch
from tqdm import tqdm

from mmlib.analysis.mds import MDSAccumulator

THRESHOLD = 1.6449  # P(N(0, 1) > t) = 5 %
BIAS_STD = 0.3  # spread of the per-feature modality preference b_k


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=4096, help="pairs per chunk")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(args.seed)
    bias = BIAS_STD * torch.randn(args.features, generator=gen)
    shift_image, shift_text = bias - THRESHOLD, -bias - THRESHOLD
    a_image = torch.empty(args.chunk, args.features)
    a_text = torch.empty(args.chunk, args.features)
    acc = MDSAccumulator(args.features)
    print(f"{args.pairs} pairs x {args.features} features, chunks of {args.chunk}, "
          f"torch threads {torch.get_num_threads()}; RSS before: {peak_rss_mib():.0f} MiB")
    t_gen = t_mds = 0.0
    started = time.perf_counter()
    for start in tqdm(range(0, args.pairs, args.chunk), unit="chunk", mininterval=5):
        b = min(args.chunk, args.pairs - start)
        t0 = time.perf_counter()
        x_i, x_t = a_image[:b], a_text[:b]
        x_i.normal_(generator=gen).add_(shift_image).relu_()
        x_t.normal_(generator=gen).add_(shift_text).relu_()
        t1 = time.perf_counter()
        acc.update(x_i, x_t)
        t_mds += time.perf_counter() - t1
        t_gen += t1 - t0
    total = time.perf_counter() - started
    result = acc.result("paired")
    aggregate = acc.result("aggregate")
    entries = args.pairs * args.features
    print(f"active share        : {float(acc.n_active.sum()) / entries:.3f} of (pair, feature) entries")
    print(f"dead features       : {result.n_dead}")
    print(f"MDS paired mean/std : {result.alive_scores().mean():.4f} / {result.alive_scores().std():.4f}; "
          f"aggregate mean {aggregate.alive_scores().mean():.4f}")
    print(f"generation          : {t_gen:8.1f} s")
    print(f"MDS update          : {t_mds:8.1f} s  ({entries / t_mds / 1e6:.0f} M entries/s)")
    print(f"total               : {total:8.1f} s")
    print(f"peak RSS            : {peak_rss_mib():8.0f} MiB  (target <= 2048 MiB)")
    print(f"load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes slow it down)")


if __name__ == "__main__":
    main()
