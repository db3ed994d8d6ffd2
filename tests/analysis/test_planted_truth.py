"""Planted-truth validation: class accuracy, MI matching, MDS vs ideal MDS, and the null-world comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import mutual_info_score, normalized_mutual_info_score

from mmlib.analysis.mds import modality_dominance
from mmlib.analysis.planted_truth import (
    FactorMatch,
    class_accuracy,
    compare_to_null,
    ideal_mds_by_factor,
    match_features,
    matched_features,
    mds_vs_ideal,
    mutual_information,
)
from mmlib.core.stats import proportion_ci
from mmlib.data.world import WorldConfig, default_factors, generate_world


def test_class_accuracy_hand_computed():
    predicted = ["ImgD", "TextD", "CrossD", "ImgD", "dead", "CrossD"]
    planted = ["image-only", "text", "shared", "shared", "image", None]  # both spellings of the classes
    acc = class_accuracy(predicted, planted)
    assert (acc.n, acc.n_correct, acc.n_excluded) == (4, 3, 2)
    assert acc.accuracy == 0.75 and (acc.ci_low, acc.ci_high) == pytest.approx(proportion_ci(3, 4))
    per = acc.per_class.set_index("expected")
    assert per.loc["CrossD", "n"] == 2 and per.loc["CrossD", "recall"] == 0.5 and per.loc["ImgD", "recall"] == 1
    assert acc.confusion.loc["CrossD", "ImgD"] == 1 and int(acc.confusion.to_numpy().sum()) == 4


def test_class_accuracy_errors():
    with pytest.raises(ValueError, match="not in the mapping"):
        class_accuracy(["ImgD"], ["visual"])
    with pytest.raises(ValueError, match="unknown predicted"):
        class_accuracy(["Img"], ["shared"])
    with pytest.raises(ValueError, match="planted classes"):
        class_accuracy(["ImgD", "TextD"], ["shared"])
    with pytest.raises(ValueError, match="nothing to score"):
        class_accuracy(["dead"], ["shared"])


def test_mutual_information_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    codes = np.stack([rng.integers(0, 3, 300), (labels == 1).astype(int), labels % 2, np.zeros(300, int)], 1)
    mi = mutual_information(codes, labels)
    nmi = mutual_information(codes, labels, normalized=True, block=3)
    for k in range(3):
        assert mi[k] == pytest.approx(mutual_info_score(labels, codes[:, k]), abs=1e-9)
        assert nmi[k] == pytest.approx(normalized_mutual_info_score(labels, codes[:, k]), abs=1e-9)
    assert mi[3] == 0 and nmi[3] == 0  # a constant feature carries nothing


class FakeTruth:
    """Two factors over 8 pairs; ``b`` is never said."""

    a = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    b = np.array([0, 0, 1, 1, 2, 2, 0, 1])

    def values(self, name):
        return getattr(self, name)

    def depicted(self, name):
        return np.ones(8, bool)

    def mentioned(self, name):
        return np.full(8, name == "a")


def test_match_features_finds_the_planted_factor():
    t = FakeTruth()
    a_image = np.stack([t.a == 1, t.b == 2, np.arange(8) < 4], 1).astype(float)
    a_text = np.stack([t.a == 1, np.zeros(8, bool), np.arange(8) < 4], 1).astype(float)
    for metric in ("mi", "nmi"):
        m = match_features(a_image, a_text, t, ["a", "b"], metric=metric)
        assert m.best_factor[:2].tolist() == ["a", "b"]
        assert m.scores.shape == (3, 2)
    m = match_features(a_image, a_text, t, ["a", "b"], metric="mi")
    assert m.best_score[0] == pytest.approx(np.log(2))  # the feature is the factor: MI = H(a)
    pooled = np.concatenate([a_image[:, 1], a_text[:, 1]])
    assert m.scores[1, 1] == pytest.approx(mutual_info_score(np.concatenate([t.b, t.b]), pooled))
    q = match_features(a_image * np.arange(1, 9)[:, None], a_text, t, ["a", "b"], binarise="quantile", n_bins=3)
    assert q.binarise == "quantile" and q.scores.shape == (3, 2)
    # with "present" labels, b's text rows are all "absent": feature 1 (b == 2 on images) is a function of the
    # label, so its MI is its own entropy (fires on 2 of 16 rows)
    present = match_features(a_image, a_text, t, ["a", "b"], metric="mi", labels="present")
    h = -(1 / 8 * np.log(1 / 8) + 7 / 8 * np.log(7 / 8))
    assert present.scores[1, 1] == pytest.approx(h) and present.scores[1, 1] > m.scores[1, 1]
    assert list(m.to_frame().columns[:3]) == ["feature", "best_factor", "best_score"]


def test_match_features_errors():
    t = FakeTruth()
    x = np.zeros((8, 2))
    with pytest.raises(ValueError, match="unknown metric"):
        match_features(x, x, t, ["a"], metric="ami")
    with pytest.raises(ValueError, match="unknown binarisation"):
        match_features(x, x, t, ["a"], binarise="median")
    with pytest.raises(ValueError, match="paired activations"):
        match_features(x, x[:4], t, ["a"])
    with pytest.raises(ValueError, match="labels for"):
        match_features(x[:4], x[:4], t, ["a"])
    with pytest.raises(ValueError, match="no factors"):
        match_features(x, x, t, [])
    with pytest.raises(ValueError, match="Factor objects"):
        match_features(x, x, t, ["a"], per_value=True)


def _match(best_factor, best_score):
    best_factor = np.asarray(best_factor)
    return FactorMatch(factors=tuple(sorted(set(best_factor) - {""})), scores=np.zeros((len(best_factor), 1)),
                       best_factor=best_factor, best_score=np.asarray(best_score, float), metric="nmi",
                       binarise="active")


def test_mds_vs_ideal_hand_computed():
    ideal = {"f0": 0.0, "f1": 0.25, "f2": 0.5, "f3": 1.0}
    match = _match(["f0", "f1", "f2", "f3", "f3", ""], [0.9, 0.8, 0.5, 0.1, 0.6, 0.0])
    mds = np.array([0.1, 0.3, 0.6, 0.2, 0.9, 0.5])
    table = mds_vs_ideal(mds, match, ideal, thresholds=(0.0, 0.3, 0.7), n_boot=200)
    assert table["n_matched"].tolist() == [5, 4, 2]
    # threshold 0.3: features 0,1,2,4 -> MDS (0.1,0.3,0.6,0.9) vs ideal (0,0.25,0.5,1): perfectly monotone
    row = table.set_index("threshold").loc[0.3]
    assert row.rho == pytest.approx(1.0) and row.n_factors == 4
    assert -1 <= row.ci_low <= row.ci_high <= 1
    assert -1 <= row.cluster_low <= row.cluster_high <= 1
    assert np.isnan(table.iloc[2].rho) and np.isnan(table.iloc[2].cluster_low)  # 2 features: no correlation
    m = matched_features(mds, match, ideal, 0.0)
    assert m.feature.tolist() == [0, 1, 2, 3, 4] and m.ideal_mds.tolist() == [0, 0.25, 0.5, 1, 1]


def test_mds_vs_ideal_cluster_interval_sees_shared_factor_values():
    """Ten features on each of three factor values, a perfect rank order between values but noise within: a bootstrap
    over features treats 30 points as independent, the one over factor values sees three clusters and is wider.
    """
    rng = np.random.default_rng(1)
    names = np.repeat(["a", "b", "c"], 10)
    ideal = {"a": 0.0, "b": 0.5, "c": 1.0}
    mds = np.repeat([0.2, 0.5, 0.8], 10) + rng.normal(0, 0.15, 30)
    row = mds_vs_ideal(mds, _match(list(names), [0.9] * 30), ideal, thresholds=(0.0,), n_boot=300).iloc[0]
    assert row.n_factors == 3 and row.rho > 0.5
    assert row.cluster_high - row.cluster_low > row.ci_high - row.ci_low


def test_ideal_mds_by_factor_drops_unseen_factors():
    factors = default_factors()
    ideal = ideal_mds_by_factor(factors)
    assert ideal["position"] == 1.0 and ideal["owner"] == 0.0 and ideal["shape"] == 0.5
    hidden = factors[6].with_probabilities(0.0, 0.0)  # mood: a glyph factor
    assert hidden.name not in ideal_mds_by_factor([hidden])


def test_planted_order_recovered_on_a_generated_world():
    """Perfect features (fire when a factor's value 0 is shown / said) rank like the ideal MDS."""
    world = generate_world(WorldConfig(n_train=600, n_val=0, n_test=0, seed=1))
    split = world.subset("train")
    names = [f.name for f in world.factors]
    a_image = np.stack([(split.values(n) == 0) & split.depicted(n) for n in names], 1).astype(np.float32)
    a_text = np.stack([(split.values(n) == 0) & split.mentioned(n) for n in names], 1).astype(np.float32)
    match = match_features(a_image, a_text, split)  # factors default to the split's world's
    assert match.best_factor.tolist() == names
    mds = modality_dominance(a_image, a_text)
    table = mds_vs_ideal(mds, match, ideal_mds_by_factor(world.factors), thresholds=(0.0,), n_boot=200)
    assert table.rho[0] > 0.9 and table.ci_low[0] > 0.5
    by_value = match_features(a_image, a_text, split, world.factors, per_value=True)
    assert by_value.best_factor.tolist() == [f"{f.name}={f.values[0]}" for f in world.factors]
    ideal = ideal_mds_by_factor(world.factors, per_value=True)
    assert ideal["gender=female"] == pytest.approx((0.72 + 0.09) / 0.92)
    rho = mds_vs_ideal(mds, by_value, ideal, thresholds=(0.0,), n_boot=50).rho[0]
    assert rho > table.rho[0] - 0.05


def test_compare_to_null_hand_computed():
    world = np.array([0.05, 0.95, 0.5, 0.02, np.nan])
    null = np.array([0.5, 0.5, 0.45, 0.55])
    table = compare_to_null(world, null, rule="fixed").set_index("metric")
    assert table.loc["n_alive", "world"] == 4 and table.loc["n_alive", "null"] == 4
    assert table.loc["share extreme", "world"] == 0.75 and table.loc["share extreme", "null"] == 0
    assert table.loc["share < 0.1", "difference"] == 0.5
    assert table.loc["share CrossD (fixed 0.6/0.4)", "null"] == 1.0
    assert table.loc["KS distance", "statistic"] == pytest.approx(0.5)  # at x just below 0.45
    assert 0 <= table.loc["Mann-Whitney P(world > null)", "statistic"] <= 1
    assert table.loc["share extreme", "world_ci_low"] < 0.75 < table.loc["share extreme", "world_ci_high"]
    with pytest.raises(ValueError, match="no alive"):
        compare_to_null(np.array([np.nan]), null)


# ------------------------------------------------------------------ method level: planted dictionaries
def _planted(n=400):
    from mmlib.data.planted import PlantedConfig, generate_planted

    return generate_planted(PlantedConfig(d=8, n_shared=2, n_image=1, n_text=1, sparsity=1.0, seed=0), n)


def test_true_code_features_recover_every_class():
    from mmlib.analysis.planted_truth import planted_accuracy_table, true_code_features

    data = _planted()
    truth = true_code_features(data)
    assert list(truth.atom) == [0, 1, 2, 3] and truth.n_atoms == 4 and truth.atoms_covered(0.9) == 4
    np.testing.assert_allclose(truth.mds.scores, [0.5, 0.5, 1.0, 0.0])  # shared, shared, image, text
    acc = truth.accuracy(0.9, "fixed")
    assert acc.accuracy == 1.0 and acc.n == 4
    table = planted_accuracy_table({"true codes": (truth, (0.9,))}, rules=("fixed",))
    assert list(table.columns) == ["features", "match_cos", "rule", "n_scored", "n_left_out", "accuracy", "ci_low",
                                   "ci_high"]
    assert table.iloc[0].to_dict() | {"ci_low": 0, "ci_high": 0} == dict(
        features="true codes", match_cos=0.9, rule="fixed 0.6/0.4", n_scored=4, n_left_out=0, accuracy=1.0,
        ci_low=0, ci_high=0)


def test_planted_features_match_directions_to_atoms():
    from mmlib.analysis.planted_truth import planted_features

    data = _planted()
    # feature 0 = atom 2 (image) scaled, feature 1 = a direction orthogonal to every atom (matches none),
    # feature 2 = atom 0 (shared); activations: the true codes of atoms 2, 3 and 0
    q, _ = torch.linalg.qr(torch.cat([data.dictionary.T, torch.eye(8)[:, :1]], 1))
    directions = torch.stack([3 * data.dictionary[2], q[:, 4], data.dictionary[0]])
    a_image, a_text = data.codes_image[:, [2, 3, 0]], data.codes_text[:, [2, 3, 0]]
    feats = planted_features(data, directions, a_image, a_text)
    assert feats.atom[0] == 2 and feats.atom_class[0] == "image" and feats.cosine[0] == pytest.approx(1.0, abs=1e-6)
    assert feats.atom[2] == 0 and feats.atom_class[2] == "shared"
    assert feats.cosine[1] < 0.9
    assert list(feats.labels(0.9)) == ["image", None, "shared"]
    assert feats.atoms_covered(0.9) == 2
    assert feats.mds.n_features == 3
    with pytest.raises(ValueError, match="directions"):
        planted_features(data, torch.ones(3, 5), a_image, a_text)


# ------------------------------------------------------------------ model level: why rho is undefined
def _match(best_factor, best_score):
    best_factor = np.asarray(best_factor, dtype=str)
    return FactorMatch(factors=tuple(sorted(set(best_factor) - {""})), scores=np.zeros((len(best_factor), 1)),
                       best_factor=best_factor, best_score=np.asarray(best_score, dtype=float), metric="nmi",
                       binarise="active")


IDEAL = {"colour=red": 0.5, "shape=circle": 0.5, "texture=plain": 0.6, "owner=bob": 0.0}


def test_rho_gap_names_each_reason():
    from mmlib.analysis.planted_truth import RhoGap, rho_gap

    few = rho_gap(np.array([0.1, 0.9, 0.5]), _match(["colour=red", "shape=circle", ""], [0.2, 0.01, 0.0]), IDEAL, 0.05)
    assert few == RhoGap(1, "are fewer than 3") and str(few) == "the 1 matched features are fewer than 3"
    constant = rho_gap(np.array([0.1, 0.9, 0.5, np.nan]),
                       _match(["colour=red", "shape=circle", "colour=red", "texture=plain"], [0.2] * 4), IDEAL, 0.05)
    assert str(constant) == "the 3 matched features all carry colour or shape, planted at 0.5"  # dead one left out
    same_mds = rho_gap(np.full(3, 0.7), _match(["colour=red", "texture=plain", "owner=bob"], [0.2] * 3), IDEAL, 0.05)
    assert same_mds.reason == "all have the same MDS"
    assert rho_gap(np.array([0.4, 0.7, 0.1]), _match(["colour=red", "texture=plain", "owner=bob"], [0.2] * 3),
                   IDEAL, 0.05) is None


def test_rho_at_gives_the_row_and_the_reason():
    from mmlib.analysis.planted_truth import rho_at

    match = _match(["colour=red", "texture=plain", "owner=bob", "shape=circle"], [0.2, 0.2, 0.2, 0.01])
    row = rho_at(np.array([0.4, 0.7, 0.1, 0.5]), match, IDEAL, 0.05, n_boot=50)
    assert row["rho"] == pytest.approx(1.0) and row["n_matched"] == 3 and row["reason"] == ""
    assert {"threshold", "n_factors", "p_value", "ci_low", "ci_high"} <= set(row)
    row = rho_at(np.array([0.4, 0.7, 0.1, 0.5]), match, IDEAL, 0.3, n_boot=50)
    assert np.isnan(row["rho"]) and row["reason"] == "the 0 matched features are fewer than 3"


def test_rho_across_seeds_text():
    from mmlib.analysis.planted_truth import RhoGap, rho_across_seeds_text

    row = {"n_seeds": 3, "mean": 0.76, "ci_low": 0.72, "ci_high": 0.8}
    assert rho_across_seeds_text(row, {0: None, 1: None, 2: None}, 2) == "0.76 [0.72, 0.80] over 3 seeds"
    half = RhoGap(25, "all carry colour or shape, planted at 0.5")
    assert rho_across_seeds_text({"n_seeds": 0, "mean": np.nan, "ci_low": np.nan, "ci_high": np.nan},
                                 {0: half, 1: RhoGap(30, half.reason), 2: RhoGap(35, half.reason)}) == (
        "undefined in every seed (seeds 0, 1, 2: the 25, 30, 35 matched features all carry colour or shape, "
        "planted at 0.5)")
    two = {"n_seeds": 2, "mean": 0.1, "ci_low": -0.1, "ci_high": 0.3}
    assert rho_across_seeds_text(two, {0: None, 1: half, 2: None}, 2) == (
        "0.10 [-0.10, 0.30] over 2 seeds (undefined in seed 1: the 25 matched features all carry colour or shape, "
        "planted at 0.5)")
    mixed = rho_across_seeds_text({"n_seeds": 1, "mean": np.nan, "ci_low": np.nan, "ci_high": np.nan},
                                  {0: half, 1: RhoGap(2, "are fewer than 3"), 2: None})
    assert mixed == ("n/a over 1 seeds (undefined in seed 0: the 25 matched features all carry colour or shape, "
                     "planted at 0.5; seed 1: the 2 matched features are fewer than 3)")


def test_matched_by_factor_annotate_and_extreme_share():
    from mmlib.analysis.planted_truth import annotate_matched, extreme_share, matched_by_factor

    m = pd.DataFrame({"feature": [0, 1, 2, 3], "factor": ["colour=red", "colour=red", "texture=plain", "owner=bob"],
                      "score": [0.2] * 4, "mds": [0.05, 0.5, 0.95, 0.3], "ideal_mds": [0.5, 0.5, 0.6, 0.0]})
    roles = {"colour": "cross", "texture": "image-ladder", "owner": "text-only"}
    t = matched_by_factor(m, roles, IDEAL).set_index("factor")
    assert t.loc["colour"].to_dict() == dict(role="cross", n=2, planted=0.5, median_mds=0.275, share_extreme=0.5)
    assert t.loc["texture", "share_extreme"] == 1.0 and t.loc["owner", "planted"] == 0.0
    a = annotate_matched(m, roles, {"colour=red": 0.5, "texture=plain": 0.8, "owner=bob": 0.0})
    assert list(a.factor_name) == ["colour", "colour", "texture", "owner"]
    assert list(a.planted) == [0.5, 0.5, 0.8, 0.0] and list(a.role) == ["cross", "cross", "image-ladder", "text-only"]
    share = extreme_share([m, m.iloc[:1]])  # pooled: features at 0.5 are rows 0, 1 and row 0 again
    assert share["matched_at_half"] == 3 and share["share_extreme"] == pytest.approx(2 / 3)
    assert (share["ci_low"], share["ci_high"]) == pytest.approx(proportion_ci(2, 3))
    none = extreme_share(m[m.ideal_mds != 0.5])
    assert none["matched_at_half"] == 0 and np.isnan(none["share_extreme"]) and np.isnan(none["ci_low"])


def _six_features():
    from mmlib.analysis.planted_truth import PlantedFeatures

    classes = np.array(["image", "text", "image", "shared", "image", "text"])
    return PlantedFeatures(mds=modality_dominance(np.eye(6), np.eye(6)), cosine=np.array([.95, .95, .5, .95, .95, .8]),
                           atom=np.arange(6), atom_class=classes, n_atoms=6)


def test_planted_precision_table_hand_computed():
    from mmlib.analysis.categories import categorise
    from mmlib.analysis.planted_truth import planted_precision_table

    features = _six_features()
    planted = ["ImgD", "TextD", "ImgD", "ImgD", "CrossD", "TextD"]
    null = ["CrossD", "ImgD", "dead", "TextD", "rare"]
    table = planted_precision_table({"hand": (planted, null)}, features, 0.9, min_precision=0.9,
                                    max_null_share=0.7).set_index(["measure", "category"])
    # ImgD: features 0 (image atom), 2 (no atom at 0.9; nearest an image atom), 3 (a shared atom)
    assert table.loc[("precision", "ImgD"), ["k", "n", "false_nearest"]].tolist() == [1, 3, 1]
    assert table.loc[("recall", "ImgD"), ["k", "n"]].tolist() == [1, 2]  # image atoms matched by features 0 and 4
    assert table.loc[("precision", "TextD"), ["k", "n", "false_nearest"]].tolist() == [1, 2, 1]
    assert table.loc[("recall", "TextD"), "value"] == 1.0
    null_row = table.loc[("null share", "ImgD+TextD")]
    assert (null_row.k, null_row.n) == (2, 3) and null_row.value == pytest.approx(2 / 3)
    assert (null_row.ci_low, null_row.ci_high) == pytest.approx(proportion_ci(2, 3))
    assert table.meets.tolist() == [False, None, False, None, True] and np.isnan(table.target.iloc[1])
    # Categories are accepted as labels; without targets there is no target column
    cats = categorise(np.array([0.95, 0.05, 0.9, 0.5, 0.5, 0.1]), "fixed:0.8/0.2")
    plain = planted_precision_table({"fixed": (cats, cats)}, features, 0.9)
    assert "meets" not in plain and plain.value.iloc[0] == 0.5  # ImgD = features 0 and 2
    # a rare feature (below a minimum support) has no class: a miss in the recall, out of the precision
    rare = planted_precision_table({"m": (["ImgD", "TextD", "ImgD", "ImgD", "rare", "TextD"], null)}, features, 0.9)
    rare = rare.set_index(["measure", "category"])
    assert rare.loc[("recall", "ImgD"), ["k", "n"]].tolist() == [1, 2]  # feature 4 is rare, not labelled ImgD
    assert rare.loc[("precision", "ImgD"), ["k", "n"]].tolist() == [1, 3]


def test_class_accuracy_leaves_rare_features_out():
    from mmlib.analysis.planted_truth import class_accuracy

    acc = class_accuracy(["ImgD", "rare", "CrossD", "dead"], ["image", "text", "shared", "shared"])
    assert (acc.n, acc.n_correct, acc.n_excluded) == (2, 2, 2)


def test_planted_precision_table_errors():
    from mmlib.analysis.planted_truth import planted_precision_table

    features = _six_features()
    ok = ["CrossD"] * 6
    with pytest.raises(ValueError, match="no rules"):
        planted_precision_table({}, features, 0.9)
    with pytest.raises(ValueError, match="expected 6 labels"):
        planted_precision_table({"r": (ok[:5], ok)}, features, 0.9)
    with pytest.raises(ValueError, match="unknown labels"):
        planted_precision_table({"r": (ok, ["Img"])}, features, 0.9)
    with pytest.raises(ValueError, match="no feature is alive"):
        planted_precision_table({"r": (ok, ["dead", "rare"])}, features, 0.9)


def test_precision_cells():
    from mmlib.analysis.planted_truth import planted_precision_table, precision_cells

    features = _six_features()
    planted = ["ImgD", "TextD", "ImgD", "ImgD", "CrossD", "TextD"]
    null = ["CrossD", "ImgD", "dead", "TextD", "rare"]
    table = planted_precision_table({"b": (planted, null), "a": (["CrossD"] * 6, null)}, features, 0.9,
                                    min_precision=0.9, max_null_share=0.1)
    cells = precision_cells(table)
    assert cells.columns.tolist() == ["target", "b", "a"]  # the table's rule order, not sorted
    assert cells.index.tolist() == [("precision", "ImgD"), ("precision", "TextD"), ("recall", "ImgD"),
                                    ("recall", "TextD"), ("null share", "ImgD+TextD")]
    assert cells.target.tolist() == ["≥ 0.9", "≥ 0.9", "", "", "≤ 0.1"]
    low, high = proportion_ci(1, 3)
    assert cells.loc[("precision", "ImgD"), "b"] == f"0.33 [{low:.2f}, {high:.2f}] (1/3)"
    assert cells.loc[("precision", "ImgD"), "a"].endswith("(0/0)")  # no feature labelled ImgD: NaN value
    assert "target" not in precision_cells(planted_precision_table({"b": (planted, null)}, features, 0.9))
    with pytest.raises(ValueError, match="planted_precision_table"):
        precision_cells(table.drop(columns="k"))
