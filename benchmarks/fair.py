"""A fair side-by-side timing of two implementations of the same work (ours against a reference).

Every benchmark in this folder compares through :func:`compare`, which

* limits the threads of **both** sides alike for the whole comparison: torch (``torch.set_num_threads``) and the BLAS
  / OpenMP pools that numpy, scipy and scikit-learn use (``threadpoolctl.threadpool_limits``); both are restored
  afterwards;
* warms **both** sides before timing (``warmup`` untimed calls each: lazy imports, allocator pools, JIT caches);
* interleaves the two sides in one process, in pairs alternating A-B, B-A, A-B, ... (ours first in even pairs), so
  that a change of the machine's load hits both sides of a pair alike and neither always runs second;
* times each call with ``time.perf_counter`` (or an injected clock), and reports the per-pair ratio
  ``ours / reference`` as min / median / max, with each side's median time.

A verdict is taken on the **median** of the paired ratios: min/min of unpaired runs flips with the load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["FairResult", "compare", "limit_threads", "peak_memory", "ratio_row"]


@contextlib.contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads and ``threads`` BLAS / OpenMP threads, then restore both.

    ``None`` leaves both settings as they are.
    """
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass(frozen=True)
class FairResult:
    """The times of an interleaved comparison.

    Attributes
    ----------
    ours_s, reference_s : tuple of float
        Seconds of each timed call, pair by pair.
    order : tuple of str
        The sides in the order they were called, warm-up calls included (``"ours"`` / ``"reference"``).
    threads : int or None
        The thread limit both sides ran under.
    """

    ours_s: tuple[float, ...]
    reference_s: tuple[float, ...]
    order: tuple[str, ...]
    threads: int | None

    @property
    def ratios(self) -> tuple[float, ...]:
        """``ours / reference`` of each pair."""
        return tuple(o / r for o, r in zip(self.ours_s, self.reference_s))

    @property
    def ratio_min(self) -> float:
        """The smallest per-pair ratio."""
        return min(self.ratios)

    @property
    def ratio_median(self) -> float:
        """The median per-pair ratio (the verdict)."""
        return statistics.median(self.ratios)

    @property
    def ratio_max(self) -> float:
        """The largest per-pair ratio."""
        return max(self.ratios)

    @property
    def ours_median_s(self) -> float:
        """Our median seconds."""
        return statistics.median(self.ours_s)

    @property
    def reference_median_s(self) -> float:
        """The reference's median seconds."""
        return statistics.median(self.reference_s)

    def summary(self) -> dict[str, Any]:
        """The numbers a report shows (ratio min / median / max, each side's median seconds, pairs, threads)."""
        return {"ratio_min": self.ratio_min, "ratio_median": self.ratio_median, "ratio_max": self.ratio_max,
                "ours_median_s": self.ours_median_s, "reference_median_s": self.reference_median_s,
                "pairs": len(self.ours_s), "threads": self.threads}

    def line(self, label: str = "ours / reference") -> str:
        """One printable line: the ratio's median (min-max) and the medians of both sides."""
        return (f"{label}: median {self.ratio_median:.3f} (min {self.ratio_min:.3f}, max {self.ratio_max:.3f}) "
                f"over {len(self.ours_s)} interleaved pairs; ours {self.ours_median_s:.4f} s, reference "
                f"{self.reference_median_s:.4f} s (medians), threads {self.threads}")


def compare(ours: Callable[[], Any], reference: Callable[[], Any], pairs: int = 5, warmup: int = 1,
            threads: int | None = 1, clock: Callable[[], float] = time.perf_counter) -> FairResult:
    """Time ``ours()`` against ``reference()`` in interleaved pairs (see the module docstring).

    Parameters
    ----------
    ours, reference : callable
        Do the work once each call (anything a call needs fresh, e.g. an empty cache folder, they prepare
        themselves; that time is counted).
    pairs : int
        Timed pairs (>= 1). Pair ``i`` runs ours then the reference for even ``i``, the reverse for odd ``i``.
    warmup : int
        Untimed calls of each side before the first pair (>= 0), alternating ours, reference.
    threads : int or None
        torch and BLAS thread limit of both sides (``None``: leave the process's settings).
    clock : callable
        Seconds (injectable for tests).

    Returns
    -------
    FairResult
    """
    if pairs < 1 or warmup < 0:
        raise ValueError(f"need pairs >= 1 and warmup >= 0, got pairs={pairs}, warmup={warmup}")
    sides = {"ours": ours, "reference": reference}
    order: list[str] = []
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    with limit_threads(threads):
        for _ in range(warmup):
            for name in ("ours", "reference"):
                order.append(name)
                sides[name]()
        for i in range(pairs):
            for name in ("ours", "reference") if i % 2 == 0 else ("reference", "ours"):
                order.append(name)
                started = clock()
                sides[name]()
                times[name].append(clock() - started)
    return FairResult(ours_s=tuple(times["ours"]), reference_s=tuple(times["reference"]), order=tuple(order),
                      threads=threads)


def peak_memory(fn: Callable[[], Any], interval: float = 0.002) -> tuple[Any, float]:
    """Run ``fn()`` once and return its result and the peak increase of this process's resident memory in MiB.

    A thread samples ``/proc/self/statm`` every ``interval`` seconds (Linux; elsewhere ``ru_maxrss``, which only
    sees a new high of the whole process), after glibc's ``malloc_trim`` has returned freed heap memory to the
    system. Untimed: call it apart from :func:`compare`.
    """
    import os
    import resource
    import sys
    import threading

    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def rss() -> float:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * page / 2 ** 20
        except OSError:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10

    try:  # hand freed heap memory back to the system first, so that a re-allocation shows (glibc only)
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    base = rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], rss())
    return result, peak[0] - base



def ratio_row(comparison: str, goal: float, anchor: str, ours: str, result: FairResult, **extra: Any
              ) -> dict[str, Any]:
    """One row of the ratio table: the comparison, its goal (``ours / reference <= goal`` on the median), what was
    compared, the ratio's min / median / max, each side's median seconds and whether the goal is met.
    """
    return {"comparison": comparison, "goal": goal, "anchor": anchor, "ours": ours, **result.summary(),
            "met": bool(result.ratio_median <= goal), **extra}
