"""The paper profile's GPU budget: FLOP counts of the real model, the GPU-time arithmetic, the totals, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from mmlib.core.errors import InputError
from mmlib.profiles import get_profile
from mmlib.reporting import gpu_budget as gb

#: ViT-B/32's image tower at 224 px costs 4.41 G multiply-adds (open_clip's model profile; the CLIP paper's 4.4
#: "GFLOPs"), i.e. 8.8 GFLOP counted as two FLOPs per multiply-add, as FlopCounterMode counts.
VIT_B32_GMAC = 4.41


def _fake(flops: float, conv: float = 0.0, counted_on: str = "cpu", seconds: float = 0.01) -> gb.Measurement:
    """A measurement that is exactly linear: ``flops`` per unit, ``conv`` of them in convolutions."""
    return gb.Measurement("fake", "unit", counted_on, (1, 2), (flops, 2 * flops), (conv, 2 * conv),
                          (seconds, 2 * seconds))


@pytest.fixture(scope="module")
def fake_measurements() -> gb.Measurements:
    """Hand-made measurements for every probe (distinct round numbers), no model run."""
    probes = {name: _fake(1e9 * (i + 1), conv=0.5e9 * (i + 1) if name == "unet" else 0.0,
                          counted_on=probe.counted_on)
              for i, (name, probe) in enumerate(gb.PROBES.items())}
    decoding = {"cc3m_jpeg": 4e-3, "celeba_jpeg": 2e-3, "world_image": 1e-3, "caption": 5e-5}
    precision = {"T4/matmul": "fp32", "T4/conv": "fp32", "A100/matmul": "fp32", "A100/conv": "tf32"}
    return gb.Measurements(probes, decoding, precision, meta_agreement=1.0, seconds=0.0, machine="test")


def test_image_tower_flops_are_linear_in_the_batch_and_match_the_architecture() -> None:
    measured = gb.measure(probes=["vitb32_image"])
    m = measured.probes["vitb32_image"]
    assert m.sizes == (1, 2) and m.counted_on == "cpu"
    assert m.flops[1] == 2 * m.flops[0]  # exactly linear: no work depends on the batch
    assert m.deviation == 0.0
    assert m.flops_per_unit == pytest.approx(2 * VIT_B32_GMAC * 1e9, rel=0.01)
    # counted on the meta device (no weights) the architecture gives the same count as the CPU run, attention included
    assert measured.meta_agreement == pytest.approx(1.0, abs=1e-9)
    assert all(v > 0 for v in measured.decoding.values())
    assert measured.precision["T4/matmul"] == "fp32"  # the model's weights are float32, as the paper code runs them


def test_gpu_seconds_against_hand_computed_values() -> None:
    assert gb.gpu_seconds(8.1e12 * 0.4 * 60, gb.T4) == pytest.approx(60.0)  # 0.4 x 8.1 TFLOP/s for a minute
    assert gb.gpu_seconds(19.5e12, gb.A100, "fp32", utilisation=0.5) == pytest.approx(2.0)
    assert gb.gpu_seconds(156e12 * 0.25, gb.A100, "tf32", utilisation=0.25) == pytest.approx(1.0)
    assert gb.gpu_seconds(0.0, gb.T4) == 0.0


def test_a_step_and_the_chapter_totals(fake_measurements: gb.Measurements) -> None:
    pairs = 1000
    table = gb.budget_table(pairs, fake_measurements)
    steps, totals = table[table.step != "total"], table[table.step == "total"]
    assert set(totals.chapter) == set(steps.chapter)
    for chapter, group in steps.groupby("chapter"):
        total = totals[totals.chapter == chapter].iloc[0]
        for column in ("T4_min", "A100_min", "cpu_min", "gflop"):
            assert total[column] == pytest.approx(group[column].sum()), (chapter, column)
    # chapter 00 by hand: n_test pairs, one image and one text forward each, decoding and the GPU take turns
    n = get_profile("paper").world.n_test
    image, text = (fake_measurements.probes[p].flops_per_unit for p in ("vitb32_image", "vitb32_text"))
    gpu_s = n * (image + text) / (8.1e12 * gb.UTILISATION)
    cpu_s = n * (1e-3 + 5e-5)
    row = steps[steps.chapter.str.startswith("00")].iloc[0]
    assert row.units == n and row.flops_source == "measured"
    assert row.T4_min == pytest.approx((gpu_s + cpu_s) / 60)
    assert row.T4_bound == ("GPU" if gpu_s >= cpu_s else "CPU decoding")
    # an estimated step with convolutions: its conv share runs in TF32 on the A100
    work = next(s for s in gb.paper_steps(pairs) if "unCLIP" in s.name).work
    unet, vae = (work[p] * fake_measurements.probes[p].flops_per_unit for p in ("unet", "vae_decode"))
    expected = unet * (0.5 / (19.5e12 * 0.4) + 0.5 / (156e12 * 0.4)) + vae / (19.5e12 * 0.4)  # half of it convs
    gen = steps[steps.step.str.contains("unCLIP")].iloc[0]
    assert gen.flops_source == "estimated" and gen.A100_min == pytest.approx(expected / 60)
    # every map is trained on the profile's device (chapter 03's sweep included): no step is left on the CPU
    assert not (steps.T4_bound == "CPU training").any()
    # per chapter, in book order: the same sums; alone: at least as much, and every chapter 00-10 is listed
    chapters = gb.chapter_totals(table, pairs)
    assert [c[:2] for c in chapters.chapter] == [f"{i:02d}" for i in range(11)]
    assert chapters.T4_min.sum() == pytest.approx(steps.T4_min.sum())
    assert (chapters.T4_min_alone >= chapters.T4_min - 1e-12).all()
    assert chapters.set_index("chapter").corpus_pairs.iloc[0] == 0  # chapter 00 needs no corpus


def test_more_pairs_cost_more(fake_measurements: gb.Measurements) -> None:
    small, large = (gb.budget_table(n, fake_measurements) for n in (1000, 2000))
    corpus = small.step.str.contains("embed the corpus")
    assert (large[corpus].T4_min.to_numpy() > small[corpus].T4_min.to_numpy()).all()


@pytest.mark.parametrize("pairs", [-5, 0, True, 2.5, "100"])
def test_bad_pair_counts_raise(pairs: object, fake_measurements: gb.Measurements) -> None:
    with pytest.raises(InputError, match="pairs"):
        gb.budget_table(pairs, fake_measurements)
    with pytest.raises(ValueError):  # InputError is a ValueError
        gb.paper_steps(pairs)


@pytest.mark.parametrize("call", [
    lambda: gb.gpu_seconds(1e12, gb.T4, utilisation=0),
    lambda: gb.gpu_seconds(1e12, gb.T4, utilisation=1.5),
    lambda: gb.gpu_seconds(1e12, gb.T4, utilisation=math.nan),
    lambda: gb.gpu_seconds(-1.0, gb.T4),
    lambda: gb.gpu_seconds(1e12, "V100"),
    lambda: gb.gpu_seconds(1e12, gb.T4, "tf32"),
    lambda: gb.measure_probe("no_such_probe"),
    lambda: gb.measure_probe("vitb32_image", sizes=(1,)),
    lambda: gb.Measurement("x", "unit", "cpu", (1, 1), (1.0, 1.0), (0.0, 0.0), (0.0, 0.0)),
])
def test_bad_input_raises_input_error(call) -> None:
    with pytest.raises(InputError):
        call()


def test_zero_utilisation_is_refused_before_any_work(fake_measurements: gb.Measurements) -> None:
    with pytest.raises(InputError, match="utilisation"):
        gb.budget_table(1000, fake_measurements, utilisation=0.0)


def test_a_count_that_is_not_linear_is_flagged() -> None:
    bent = gb.Measurement("x", "unit", "cpu", (1, 2), (1.0e9, 3.0e9), (0.0, 0.0), (0.0, 0.0))
    assert bent.deviation > gb.LINEARITY_TOLERANCE


def test_cpu_seconds_per_unit_leave_fixed_costs_out() -> None:
    timed = gb.Measurement("x", "unit", "cpu", (1, 2), (1e9, 2e9), (0.0, 0.0), (1.0, 1.5))
    assert timed.cpu_seconds_per_unit == pytest.approx(0.5)  # 0.5 s fixed + 0.5 s per unit
    noisy = gb.Measurement("x", "unit", "cpu", (1, 2), (1e9, 2e9), (0.0, 0.0), (1.0, 0.9))
    assert noisy.cpu_seconds_per_unit == pytest.approx(1.9 / 3)  # no positive slope: pooled


def test_notebook_values_reads_the_paper_branch(tmp_path: Path) -> None:
    cells = ["n_eval = 500  # parameter", "%matplotlib inline\nA, B = 1, 2 / 4",
             "C = 3 if P.is_tiny else 7\nD = Cfg(steps=n_eval, lr=1e-3, other=f())\nE = x.y",
             "F = 1\nF = compute()", "if True:\n    G = 1", "def broken(:"]
    notebook = {"cells": [{"cell_type": "code", "source": c} for c in cells] + [{"cell_type": "markdown",
                                                                                  "source": "H = 1"}]}
    path = tmp_path / "07_x.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    values = gb.notebook_values(path)
    assert values == {"n_eval": 500, "A": 1, "B": 0.5, "C": 7, "D": {"steps": 500, "lr": 1e-3}}
    with pytest.raises(InputError, match="not a Jupyter notebook"):
        (tmp_path / "bad.ipynb").write_text("[]", encoding="utf-8")
        gb.notebook_values(tmp_path / "bad.ipynb")


def test_a_missing_notebook_constant_is_named(tmp_path: Path) -> None:
    for number in ("00", "01", "02", "03", "06", "07", "08", "09", "10"):
        (tmp_path / f"{number}_chapter.ipynb").write_text(json.dumps({"cells": []}), encoding="utf-8")
    with pytest.raises(gb.NotebookConstantError, match="02_chapter.*L1_SWEEP"):
        gb.paper_steps(1000, notebooks=tmp_path)


def test_write_budget(tmp_path: Path, fake_measurements: gb.Measurements) -> None:
    md = gb.write_budget(tmp_path / "out", pairs=1234, measurements=fake_measurements)
    text = md.read_text(encoding="utf-8")
    assert md.name == "gpu_budget.md" and "Corpus: 1,234 pairs" in text and "| 07 adversarial |" in text
    record = json.loads((tmp_path / "out" / "gpu_budget.json").read_text(encoding="utf-8"))
    assert record["pairs"] == 1234 and len(record["chapters"]) == 11
    assert pd.DataFrame(record["steps"]).step.str.contains("total").any()


def test_command_line_refuses_a_negative_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gb.main(["--out", str(tmp_path), "--pairs", "-3"])
    assert exit_info.value.code == 2 and "positive integer" in capsys.readouterr().err
