"""Tests of mmlib.case_studies.attribute_bias: per-value zero-shot accuracy, the gap interval, per-value removals,
the claim margins.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlib.analysis.categories import categorise
from mmlib.analysis.mds import modality_dominance
from mmlib.case_studies.attribute_bias import (
    ALL,
    AttributeTask,
    accuracy_gap,
    balanced_accuracy,
    bias_removal,
    categorised_map,
    describe_margins,
    drop_decomposition,
    format_interval,
    format_margin,
    group_margins,
    ideal_mds,
    margin_summary,
    margins_contradict,
    margins_support,
    recognition_rows,
    recognition_summary,
    recognition_table,
    removal_accuracies,
    value_index,
    world_attribute_task,
)
from mmlib.case_studies.removal import RemovalData, group_removal
from mmlib.core.stats import proportion_ci
from mmlib.data.celeba import CelebAFaces
from mmlib.data.world import WorldConfig, generate_world
from mmlib.feature_maps.raw import RawDims
from mmlib.models.embed import EmbedConfig, embed_dataset
from mmlib.models.prompts import encode_texts

E = torch.eye(4)


class Identity:
    """A feature map with a decoder: h = ReLU(z) (K = d), decode(h) = h."""

    has_decoder = True

    def encode(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        return torch.as_tensor(z).float().clamp(min=0)

    def decode(self, h: torch.Tensor, modality: str) -> torch.Tensor:
        return h


def planted_task(n_female: int = 6, n_male: int = 4) -> AttributeTask:
    """Female images carry feature 0, male images feature 1; feature 2 is a shared tie-breaker toward male.

    Class prompts: female = e0, male = e1 + 0.1 e2. Removing feature 0 (images only) leaves female images at
    0.5 e2, which the male prompt matches better: every female image flips, no male image does.
    """
    image = torch.cat([(E[0] + 0.5 * E[2]).repeat(n_female, 1), (E[1] + 0.5 * E[2]).repeat(n_male, 1)])
    classes = torch.stack([E[0], E[1] + 0.1 * E[2]])
    labels = np.array([0] * n_female + [1] * n_male)
    first_half = np.arange(len(labels)) % 2 == 0
    return AttributeTask("gender", ("female", "male"), image, classes, labels, {"even": first_half})


# ------------------------------------------------------------------------------------------- accuracy gap
def test_accuracy_gap_matches_newcombe_1998_example():
    # Newcombe (1998), Stat Med 17:873, Table II example (56/70 vs 48/80): 0.2000 (0.0524, 0.3339), method 10.
    gap, low, high = accuracy_gap(56, 70, 48, 80)
    assert gap == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.0524, 0.3339), abs=1e-4)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(1, 60), st.data())
def test_accuracy_gap_contains_the_point_and_lies_in_range(na, nb, data):
    ka, kb = data.draw(st.integers(0, na)), data.draw(st.integers(0, nb))
    gap, low, high = accuracy_gap(ka, na, kb, nb)
    assert -1 - 1e-9 <= low <= gap <= high <= 1 + 1e-9
    # antisymmetric: swapping the groups mirrors the interval
    g2, l2, h2 = accuracy_gap(kb, nb, ka, na)
    assert (g2, l2, h2) == pytest.approx((-gap, -high, -low))


@pytest.mark.parametrize("args, message", [((1, 0, 1, 2), "group a has 0 trials"),
                                           ((3, 2, 1, 2), r"group a: 3 successes out of 2")])
def test_accuracy_gap_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        accuracy_gap(*args)


def test_balanced_accuracy_is_mover_of_the_wilson_intervals():
    b, low, high = balanced_accuracy([56, 48], [70, 80])
    (l1, u1), (l2, u2) = proportion_ci(56, 70), proportion_ci(48, 80)
    assert b == pytest.approx(0.7)
    assert low == pytest.approx(0.7 - np.hypot(0.8 - l1, 0.6 - l2) / 2)
    assert high == pytest.approx(0.7 + np.hypot(u1 - 0.8, u2 - 0.6) / 2)
    # one value: its own Wilson interval
    assert balanced_accuracy([3], [10])[1:] == pytest.approx(proportion_ci(3, 10))
    with pytest.raises(ValueError, match="value 1 has 0 trials"):
        balanced_accuracy([1, 0], [2, 0])
    with pytest.raises(ValueError, match="one success count per trial count"):
        balanced_accuracy([1], [2, 3])


# --------------------------------------------------------------------------------------- recognition table
def test_recognition_table_hand_computed():
    # d = 2, class 0 = x axis, class 1 = y axis; predictions: by which coordinate is larger.
    image = torch.tensor([[1.0, 0.1], [1.0, 0.2], [0.1, 1.0], [0.2, 1.0], [0.1, 1.0]])
    labels = np.array([0, 0, 0, 1, 1])  # female: 2 of 3 right; male: 2 of 2 right
    task = AttributeTask("g", ("female", "male"), image, torch.eye(2), labels)
    per_value, gaps = recognition_table(task)
    assert per_value[["value", "n", "correct"]].values.tolist() == [["female", 3, 2], ["male", 2, 2]]
    assert per_value.accuracy.tolist() == pytest.approx([2 / 3, 1.0])
    assert tuple(per_value.iloc[0][["ci_low", "ci_high"]]) == pytest.approx(proportion_ci(2, 3))
    g = gaps.iloc[0]
    assert (g.subset, g.a, g.b) == (ALL, "female", "male")
    assert g.gap == pytest.approx(2 / 3 - 1) and g.balanced == pytest.approx((2 / 3 + 1) / 2)
    assert (g.ci_low, g.ci_high) == pytest.approx(accuracy_gap(2, 3, 2, 2)[1:])
    assert (g.balanced_low, g.balanced_high) == pytest.approx(balanced_accuracy([2, 2], [3, 2])[1:])
    _, reverse = recognition_table(task, pair=("male", "female"))
    assert reverse.gap.iloc[0] == pytest.approx(1 - 2 / 3)


def test_recognition_table_reports_subsets_and_skips_empty_ones():
    task = planted_task()
    task = AttributeTask(task.attribute, task.values, task.image_emb, task.class_emb, task.labels,
                         {"even": task.subsets["even"], "none": np.zeros(len(task), bool)})
    per_value, gaps = recognition_table(task)
    assert list(gaps.subset) == [ALL, "even"]  # "none" is empty: skipped
    assert per_value.accuracy.tolist() == [1.0] * 4
    counts = task.value_counts()
    assert counts.loc["even"].tolist() == [3, 2] and counts.loc["none"].tolist() == [0, 0]


def test_recognition_table_bad_input():
    task = planted_task()
    with pytest.raises(ValueError, match="unknown value 'woman'"):
        recognition_table(task, pair=("woman", "male"))
    with pytest.raises(ValueError, match="two different values"):
        recognition_table(task, pair=("male", "male"))
    with pytest.raises(ValueError, match="3 image representations for a task of 10"):
        recognition_table(task, image_emb=task.image_emb[:3])


def test_value_index_suggests_close_names():
    assert value_index(("female", "male"), "male") == 1
    with pytest.raises(ValueError, match=r"unknown value 'mael'.*Did you mean 'male'"):
        value_index(("female", "male"), "mael")


@pytest.mark.parametrize("change, message", [
    (dict(values=("female",), class_emb=torch.eye(4)[:1]), "at least 2 values"),
    (dict(values=("a", "a")), "duplicate value names"),
    (dict(labels=np.array([0] * 9 + [2])), "label 2 is outside 0..1"),
    (dict(labels=np.zeros(10, int)), r"value\(s\) \['male'\] of 'gender' have no image"),
    (dict(labels=np.zeros(10)), "integer value indices"),
    (dict(labels=np.zeros(4, int)), "10 images but labels of shape"),
    (dict(class_emb=torch.eye(4)[:3]), "k = 2 values"),
    (dict(class_emb=torch.eye(3)[:2]), "d=4 but class embeddings d=3"),
    (dict(subsets={"odd": np.ones(3, bool)}), "subset 'odd' must be a boolean mask"),
    (dict(subsets={"females": np.arange(10) < 6}), r"subset 'females' has no image of value\(s\) \['male'\]"),
    (dict(subsets={ALL: np.ones(10, bool)}), "reserved"),
])
def test_attribute_task_bad_input(change, message):
    task = planted_task()
    fields = dict(attribute="gender", values=task.values, image_emb=task.image_emb, class_emb=task.class_emb,
                  labels=task.labels, subsets={})
    with pytest.raises(ValueError, match=message):
        AttributeTask(**{**fields, **change})


def test_task_mask_unknown_subset():
    with pytest.raises(ValueError, match=r"unknown subset 'evn'.*Did you mean 'even'"):
        planted_task().mask("evn")


# ------------------------------------------------------------------------------------------------ removals
def test_bias_removal_hand_computed():
    task = planted_task()
    groups = {"F": np.array([True, False, False, False]), "M": np.array([False, True, False, False])}
    rep = bias_removal(Identity(), task, groups, n_random=30, seed=0, edit_text=False, subsets=[ALL])
    t = rep.table.set_index(["value", "group"])
    assert t.loc[("female", "F"), "drop"] == 1.0 and t.loc[("male", "F"), "drop"] == 0.0
    # removing feature 1 leaves male images at 0.5 e2, still closest to the male prompt (tie-breaker)
    assert t.loc[("female", "M"), "drop"] == 0.0 and t.loc[("male", "M"), "drop"] == 0.0
    assert (t["base"] == 1.0).all() and (t["original"] == 1.0).all()
    assert t.loc[("female", "F"), "n"] == 6 and t.loc[("male", "F"), "n_removed"] == 1
    # random single-feature removals hurt female exactly when they hit feature 0
    draws = rep.random_drops[(rep.random_drops.value == "female") & (rep.random_drops.group == "F")]
    assert set(draws["drop"]) <= {0.0, 1.0}
    assert t.loc[("female", "F"), "random_drop_mean"] == pytest.approx(draws["drop"].mean())
    assert t.loc[("female", "F"), "excess"] == pytest.approx(1.0 - draws["drop"].mean())
    g = rep.gaps.set_index("group")
    assert g.loc["F", "gap_drop"] == 1.0 and g.loc["M", "gap_drop"] == 0.0
    assert g.loc["F", "p_greater"] < 0.5


def test_bias_removal_draws_are_paired_across_values():
    """Draw r removes the same features for every value: the whole set's drop is the n-weighted mean."""
    gen = torch.Generator().manual_seed(0)
    image, classes = torch.rand(40, 8, generator=gen), torch.rand(2, 8, generator=gen)
    labels = np.array([0, 1] * 20)
    task = AttributeTask("g", ("a", "b"), image, classes, labels, {"half": np.arange(40) < 20})
    groups = {"G": np.arange(8) < 3}
    rep = bias_removal(RawDims(8), task, groups, n_random=12, seed=3)
    whole = group_removal(RawDims(8), RemovalData(image, class_emb=classes, labels=labels), groups,
                          n_random=12, seed=3).random_drops
    d = rep.random_drops[rep.random_drops.subset == ALL].pivot(index="draw", columns="value", values="drop")
    n = task.value_counts().loc[ALL]
    weighted = (d["a"] * n["a"] + d["b"] * n["b"]) / n.sum()
    np.testing.assert_allclose(weighted.to_numpy(), whole[whole.metric == "zero_shot"]["drop"].to_numpy(),
                               atol=1e-6)  # float32 means
    gaps = rep.gaps.set_index("subset")
    assert list(gaps.index) == [ALL, "half"]
    assert gaps.loc[ALL, "random_gap_mean"] == pytest.approx((d["a"] - d["b"]).mean())


