"""Each benchmark runs at a tiny size and returns well-formed rows; the report writes the Performance page's content.

No timing goal is asserted here (the numbers depend on the machine and its load).
"""

from __future__ import annotations

import math

import pytest

RATIO_KEYS = {"comparison", "goal", "anchor", "ours", "ratio_min", "ratio_median", "ratio_max", "ours_median_s",
              "reference_median_s", "pairs", "threads", "met"}


def tiny_sizes(load_benchmark, tiny_arch) -> dict:
    embed, sae = load_benchmark("bench_embed"), load_benchmark("bench_sae")
    mds, splice = load_benchmark("bench_mds"), load_benchmark("bench_splice")
    return {
        "extraction": embed.Sizes(n=12, batch_size=8, pairs=1, hits=1, arch=tiny_arch, hit_mb=1.0),
        "sae": sae.Sizes(n=200, K=32, k=4, epochs=1, batch_pairs=50, pairs=1, scaling_K=(16, 32), scaling_epochs=1),
        "mds": mds.Sizes(pairs=1000, features=32, chunk=256, distinct=2, timing_pairs=1, scaling_pairs=(500, 1000),
                         scaling_features=(16, 32), scaling_features_pairs=500),
        "splice": splice.Sizes(n=6, k=80, dims=(16,), check_n=3, pairs=1, scaling_k=(40, 80), scaling_n=3),
    }


def check_output(out: dict) -> None:
    assert set(out) >= {"ratios", "tables", "other"}
    for row in out["ratios"]:
        assert RATIO_KEYS <= set(row)
        assert row["ratio_min"] <= row["ratio_median"] <= row["ratio_max"]
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("ratio_median", "ours_median_s",
                                                                    "reference_median_s"))
        assert isinstance(row["met"], bool)
    for table in out["tables"].values():
        assert table["rows"] and table["x"] in table["rows"][0]
        assert all(y in row for row in table["rows"] for y in table["y"])


@pytest.mark.parametrize("name", ["extraction", "sae", "mds", "splice"])
def test_quick_path_at_a_tiny_size(name, load_benchmark, tiny_arch):
    module = load_benchmark({"extraction": "bench_embed", "sae": "bench_sae", "mds": "bench_mds",
                             "splice": "bench_splice"}[name])
    assert module.Sizes.quick() != module.Sizes()  # a quick variant exists and differs from the full one
    out = module.run(tiny_sizes(load_benchmark, tiny_arch)[name], log=lambda msg: None)
    check_output(out)
    if name == "extraction":
        assert out["ratios"][0]["same_result"] is True and out["other"][0]["measurement"].startswith("cache hit")
    if name == "sae":
        row = out["ratios"][0]
        assert row["l0_ours"] == pytest.approx(4) and row["l0_reference"] == pytest.approx(4)
    if name == "splice":
        row = out["ratios"][0]
        assert row["sklearn_gap"] <= 1e-4 and row["sklearn_tol"] in module.TOLERANCES + (module.TIGHT,)


def test_report_writes_markdown_figures_and_json(load_benchmark, tiny_arch, tmp_path):
    report = load_benchmark("report")
    results = report.run_all(quick=True, sizes=tiny_sizes(load_benchmark, tiny_arch), log=lambda msg: None)
    assert len(results["ratios"]) == 4
    md = report.write(results, tmp_path, total_s=1.0)
    text = md.read_text()
    assert "| comparison |" in text and text.count("![") == len(results["tables"])
    for name in results["tables"]:
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert (tmp_path / "results.json").is_file()


def test_splice_fair_tolerance_is_the_loosest_that_matches(load_benchmark):
    splice = load_benchmark("bench_splice")
    concepts, targets = splice.planted(4, 60, 16, seed=1)
    tol, gap, tight = splice.fair_tolerance(concepts, targets, 0.1)
    assert gap <= splice.OBJECTIVE_TOLERANCE
    looser = [t for t in splice.TOLERANCES if t > tol]
    for t in looser:  # every looser tolerance misses the objective
        w = splice.nonneg_lasso_sklearn(concepts, targets, 0.1, tol=t)
        assert splice.relative_gap(concepts, targets, w, tight, 0.1) > splice.OBJECTIVE_TOLERANCE
