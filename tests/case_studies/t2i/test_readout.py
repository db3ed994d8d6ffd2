"""Reading the editing experiment: instrument checks, factor values, fidelity tables, per-reference readouts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmlib.analysis.categories import categorise
from mmlib.case_studies.t2i.readout import (
    SweepReadout,
    accuracy_text,
    activation_mass,
    ci_table,
    empty_class_text,
    empty_classes,
    factor_values,
    fidelity_paragraph,
    fidelity_table,
    fidelity_text,
    mean_ci,
    other_values,
    reproduced_factors,
    reproduced_text,
    scale_summary,
    value_labels,
)
from mmlib.core.stats import mean_bootstrap_ci
from mmlib.data.world import WorldConfig, generate_world


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig(n_train=8, n_val=0, n_test=4, seed=3))


def test_factor_values_and_labels(world):
    idx = np.array([3, 0, 5])
    v = factor_values(world, idx, ("colour", "shape"))
    assert list(v) == ["colour", "shape"]
    np.testing.assert_array_equal(v["colour"], world.latents.values["colour"][idx])
    labels = value_labels(world, idx, "{colour} {shape}\n{size}")
    c, s, z = (world.factor(f).values for f in ("colour", "shape", "size"))
    assert labels[0] == (f"{c[world.latents.values['colour'][3]]} {s[world.latents.values['shape'][3]]}\n"
                         f"{z[world.latents.values['size'][3]]}")
    assert len(labels) == 3
    assert set(factor_values(world, [0])) == {"shape", "colour", "texture", "size", "background", "position"}


def test_other_values_never_keeps_the_value_and_matches_the_old_draw():
    values = np.array([0, 1, 2, 3] * 50)
    out = other_values(values, 4, np.random.default_rng(8))
    assert (out != values).all() and set(out) <= {0, 1, 2, 3}
    rng = np.random.default_rng(8)  # the chapter's draw: (v + U{1..n-1}) mod n
    np.testing.assert_array_equal(out, (values + rng.integers(1, 4, len(values))) % 4)
    assert len(set(out[values == 0])) == 3  # every other value occurs
    with pytest.raises(ValueError, match="at least 2 values"):
        other_values(values, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        other_values(np.array([4]), 4, np.random.default_rng(0))


def _probe(acc, low, high, chance=0.25, factors=("colour", "size")):
    return pd.DataFrame({"factor": list(factors), "n": 100, "accuracy": acc, "ci_low": low, "ci_high": high,
                         "chance": chance})


def test_fidelity_table_and_reproduced_factors():
    real = _probe([1.0, 0.9], [0.96, 0.83], [1.0, 0.95])
    fid = _probe([0.76, 0.34], [0.71, 0.29], [0.81, 0.39])
    shuf = _probe([0.30, 0.27], [0.25, 0.22], [0.35, 0.32])
    t = fidelity_table(real, fid, shuf)
    assert list(t.columns) == ["factor", "chance", "probe on real test images",
                               "probe on generated images (fidelity)", "shuffled"]
    assert t.iloc[0, 3] == "0.760 [0.710, 0.810]" == f"{0.76:.3f} [{0.71:.3f}, {0.81:.3f}]"
    rep = reproduced_factors(fid, shuf)
    assert rep.to_dict() == {"colour": True, "size": False}  # size: 0.29 is not above the shuffled 0.32
    rep2 = reproduced_factors(_probe([0.5, 0.5], [0.3, 0.2], [0.6, 0.6]),
                              _probe([0.3, 0.3], [np.nan, 0.1], [np.nan, 0.15]))
    assert rep2.to_dict() == {"colour": True, "size": False}  # no shuffled bound: chance decides
    assert fidelity_text(fid, shuf, ["size"]) == "size 0.340 [0.290, 0.390] vs 0.270 [0.220, 0.320]"
    assert reproduced_text(rep, "colour") == "it reproduces only colour, the factor the prompts change"
    assert reproduced_text(pd.Series({"colour": True, "size": True}), "colour") == "it reproduces colour and size"
    with pytest.raises(ValueError, match="different factors"):
        fidelity_table(real, fid, _probe([0.3], [0.2], [0.4], factors=("colour",)))
    with pytest.raises(KeyError, match="missing"):
        reproduced_factors(fid.drop(columns="chance"), shuf)
    assert accuracy_text(fid.iloc[1], digits=2) == "0.34 [0.29, 0.39]"


def _edits():
    """Two seeds, three references; group B exists in seed 1 only."""
    rows = []
    for seed in (0, 1):
        for ref in range(3):
            for g in ("A", "B"):
                if g == "B" and seed == 0:
                    continue
                for a in (0.0, 0.5, 1.0):
                    rows.append(dict(seed=seed, ref=ref, group=g, alpha=a, control=float(a >= 1.0 and ref != seed),
                                     shift=a * (ref + 1) / 10 + seed / 100, preserved=np.nan))
    return pd.DataFrame(rows)


def test_sweep_readout_per_reference_gain_and_curve():
    read = SweepReadout(_edits(), np.arange(3))
    np.testing.assert_allclose(read.values("control", "A", 1.0), [0.5, 0.5, 1.0])  # mean over the two seeds
    np.testing.assert_allclose(read.values("control", "B", 1.0), [1.0, 0.0, 1.0])  # seed 1 only
    np.testing.assert_allclose(read.gain("control", "A"), [0.5, 0.5, 1.0])
    assert np.isnan(read.values("control", "C", 1.0)).all()
    np.testing.assert_allclose(SweepReadout(_edits(), np.array([2, 0])).values("control", "A", 1.0), [1.0, 0.5])
    curve = read.curve("shift", ["B", "A", "C"], (0.0, 1.0))
    assert list(zip(curve.group, curve.alpha)) == [("B", 0.0), ("B", 1.0), ("A", 0.0), ("A", 1.0)]
    row = curve.iloc[3]
    v = read.values("shift", "A", 1.0)
    assert row["mean"] == pytest.approx(v.mean()) and (row.ci_low, row.ci_high) == mean_bootstrap_ci(v)
    assert read.curve("preserved", ["A"], (1.0,)).empty  # all NaN: no row
    with pytest.raises(KeyError, match="no column 'kept'"):
        read.values("kept", "A", 1.0)


def test_mean_ci_is_the_paired_difference_with_nans_dropped():
    a, b = np.array([1.0, 2.0, np.nan, 4.0]), np.array([0.5, 0.5, 0.5, 0.5])
    out = mean_ci(a, minus=b)
    assert out["mean"] == pytest.approx(np.mean([0.5, 1.5, 3.5]))
    assert (out["ci_low"], out["ci_high"]) == mean_bootstrap_ci(a - b)
    assert mean_ci(a) == {"mean": pytest.approx(7 / 3), "ci_low": mean_bootstrap_ci(a)[0],
                          "ci_high": mean_bootstrap_ci(a)[1]}
    assert np.isnan(mean_ci([np.nan, np.nan])["mean"])
    with pytest.raises(ValueError, match="same shape"):
        mean_ci(a, minus=b[:2])


def test_ci_table_puts_curves_side_by_side():
    read = SweepReadout(_edits(), np.arange(3))
    curves = {"control": read.curve("control", ["A", "B"], (0.0, 1.0)),
              "preservation": read.curve("preserved", ["A", "B"], (0.0, 1.0))}
    t = ci_table(curves)
    assert list(t.columns) == ["control", "preservation"] and len(t) == 4
    assert (t["preservation"] == "n/a").all()
    assert t.loc[("A", 0.0), "control"] == "0.000 [0.000, 0.000]"


class _Half:
    """A 'map' whose text side fires on features 0-1 and image side on features 2-3 (K = 4)."""

    def encode(self, z, modality):
        z = torch.as_tensor(z).float()
        h = torch.zeros(len(z), 4)
        cols = [0, 1] if modality == "text" else [2, 3]
        h[:, cols] = z[:, :2].abs()
        return h


def test_activation_mass_and_empty_classes():
    cats = categorise(np.array([0.1, 0.1, 0.9, 0.5]), "fixed:0.8/0.2")  # TextD 0-1, ImgD 2, CrossD 3
    z = torch.tensor([[1.0, 3.0], [1.0, 1.0]])
    mass = activation_mass(_Half(), cats, z, z).set_index("group")
    assert mass.loc["TextD", "prompts"] == pytest.approx(1.0) and mass.loc["TextD", "references"] == 0
    assert mass.loc["ImgD", "references"] == pytest.approx(2 / 6) and mass.loc["CrossD", "references"] == \
        pytest.approx(4 / 6)
    no_img = categorise(np.array([0.1, 0.5, 0.5]), "fixed:0.8/0.2")
    assert empty_classes({0: cats, 1: no_img}) == [(1, "ImgD")]


def test_scale_summary_averages_seeds_per_reference():
    scaled = pd.DataFrame(dict(group=["T"] * 6, scale=[1.0] * 4 + [4.0] * 2, ref=[0, 1, 0, 1, 0, 1],
                               control=[1, 0, 0, 0, 1, 1], shift=[0.1, 0.1, 0.3, 0.3, 0.5, 0.7]))
    s = scale_summary(scaled).set_index("scale")
    assert s.loc[1.0, "control"] == pytest.approx(0.25) and s.loc[4.0, "control"] == 1
    assert s.loc[1.0, "shift"] == pytest.approx(0.2) and s.loc[4.0, "shift"] == pytest.approx(0.6)
    assert (s.loc[1.0, "ci_low"], s.loc[1.0, "ci_high"]) == mean_bootstrap_ci(np.array([0.5, 0.0]))


def test_empty_class_text():
    assert empty_class_text([(2, "TextD")], (0, 1, 2)) == ("TextD is empty for seed 2: its edits and their random "
                                                           "control come from seeds 0 and 1 only.")
    assert empty_class_text([(0, "ImgD"), (1, "ImgD"), (1, "TextD")], (0, 1)).split(". ") == [
        "ImgD is empty for every seed: there is no ImgD edit",
        "TextD is empty for seed 1: its edits and their random control come from seed 0 only."]
    assert empty_class_text([], (0,)).startswith("No class is empty")


def test_fidelity_paragraph_blames_the_decoder_only_where_the_probes_see():
    factors = ("colour", "size", "position")
    real = _probe([0.97, 0.4, 1.0], [0.96, 0.35, 0.99], [0.98, 0.45, 1.0], factors=factors)
    fid = _probe([0.76, 0.26, 0.25], [0.71, 0.2, 0.2], [0.81, 0.3, 0.3], factors=factors)
    shuf = _probe([0.30, 0.27, 0.25], [0.25, 0.22, 0.2], [0.35, 0.32, 0.3], factors=factors)
    text = fidelity_paragraph(real, fid, shuf, (), floor=0.8, training_steps=600)
    assert text.startswith("With this run's models the decoder reproduces **colour** (fidelity vs shuffled: colour ")
    assert "It does not reproduce size, position (size 0.260" in text
    assert "The probes read position of real test images well, so the decoder loses them" in text
    assert "(600 steps)" in text
    assert "For size the probes are weak even on real test images (size 0.400)" in text
    assert text.endswith("preservation cannot be measured.")
    assert fidelity_paragraph(real, real, shuf, ("size",), 0.8, 600).endswith("Preservation is read on size.")
    none = fidelity_paragraph(real, shuf, fid, (), 0.8, 600)
    assert "reproduces **no factor**." in none
