"""The fair-comparison harness ``benchmarks/fair.py``: interleaving, warm-up, ratio statistics, thread limits."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info


class FakeClock:
    """A clock that only moves when a fake workload says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sides(clock: FakeClock, ours_times: list[float], reference_times: list[float], log: list[str]):
    """Two callables that log their name and advance the clock by their next time."""
    ours_iter, ref_iter = iter(ours_times), iter(reference_times)

    def ours() -> None:
        log.append("ours")
        clock.now += next(ours_iter)

    def reference() -> None:
        log.append("reference")
        clock.now += next(ref_iter)

    return ours, reference


def test_interleaves_a_b_then_b_a_after_warming_both(load_benchmark):
    fair = load_benchmark("fair")
    clock, log = FakeClock(), []
    # warm-up calls take 100 s: they must not be counted
    ours, reference = sides(clock, [100.0, 2.0, 2.0, 2.0, 2.0], [100.0, 1.0, 1.0, 1.0, 1.0], log)
    result = fair.compare(ours, reference, pairs=4, warmup=1, threads=None, clock=clock)
    expected = ["ours", "reference",                     # warm-up, both sides
                "ours", "reference", "reference", "ours", "ours", "reference", "reference", "ours"]
    assert log == expected and list(result.order) == expected
    assert result.ours_s == (2.0,) * 4 and result.reference_s == (1.0,) * 4
    assert result.ratios == (2.0,) * 4


def test_warmup_count_and_no_warmup(load_benchmark):
    fair = load_benchmark("fair")
    clock, log = FakeClock(), []
    ours, reference = sides(clock, [1.0] * 5, [1.0] * 5, log)
    fair.compare(ours, reference, pairs=2, warmup=3, threads=None, clock=clock)
    assert log[:6] == ["ours", "reference"] * 3 and len(log) == 10
    log.clear()
    ours, reference = sides(clock, [1.0], [1.0], log)
    fair.compare(ours, reference, pairs=1, warmup=0, threads=None, clock=clock)
    assert log == ["ours", "reference"]


def test_ratio_statistics_are_per_pair(load_benchmark):
    fair = load_benchmark("fair")
    clock, log = FakeClock(), []
    ours_times, ref_times = [3.0, 1.0, 6.0, 2.0, 9.0], [1.0, 1.0, 2.0, 4.0, 3.0]
    ours, reference = sides(clock, ours_times, ref_times, log)
    result = fair.compare(ours, reference, pairs=5, warmup=0, threads=None, clock=clock)
    ratios = [o / r for o, r in zip(ours_times, ref_times)]  # 3, 1, 3, 0.5, 3
    assert result.ratios == pytest.approx(ratios)
    assert (result.ratio_min, result.ratio_median, result.ratio_max) == pytest.approx((0.5, 3.0, 3.0))
    assert result.ours_median_s == statistics.median(ours_times)
    assert result.reference_median_s == statistics.median(ref_times)
    summary = result.summary()
    assert summary["pairs"] == 5 and summary["ratio_median"] == pytest.approx(3.0)
    row = fair.ratio_row("x", 2.5, "anchor", "ours", result, extra=1)
    assert row["met"] is False and row["extra"] == 1 and row["goal"] == 2.5
    assert fair.ratio_row("x", 3.0, "a", "o", result)["met"] is True
    assert "median 3.000" in result.line()


def test_real_clock_times_sleeping_sides(load_benchmark):
    import time

    fair = load_benchmark("fair")
    result = fair.compare(lambda: time.sleep(0.02), lambda: time.sleep(0.01), pairs=2, warmup=1, threads=None)
    assert all(t >= 0.02 for t in result.ours_s) and all(t >= 0.01 for t in result.reference_s)
    assert result.ratio_median > 1.2


def blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info()]


def test_both_sides_run_under_the_same_thread_limits_which_are_restored(load_benchmark):
    fair = load_benchmark("fair")
    np.ones((4, 4)) @ np.ones((4, 4))  # load the BLAS
    before_torch, before_blas = torch.get_num_threads(), blas_threads()
    seen = {}

    def record(name):
        def call() -> None:
            seen.setdefault(name, []).append((torch.get_num_threads(), blas_threads()))
        return call

    result = fair.compare(record("ours"), record("reference"), pairs=2, warmup=1, threads=1)
    assert result.threads == 1
    for name in ("ours", "reference"):
        assert len(seen[name]) == 3  # one warm-up and two timed calls, all limited
        for torch_n, blas_n in seen[name]:
            assert torch_n == 1 and all(n == 1 for n in blas_n)
    assert torch.get_num_threads() == before_torch and blas_threads() == before_blas


def test_limits_are_restored_after_an_exception(load_benchmark):
    fair = load_benchmark("fair")
    before = torch.get_num_threads()

    def boom() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fair.compare(boom, boom, threads=1)
    assert torch.get_num_threads() == before


def test_bad_arguments(load_benchmark):
    fair = load_benchmark("fair")
    with pytest.raises(ValueError):
        fair.compare(lambda: None, lambda: None, pairs=0)
    with pytest.raises(ValueError):
        fair.compare(lambda: None, lambda: None, warmup=-1)
    with pytest.raises(ValueError):
        fair.compare(lambda: None, lambda: None, threads=0)


def test_peak_memory_sees_an_allocation(load_benchmark):
    fair = load_benchmark("fair")

    def allocate() -> float:
        block = np.ones(64 * 2 ** 20 // 8)  # 64 MiB, touched
        return float(block[::4096].sum())

    value, mib = fair.peak_memory(allocate)
    assert value > 0 and mib > 32