def test_bias_removal_activity_matched_controls_draw_the_twin_feature():
    """Features 0 and 1 fire alike (support 50, same mass), 2 and 3 rarely: the activity-matched control of {0} is
    always {1}, whose removal costs female images nothing; size-matched draws hit feature 0 a quarter of the time.
    """
    acts = np.zeros((100, 4), np.float32)
    acts[:50, 0] = acts[:50, 1] = 1.0
    acts[:5, 2], acts[:3, 3] = 1.0, 1.0
    cats = categorise(modality_dominance(torch.from_numpy(acts), torch.from_numpy(acts)))
    task = planted_task()
    groups = {"F": np.array([True, False, False, False]), "M": np.array([False, True, False, False])}
    rep = bias_removal(Identity(), task, groups, n_random=40, seed=0, edit_text=False, subsets=[ALL],
                       categories=cats, controls=("activity", "size"))
    t = rep.table.set_index(["value", "group"])
    assert t.loc[("female", "F"), "random_drop_mean"] == t.loc[("female", "M"), "drop"] == 0.0
    assert t.loc[("female", "F"), "excess"] == 1.0 and (t.control == "activity").all() and (t.n_fallback == 0).all()
    size_mean = t.loc[("female", "F"), "random_drop_mean_size"]
    assert 0 < size_mean < 1 and t.loc[("female", "F"), "excess_size"] == pytest.approx(1 - size_mean)
    assert set(rep.random_drops.columns) == {"subset", "value", "group", "draw", "drop"}
    assert len(rep.random_drops) == 2 * 2 * 40  # values x groups x draws of the main control only
    with pytest.raises(ValueError, match="need the categories"):
        bias_removal(Identity(), task, groups, controls=("activity",))
    with pytest.raises(ValueError, match="not both"):
        bias_removal(Identity(), task, groups, alive=cats.alive, categories=cats)


