"""Time and peak memory of streaming MDS (:meth:`mmlib.analysis.mds.MDSAccumulator.update`) against a single read of
the same activations.

Run with ``python benchmarks/bench_mds.py`` (CPU; several minutes on 2 cores at 10^6 pairs x 4096 features;
``--quick``: seconds at 65 536 pairs x 1024 features). Activations are generated chunk by chunk
(``ReLU(x - t + b_k)`` on the image side and ``ReLU(x' - t - b_k)`` on the text side, ``x, x'`` standard normal,
``t`` = the 95 % quantile so ~5 % of entries fire, ``b_k`` a per-feature modality preference). So that the whole
activation matrix never exists, a few distinct chunks (each larger than the CPU caches) are generated once, before
timing, and cycled until ``pairs`` pairs have been passed: every pass reads them from main memory.

The comparison (interleaved A-B / B-A pairs, both sides warmed, same torch and BLAS thread limit; :mod:`fair`) is one
pass of ``MDSAccumulator.update`` over all chunks against the anchor: one read of the same chunks (summing each chunk
once). Goal: median ratio <= 2. The scaling tables give the time of one pass and the peak increase of the process's
resident memory during it (the accumulator's buffers; the chunks exist beforehand) against the number of pairs and
of features.
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
from fair import compare, limit_threads, peak_memory, ratio_row  # noqa: E402

from mmlib.analysis.mds import MDSAccumulator  # noqa: E402

GOAL = 2.0
THRESHOLD = 1.6449  # P(N(0, 1) > t) = 5 %
BIAS_STD = 0.3  # spread of the per-feature modality preference b_k


def make_chunks(features: int, chunk: int, distinct: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``distinct`` chunks of ``(chunk, features)`` image and text activations (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    bias = BIAS_STD * torch.randn(features, generator=gen)
    chunks = []
    for _ in range(distinct):
        a_image = torch.randn(chunk, features, generator=gen).add_(bias - THRESHOLD).relu_()
        a_text = torch.randn(chunk, features, generator=gen).add_(-bias - THRESHOLD).relu_()
        chunks.append((a_image, a_text))
    return chunks


def schedule(chunks: list[tuple[torch.Tensor, torch.Tensor]], pairs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The chunks cycled (the last one cut) until they hold ``pairs`` pairs."""
    out, done, i = [], 0, 0
    while done < pairs:
        a_image, a_text = chunks[i % len(chunks)]
        b = min(len(a_image), pairs - done)
        out.append((a_image[:b], a_text[:b]))
        done, i = done + b, i + 1
    return out


def mds_pass(passes: list[tuple[torch.Tensor, torch.Tensor]], features: int) -> MDSAccumulator:
    """Ours: one fresh accumulator updated with every chunk."""
    acc = MDSAccumulator(features)
    for a_image, a_text in passes:
        acc.update(a_image, a_text)
    return acc


def read_pass(passes: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The anchor: one read of every chunk (a sum of each side)."""
    total = 0.0
    for a_image, a_text in passes:
        total += float(a_image.sum()) + float(a_text.sum())
    return total


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Pairs and features of the comparison, chunk rows, distinct chunks, interleaved pairs, threads, scaling."""

    pairs: int = 1_000_000
    features: int = 4096
    chunk: int = 4096
    distinct: int = 8
    timing_pairs: int = 5
    threads: int = 1
    scaling_pairs: tuple[int, ...] = (100_000, 300_000, 1_000_000)
    scaling_features: tuple[int, ...] = (1024, 2048, 4096, 8192)
    scaling_features_pairs: int = 100_000

    @classmethod
    def quick(cls) -> Sizes:
        """The book's variant (seconds)."""
        return cls(pairs=65_536, features=1024, distinct=4, timing_pairs=5, scaling_pairs=(16_384, 65_536, 262_144),
                   scaling_features=(256, 1024, 4096), scaling_features_pairs=16_384)


def _measure(pairs: int, features: int, sizes: Sizes) -> dict[str, Any]:
    passes = schedule(make_chunks(features, sizes.chunk, min(sizes.distinct, -(-pairs // sizes.chunk))), pairs)
    mds_pass(passes[:1], features)  # warm
    started = time.perf_counter()
    mds_pass(passes, features)
    seconds = time.perf_counter() - started
    _, mib = peak_memory(lambda: mds_pass(passes, features))
    return {"pairs": pairs, "features": features, "seconds": seconds, "peak_extra_MiB": mib,
            "M_entries_per_s": pairs * features / seconds / 1e6}


def run(sizes: Sizes = Sizes(), log=print) -> dict[str, Any]:
    """Run the comparison and the scaling; returns ``{"ratios": [row], "tables": {...}}`` (see :mod:`report`)."""
    log(f"MDS: {sizes.pairs} pairs x {sizes.features} features, chunks of {sizes.chunk} ({sizes.distinct} distinct, "
        f"cycled), {sizes.threads} thread(s)")
    passes = schedule(make_chunks(sizes.features, sizes.chunk, sizes.distinct), sizes.pairs)
    fair = compare(lambda: mds_pass(passes, sizes.features), lambda: read_pass(passes), pairs=sizes.timing_pairs,
                   warmup=1, threads=sizes.threads)
    with limit_threads(sizes.threads):
        _, mib = peak_memory(lambda: mds_pass(passes, sizes.features))
    log("  " + fair.line("MDS update / one read"))
    log(f"  peak extra resident memory of one pass: {mib:.0f} MiB")
    row = ratio_row("MDS accumulation", GOAL, f"one read of {sizes.pairs} x {sizes.features} activations",
                    "MDSAccumulator.update", fair, peak_extra_MiB=mib)
    by_pairs, by_features = [], []
    passes = []  # free the comparison's chunks before the scaling runs
    with limit_threads(sizes.threads):
        for p in sizes.scaling_pairs:
            by_pairs.append(_measure(p, sizes.features, sizes))
            log(f"  {p} pairs x {sizes.features}: {by_pairs[-1]['seconds']:.3f} s, "
                f"{by_pairs[-1]['peak_extra_MiB']:.0f} MiB")
        for f in sizes.scaling_features:
            by_features.append(_measure(sizes.scaling_features_pairs, f, sizes))
            log(f"  {sizes.scaling_features_pairs} pairs x {f}: {by_features[-1]['seconds']:.3f} s, "
                f"{by_features[-1]['peak_extra_MiB']:.0f} MiB")
    tables = {
        "mds_vs_pairs": {"title": f"MDS: one pass vs pairs ({sizes.features} features, one run each)",
                         "rows": by_pairs, "x": "pairs", "y": ["seconds", "peak_extra_MiB"]},
        "mds_vs_features": {"title": f"MDS: one pass vs features ({sizes.scaling_features_pairs} pairs, one run "
                                     "each)",
                            "rows": by_features, "x": "features", "y": ["seconds", "peak_extra_MiB"]},
    }
    return {"ratios": [row], "tables": tables, "other": []}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the book's small variant")
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--features", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch and BLAS threads of both sides")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    chosen = {k: getattr(args, k) for k in ("pairs", "features", "threads") if getattr(args, k) is not None}
    row = run(dataclasses.replace(sizes, **chosen))["ratios"][0]
    print(f"median {row['ratio_median']:.3f} (goal <= {GOAL}): {'met' if row['met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