def test_bias_removal_bad_input():
    task = planted_task()
    groups = {"F": np.array([True, False, False, False])}
    with pytest.raises(ValueError, match="n_random must be at least 2"):
        bias_removal(Identity(), task, groups, n_random=1)
    empty = AttributeTask("g", task.values, task.image_emb, task.class_emb, task.labels,
                          {"none": np.zeros(len(task), bool)})
    with pytest.raises(ValueError, match="subset 'none' is empty"):
        bias_removal(Identity(), empty, groups, subsets=["none"])
    with pytest.raises(ValueError, match="group 'E' is empty"):
        bias_removal(Identity(), task, {"E": np.zeros(4, bool)})
    with pytest.raises(ValueError, match="unknown value 'man'"):
        bias_removal(Identity(), task, groups, pair=("female", "man"))
    joint = AttributeTask("g", task.values, task.image_emb, task.class_emb[:, None, :].repeat(1, 3, 1), task.labels)
    with pytest.raises(ValueError, match=r"one prompt embedding per value, \(k, d\); got .* \(2, 3, 4\)"):
        bias_removal(Identity(), joint, groups)


# ------------------------------------------------------------------------------------------------- margins
def test_group_margins_hand_computed():
    table = pd.DataFrame({"seed": [0] * 6 + [1] * 4,
                          "value": ["f", "f", "f", "m", "m", "m", "f", "f", "m", "m"],
                          "group": ["ImgD", "TextD", "CrossD"] * 2 + ["TextD", "CrossD"] * 2,
                          "excess": [0.30, 0.10, 0.05, 0.02, 0.20, 0.25, 0.1, 0.2, 0.3, 0.1]})
    m = group_margins(table, {"f": "ImgD", "m": "TextD"}, groups=("ImgD", "TextD", "CrossD"))
    m = m.set_index(["seed", "value"])
    assert m.loc[(0, "f"), "margin"] == pytest.approx(0.20) and m.loc[(0, "f"), "best_other"] == "TextD"
    assert m.loc[(0, "m"), "margin"] == pytest.approx(-0.05) and m.loc[(0, "m"), "best_other"] == "CrossD"
    assert np.isnan(m.loc[(1, "f"), "margin"])  # ImgD empty for seed 1
    assert m.loc[(1, "m"), "margin"] == pytest.approx(0.3 - 0.1)


def test_group_margins_bad_input():
    table = pd.DataFrame({"value": ["f"], "group": ["ImgD"], "excess": [0.1]})
    with pytest.raises(ValueError, match=r"unknown value\(s\) \['m'\]"):
        group_margins(table, {"m": "ImgD"})
    with pytest.raises(ValueError, match=r"unknown group\(s\) \['Img'\]"):
        group_margins(table, {"f": "Img"}, groups=("ImgD", "TextD", "CrossD"))
    with pytest.raises(ValueError, match=r"columns \['drop'\] not in the table"):
        group_margins(table, {"f": "ImgD"}, value="drop")


# -------------------------------------------------------------------------------------- world and CelebA
def test_world_attribute_task_subsets_and_unknown_attribute(tiny_clip):
    world = generate_world(WorldConfig(n_train=0, n_val=0, n_test=60, seed=1))
    split = world.subset("test")
    emb = torch.randn(60, tiny_clip.embed_dim, generator=torch.Generator().manual_seed(0))
    task = world_attribute_task(split, emb, lambda t: encode_texts(tiny_clip, t), text_scale=3.0)
    assert task.values == ("female", "male") and task.class_emb.shape == (2, tiny_clip.embed_dim)
    assert torch.allclose(task.class_emb.norm(dim=-1), torch.full((2,), 3.0))
    np.testing.assert_array_equal(task.subsets["depicted"], split.depicted("gender"))
    np.testing.assert_array_equal(task.subsets["not depicted"], ~split.depicted("gender"))
    with pytest.raises(ValueError, match=r"unknown attribute 'gendre'.*Did you mean 'gender'"):
        world_attribute_task(split, emb, lambda t: encode_texts(tiny_clip, t), attribute="gendre")
    with pytest.raises(ValueError, match="59 image embeddings for a split of 60"):
        world_attribute_task(split, emb[:59], lambda t: encode_texts(tiny_clip, t))


def test_paper_code_path_on_a_celeba_fixture(make_celeba, tiny_clip, artifact_root):
    """CelebA-format folder -> embeddings of a (random-weight) CLIP -> per-value recognition and removals."""
    faces = CelebAFaces(make_celeba(12))
    emb = embed_dataset(tiny_clip, faces, EmbedConfig(batch_size=8, device="cpu"))
    classes = encode_texts(tiny_clip, ["a photo of a woman", "a photo of a man"])
    task = AttributeTask("Male", faces.values, emb.image, classes, faces.labels)
    per_value, gaps = recognition_table(task)
    assert per_value.n.tolist() == [6, 6] and gaps.a.iloc[0] == "woman"
    groups = {"first": np.arange(tiny_clip.embed_dim) < 4, "last": np.arange(tiny_clip.embed_dim) >= 12}
    rep = bias_removal(RawDims(tiny_clip.embed_dim), task, groups, n_random=5)
    assert len(rep.table) == 4 and rep.table["removed"].between(0, 1).all()
    assert np.isfinite(rep.gaps["gap_drop"]).all()


# ------------------------------------------------------------------------------------------ positive control
def test_planted_attribute_follows_its_config():
    from mmlib.case_studies.attribute_bias import PlantedAttributeConfig, planted_attribute
    cfg = PlantedAttributeConfig()
    data = planted_attribute(cfg, 4000)
    assert data.image.shape == data.text.shape == (4000, cfg.base.d) and data.prompts.shape == (2, cfg.base.d)
    for v, (p_d, p_m) in enumerate(zip(cfg.p_depict, cfg.p_mention)):
        m = data.labels == v
        for flags, p in ((data.depicted, p_d), (data.mentioned, p_m)):
            low, high = proportion_ci(int(flags[m].sum()), int(m.sum()), 0.999)
            assert low <= p <= high
    again = planted_attribute(cfg, 4000)
    assert torch.equal(again.image, data.image) and np.array_equal(again.labels, data.labels)
    task = data.task(np.arange(2000, 4000))
    per_value, gaps = recognition_table(task)
    g = gaps.set_index("subset")
    assert g.loc["depicted", "balanced_low"] > 0.9  # the prompts recognise the attribute where it is shown
    assert g.loc["not depicted", "balanced_low"] < 0.5 < g.loc["not depicted", "balanced_high"] + 0.05
    null = planted_attribute(PlantedAttributeConfig(null=True), 500)
    assert null.depicted.all() and null.mentioned.all()
    img, txt = data.pairs(np.arange(10))
    assert torch.equal(img, data.image[:10]) and torch.equal(txt, data.text[:10])


@pytest.mark.parametrize("kwargs, message", [
    (dict(values=("a",), p_depict=(1.0,), p_mention=(1.0,)), "at least 2 distinct values"),
    (dict(p_depict=(0.5,)), "one p_depict and one p_mention per value"),
    (dict(p_mention=(0.5, 1.5)), r"lie in \[0, 1\]"),
    (dict(strength=0.0), "strength must be positive"),
])
def test_planted_attribute_config_bad_input(kwargs, message):
    from mmlib.case_studies.attribute_bias import PlantedAttributeConfig
    with pytest.raises(ValueError, match=message):
        PlantedAttributeConfig(**kwargs)



# ------------------------------------------------------------------------------------------ the chapter's steps
def test_ideal_mds_of_the_planted_gender_asymmetry():
    # female: drawn 0.9, said 0.2 -> (0.9 * 0.8 + 0.9 * 0.2 / 2) / (1 - 0.1 * 0.8) = 0.81 / 0.92
    assert ideal_mds(0.9, 0.2) == pytest.approx(0.81 / 0.92)
    assert ideal_mds(0.2, 0.9) == pytest.approx(1 - 0.81 / 0.92)  # the mirror image
    assert (ideal_mds(1, 1), ideal_mds(1, 0), ideal_mds(0, 1)) == (0.5, 1.0, 0.0)
    with pytest.raises(ValueError, match="never fires"):
        ideal_mds(0, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ideal_mds(1.2, 0.5)


def test_format_interval():
    assert format_interval(0.5, 0.25, 0.75) == "0.500 [0.250, 0.750]"
    assert format_interval(0.1, -0.1, 0.3, digits=2, signed=True) == "+0.10 [-0.10, +0.30]"
    assert format_interval(float("nan"), 0, 1) == "n/a"


def test_recognition_rows_raw_and_through_a_map():
    task = planted_task()
    per_value, gaps = recognition_rows(task, world="w", seed=-1)
    expected = recognition_table(task)
    pd.testing.assert_frame_equal(per_value.drop(columns=["world", "seed"]), expected[0])
    assert (per_value.world == "w").all() and (gaps.seed == -1).all()
    # Identity map on non-negative embeddings: the same representation, hence the same table
    through, _ = recognition_rows(task, Identity(), rep="map")
    pd.testing.assert_frame_equal(through.drop(columns="rep"), expected[0])
    joint = AttributeTask("gender", ("female", "male"), task.image_emb, task.class_emb[:, None].repeat(1, 2, 1),
                          task.labels)
    with pytest.raises(ValueError, match="one prompt embedding per value"):
        recognition_rows(joint, Identity())


def test_recognition_summary_one_cell_per_value_gap_and_balanced():
    task = planted_task()
    parts = [recognition_rows(task, world="w", rep=r) for r in ("raw", "map")]
    values, gaps = (pd.concat(p, ignore_index=True) for p in zip(*parts))
    wide = recognition_summary(values, gaps)
    assert list(wide.columns) == ["female", "male", "gap (female − male)", "balanced"]
    assert len(wide) == 2 * len(task.subset_names())
    row = gaps[(gaps.rep == "raw") & (gaps.subset == ALL)].iloc[0]
    assert wide.loc[("w", "raw", ALL), "balanced"] == format_interval(row.balanced, row.balanced_low,
                                                                      row.balanced_high)


def test_removal_accuracies_rows_for_the_bars():
    task = planted_task()
    groups = {"ImgD": np.array([True, False, False, False]), "TextD": np.array([False, True, False, False])}
    table = bias_removal(Identity(), task, groups, n_random=5, subsets=[ALL]).table.assign(map="SAE")
    base, _ = recognition_rows(task, Identity(), rep="SAE")
    bars = removal_accuracies(table, base[base.subset == ALL], ["SAE"])
    assert list(dict.fromkeys(bars.factor)) == ["SAE: nothing removed", "SAE: ImgD removed", "SAE: TextD removed"]
    assert all(sorted(v) == ["female", "male"] for v in bars.groupby("factor").value.apply(list))
    assert bars.chance.eq(0.5).all()
    imgd = bars[bars.factor == "SAE: ImgD removed"].set_index("value")
    assert imgd.loc["female", "accuracy"] == 0.0 and imgd.loc["male", "accuracy"] == 1.0  # every female image flips
    nothing = bars[bars.factor == "SAE: nothing removed"].set_index("value")
    assert nothing.loc["female", "ci_low"] == base[(base.subset == ALL) & (base.value == "female")].ci_low.iloc[0]


def test_drop_decomposition_hand_computed():
    table = pd.DataFrame({"map": "SAE", "seed": 0, "group": ["ImgD", "ImgD", "TextD", "TextD"],
                          "value": ["f", "m", "f", "m"], "drop": [0.6, -0.4, 0.1, 0.1]})
    dec = drop_decomposition(table, ("f", "m"))
    assert dec.loc[("SAE", 0, "ImgD"), "balanced_drop"] == pytest.approx(0.1)
    assert dec.loc[("SAE", 0, "ImgD"), "shift"] == pytest.approx(0.5)  # mostly the default answer moving
    assert dec.loc[("SAE", 0, "TextD"), "shift"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"value\(s\) \['x'\]"):
        drop_decomposition(table, ("f", "x"))


def test_categorised_map_trains_once_and_categorises(artifact_root):
    from mmlib.feature_maps.raw import RawConfig
    gen = torch.Generator().manual_seed(0)
    image, text = torch.randn(50, 6, generator=gen), torch.randn(50, 6, generator=gen)
    image[:, 0] *= 10  # dimension 0 fires mostly on images
    fmap, cats = categorised_map(("raw", RawConfig()), (image, text), rule="fixed:0.7/0.3")
    assert cats.labels.shape == (6,) and cats.labels[0] == "ImgD"
    again, cats_again = categorised_map(("raw", RawConfig()), (image, text), rule="fixed:0.7/0.3")
    np.testing.assert_array_equal(cats.labels, cats_again.labels)


def margin_table() -> pd.DataFrame:
    """Three seeds; ImgD is empty in seed 2, so female's margin is NaN there."""
    rows = []
    for seed, (f_img, f_txt, f_cross, m_img, m_txt, m_cross) in enumerate(
            [(0.3, 0.1, 0.0, 0.0, 0.4, 0.1), (0.4, 0.1, 0.1, 0.1, 0.3, 0.0), (None, 0.2, 0.1, None, 0.5, 0.1)]):
        for value, excess in (("female", (f_img, f_txt, f_cross)), ("male", (m_img, m_txt, m_cross))):
            rows += [dict(seed=seed, value=value, group=g, excess=e)
                     for g, e in zip(("ImgD", "TextD", "CrossD"), excess) if e is not None]
    return pd.DataFrame(rows)


def test_margin_summary_format_and_rule():
    expected = {"female": "ImgD", "male": "TextD"}
    summary = margin_summary(margin_table(), expected, groups=("ImgD", "TextD", "CrossD"))
    assert list(summary.index) == ["female", "male"] and summary.loc["female", "expected"] == "ImgD"
    assert summary.loc["female", "n_nan"] == 1 and summary.loc["female", "finite"] == pytest.approx([0.2, 0.3])
    assert summary.loc["male", "n_seeds"] == 3 and summary.loc["male", "mean"] == pytest.approx(0.3)
    assert format_margin(summary, "male", interval=False) == "+0.300"
    assert format_margin(summary, "female").endswith(", ImgD empty in 1 of 3 seeds")
    assert format_margin(summary, "female").startswith("+0.250 [")
    text = describe_margins(summary, named=True)
    assert text.startswith("female (expected ImgD) +0.250 [") and "; male (expected TextD) +0.300 [" in text
    assert describe_margins(summary, interval=False) == "female +0.250, ImgD empty in 1 of 3 seeds, male +0.300"
    assert not margins_contradict(summary)
    assert margins_support(summary) == bool((summary.ci_low > 0).all())
    # one finite margin only: no interval, n/a, neither supports nor contradicts
    two_empty = margin_table()
    two_empty = two_empty[~((two_empty.seed == 1) & (two_empty.group == "ImgD"))]
    s2 = margin_summary(two_empty, expected)
    assert format_margin(s2, "female") == ("n/a (ImgD empty in 2 of 3 seeds, margin +0.200 in the other seed; "
                                           "no interval)")
    assert not margins_support(s2) and not margins_contradict(s2)
    flipped = margin_table().assign(excess=lambda t: -t.excess)
    assert margins_contradict(margin_summary(flipped, expected))
