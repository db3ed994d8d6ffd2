"""Feature-group removal on a tiny exact feature map, against hand-computed accuracies and random removal."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from mmlib.analysis.categories import categorise, random_feature_mask
from mmlib.analysis.matched_controls import ActivityMatched, MatchFallbackWarning, SizeMatched
from mmlib.analysis.mds import modality_dominance
from mmlib.case_studies.removal import (
    RemovalData,
    RemovalReport,
    class_removals,
    crossd_margin,
    crossd_margin_ci,
    group_removal,
    removal_tasks,
    remove_features,
    stack_reports,
)
from mmlib.data.embeddings import Embeddings
from mmlib.data.world import WorldConfig, generate_world
from mmlib.models.prompts import caption_scale, class_embeddings, encode_texts


class SignSplit:
    """Identity with ReLU: ``h = [ReLU(z), ReLU(-z)]`` (K = 2d), decoded exactly by ``h[:, :d] - h[:, d:]``."""

    def __init__(self, has_decoder: bool = True) -> None:
        self.has_decoder = has_decoder

    def encode(self, z, modality):
        return torch.cat([torch.relu(z), torch.relu(-z)], 1)

    def decode(self, h, modality):
        d = h.shape[1] // 2
        return h[:, :d] - h[:, d:]


# Features: 0 = +dim0, 1 = +dim1, 2 = -dim0, 3 = -dim1.
DATA = RemovalData(image_emb=torch.tensor([[2.0, 0.5], [0.5, 2.0]]),
                   text_emb=torch.tensor([[1.5, -0.2], [0.2, 1.5]]),
                   class_emb=torch.tensor([[1.0, 0.0], [0.0, 1.0]]), labels=np.array([0, 1]))
GROUP = np.array([True, False, False, False])


def test_remove_features_decodes_or_returns_features():
    z = torch.tensor([[1.0, -2.0]])
    torch.testing.assert_close(remove_features(SignSplit(), z, "image", np.zeros(4, bool)), z)
    torch.testing.assert_close(remove_features(SignSplit(), z, "image", GROUP), torch.tensor([[0.0, -2.0]]))
    torch.testing.assert_close(remove_features(SignSplit(False), z, "image", np.array([0, 0, 0, 1], bool)),
                               torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("has_decoder", [True, False])
def test_group_removal_hand_computed(has_decoder):
    # Removing +dim0: image 0 -> (0, .5) and class 0 -> 0: image 0 is misclassified and retrieves caption 1.
    # Random single features: +dim1 breaks the same amount, -dim0 and -dim1 break nothing.
    report = group_removal(SignSplit(has_decoder), DATA, {"g": GROUP}, n_random=400, seed=0)
    table = report.table.set_index("metric")
    assert set(table.index) == {"zero_shot", "recall@1"}
    for metric in ("zero_shot", "recall@1"):
        row = table.loc[metric]
        assert (row["original"], row["base"], row["removed"], row["drop"]) == (1.0, 1.0, 0.5, 0.5)
        assert row.n_removed == 1 and row.n_random == 400
        assert row.random_drop_mean == pytest.approx(0.25, abs=0.06)
        assert row.p_greater == pytest.approx(0.5, abs=0.06) and row.p_less == 1.0
        assert (row.random_drop_low, row.random_drop_high) == (0.0, 0.5)
    drops = report.random_drops
    assert len(drops) == 800 and set(drops["drop"]) == {0.0, 0.5}
    again = group_removal(SignSplit(has_decoder), DATA, {"g": GROUP}, n_random=400, seed=0)
    assert again.random_drops["drop"].equals(drops["drop"])


def test_random_draws_only_from_alive_features():
    alive = np.array([True, False, True, False])   # random removals can only take +dim0 or -dim0
    row = group_removal(SignSplit(), DATA, {"g": GROUP}, alive=alive, n_random=200).table.iloc[0]
    assert row.random_drop_mean == pytest.approx(0.25, abs=0.08)


def test_only_retrieval_or_only_zero_shot():
    only_retrieval = RemovalData(image_emb=DATA.image_emb, text_emb=DATA.text_emb)
    assert group_removal(SignSplit(), only_retrieval, {"g": GROUP}, n_random=5).table.metric.tolist() == ["recall@1"]


def test_errors():
    with pytest.raises(ValueError, match="is empty"):
        group_removal(SignSplit(), DATA, {"g": np.zeros(4, bool)})
    with pytest.raises(ValueError, match="mask of shape"):
        group_removal(SignSplit(), DATA, {"g": np.ones(3, bool)})
    with pytest.raises(ValueError, match="boolean"):
        group_removal(SignSplit(), DATA, {"g": np.array([1, 0, 0, 0])})
    with pytest.raises(ValueError, match="pool holds only 1"):
        group_removal(SignSplit(), DATA, {"g": np.array([1, 1, 0, 0], bool)}, alive=GROUP)
    with pytest.raises(ValueError, match="no groups"):
        group_removal(SignSplit(), DATA, {})
    with pytest.raises(ValueError, match="nothing to measure"):
        RemovalData(image_emb=DATA.image_emb)
    with pytest.raises(ValueError, match="both class_emb and labels"):
        RemovalData(image_emb=DATA.image_emb, class_emb=DATA.class_emb)
    with pytest.raises(ValueError, match="paired captions"):
        RemovalData(image_emb=DATA.image_emb, text_emb=DATA.text_emb[:1])


def test_random_feature_mask_draws_k_alive_features_reproducibly():
    alive_idx = np.array([1, 3, 4, 8])
    mask = random_feature_mask(np.random.default_rng([0, 2]), alive_idx, 3, 10)
    assert mask.shape == (10,) and mask.dtype == bool and mask.sum() == 3
    assert set(np.flatnonzero(mask)) <= set(alive_idx.tolist())
    # the same generator state gives the same set (the draw every chapter's random control relies on)
    expected = np.zeros(10, bool)
    expected[np.random.default_rng([0, 2]).choice(alive_idx, size=3, replace=False)] = True
    assert np.array_equal(mask, expected)
    with pytest.raises(ValueError):
        random_feature_mask(np.random.default_rng(0), alive_idx, 5, 10)  # more than alive


# ------------------------------------------------------------------------------------------ the chapter's grid
def test_removal_tasks_builds_zero_shot_and_retrieval(tiny_clip):
    world = generate_world(WorldConfig(n_train=0, n_val=0, n_test=40, seed=2))
    split = world.subset("test")
    gen = torch.Generator().manual_seed(0)
    emb = Embeddings(torch.randn(40, tiny_clip.embed_dim, generator=gen),
                     3 * torch.randn(40, tiny_clip.embed_dim, generator=gen), key="k", meta={})
    tasks = removal_tasks(split, emb, lambda t: encode_texts(tiny_clip, t), ("shape",), n_retrieval=10)
    assert sorted(tasks) == ["retrieval", "zero-shot shape"]
    shape = tasks["zero-shot shape"]
    expected = class_embeddings(lambda t: encode_texts(tiny_clip, t), world.factor("shape"), world.factors, "ensemble")
    assert shape.class_emb.shape == expected.shape
    torch.testing.assert_close(shape.class_emb.norm(dim=1), torch.full((len(expected),), caption_scale(emb.text)))
    torch.testing.assert_close(torch.nn.functional.normalize(shape.class_emb, dim=1), expected)  # same directions
    np.testing.assert_array_equal(shape.labels, split.values("shape"))
    assert tasks["retrieval"].image_emb.shape == (10, tiny_clip.embed_dim) and tasks["retrieval"].class_emb is None
    with pytest.raises(ValueError, match="39 embeddings for a split of 40"):
        removal_tasks(split, Embeddings(emb.image[:39], emb.text[:39], key="k", meta={}), lambda t: t, ())
    with pytest.raises(ValueError, match="at least 2 pairs"):
        removal_tasks(split, emb, lambda t: encode_texts(tiny_clip, t), (), n_retrieval=1)


def test_class_removals_removes_every_non_empty_class_on_every_task():
    # Features: 0 = +dim0 (ImgD), 1 = +dim1 (CrossD), 2 = -dim0 (TextD), 3 = dead.
    cats = categorise(np.array([0.9, 0.5, 0.1, np.nan]), "fixed:0.7/0.3")
    tasks = {"zs": RemovalData(DATA.image_emb, class_emb=DATA.class_emb, labels=DATA.labels),
             "ret": RemovalData(DATA.image_emb, text_emb=DATA.text_emb)}
    report = class_removals(SignSplit(), cats, tasks, n_random=30, seed=3)
    t = report.table
    assert list(dict.fromkeys(t.task)) == ["ret", "zs"]  # sorted
    assert list(t[t.task == "zs"].group) == ["ImgD", "TextD", "CrossD"]
    np.testing.assert_allclose(t["excess"], t["drop"] - t["random_drop_mean"])
    groups = {g: cats.mask(g) for g in ("ImgD", "TextD", "CrossD")}
    direct = group_removal(SignSplit(), tasks["zs"], groups, alive=cats.alive, n_random=30, seed=3).table
    pd.testing.assert_frame_equal(t[t.task == "zs"].drop(columns=["task", "excess"]).reset_index(drop=True), direct)
    assert set(report.random_drops.task) == {"ret", "zs"} and len(report.random_drops) == 2 * 3 * 30
    no_textd = categorise(np.array([0.9, 0.5, 0.5, np.nan]), "fixed:0.7/0.3")
    assert list(class_removals(SignSplit(), no_textd, tasks, n_random=5).table.group.unique()) == ["ImgD", "CrossD"]
    with pytest.raises(ValueError, match="every class"):
        class_removals(SignSplit(), no_textd, tasks, n_random=5, classes=("TextD",))
    with pytest.raises(ValueError, match="no tasks"):
        class_removals(SignSplit(), cats, {}, n_random=5)


def test_stack_reports_adds_the_keys():
    a = RemovalReport(pd.DataFrame({"x": [1, 2]}), pd.DataFrame({"drop": [0.5]}))
    b = RemovalReport(pd.DataFrame({"x": [3]}), pd.DataFrame({"drop": [0.1]}))
    t = stack_reports({("world", 0): a, ("null", 1): b}, keys=("world", "seed"))
    assert t.to_dict("list") == {"x": [1, 2, 3], "world": ["world", "world", "null"], "seed": [0, 0, 1]}
    assert stack_reports({("w", 0): a}, "random_drops", keys=("world", "seed"))["drop"].tolist() == [0.5]
    with pytest.raises(ValueError, match="3 columns"):
        stack_reports({("w", 0): a}, keys=("world", "map", "seed"))
    with pytest.raises(ValueError, match="no reports"):
        stack_reports({})


def test_crossd_margin_hand_computed():
    # seed 0: excess over two tasks, means ImgD 0.2, TextD 0.1, CrossD -0.1 -> d = -0.2
    # seed 1: TextD empty, means ImgD 0.3, CrossD 0.0 -> d = -0.3; seed 2: CrossD empty -> NaN
    rows = [(0, "ImgD", 0.1), (0, "ImgD", 0.3), (0, "TextD", 0.1), (0, "TextD", 0.1), (0, "CrossD", -0.2),
            (0, "CrossD", 0.0), (1, "ImgD", 0.3), (1, "CrossD", 0.0), (2, "ImgD", 0.1), (2, "TextD", 0.2)]
    table = pd.DataFrame(rows, columns=["seed", "group", "excess"]).assign(map="SAE")
    d = crossd_margin(table).set_index("seed")
    assert d.loc[0, "d"] == pytest.approx(-0.2) and d.loc[0, "others"] == pytest.approx(0.1)
    assert d.loc[1, "d"] == pytest.approx(-0.3) and d.loc[1, "crossd"] == pytest.approx(0.0)
    assert np.isnan(d.loc[2, "d"]) and list(d.columns) == ["map", "d", "crossd", "others"]
    ci = crossd_margin_ci(table).set_index("value")
    assert ci.loc["d", "n_seeds"] == 2 and ci.loc["d", "mean"] == pytest.approx(-0.25)
    assert ci.loc["d", "ci_low"] < -0.25 < ci.loc["d", "ci_high"]
    no_crossd = table[table.group != "CrossD"]
    assert crossd_margin(no_crossd)["d"].isna().all()
    with pytest.raises(ValueError, match=r"columns \['map'\] not in the table"):
        crossd_margin(table.drop(columns="map"))




def test_class_removals_against_activity_matched_and_size_matched_controls():
    # Features: 0 = +dim0 (ImgD, fires on 1 pair), 1 = +dim1 (CrossD, 3 pairs), 2 = -dim0 (TextD, 3 pairs), 3 dead
    a_i = np.array([[2.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.1, 0.0]])
    a_t = np.array([[0.0, 1.0, 2.0, 0.0], [0.0, 1.0, 2.0, 0.0], [0.0, 1.0, 2.0, 0.0]])
    cats = categorise(modality_dominance(a_i, a_t), "fixed:0.7/0.3")
    assert cats.labels.tolist() == ["ImgD", "CrossD", "TextD", "dead"]
    tasks = {"zs": RemovalData(DATA.image_emb, class_emb=DATA.class_emb, labels=DATA.labels),
             "ret": RemovalData(DATA.image_emb, text_emb=DATA.text_emb)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", MatchFallbackWarning)  # counted in the matching table, not warned
        report = class_removals(SignSplit(), cats, tasks, n_random=20, seed=1, controls=("activity", "size"))
    t = report.table
    assert set(t.control) == {"activity"}
    np.testing.assert_allclose(t["excess"], t["drop"] - t["random_drop_mean"])
    np.testing.assert_allclose(t["excess_size"], t["drop"] - t["random_drop_mean_size"])
    assert set(report.random_drops.control) == {"activity", "size"} and len(report.random_drops) == 2 * 3 * 2 * 20
    sets = report.control_sets
    assert len(sets) == 3 * 2 * 20 and (sets.features.map(len) == 1).all()
    for group, feature in (("ImgD", 0), ("CrossD", 1), ("TextD", 2)):
        drawn = sets[(sets.group == group) & (sets.control == "activity")].features
        assert all(feature not in f for f in drawn)  # activity-matched controls exclude the group
    assert set(sets[sets.control == "activity"].features.map(lambda f: f[0])) <= {0, 1, 2}  # never the dead one
    m = report.matching.set_index(["group", "control"])
    assert m.loc[("ImgD", "activity"), "support_group"] == 1.0 and m.loc[("CrossD", "size"), "n_group"] == 1
    assert m.loc[("ImgD", "activity"), "excludes_group"]
    # no other feature fires on a single pair: every ImgD match falls back to the nearest stratum
    assert m.loc[("ImgD", "activity"), "n_fallback"] == 20 and m.loc[("ImgD", "activity"), "fallback_share"] == 1.0
    with pytest.warns(MatchFallbackWarning, match="'ImgD', activity controls: 20 of 20"):
        group_removal(SignSplit(), tasks["zs"], {"ImgD": cats.mask("ImgD")}, n_random=20,
                      controls=[ActivityMatched(cats.support, cats.mass, cats.alive)])
    # TextD (support 3, mass 6.1) falls in CrossD's stratum (support 3, mass 6): log2 bins (1, 2) both
    assert m.loc[("TextD", "activity"), "support_control"] == 3.0 and m.loc[("TextD", "activity"), "n_fallback"] == 0
    margin = crossd_margin(t.assign(seed=0, map="SAE"), excess="excess_size")
    assert len(margin) == 1 and np.isfinite(margin.d.iloc[0])
    with pytest.raises(ValueError, match="unknown control"):
        class_removals(SignSplit(), cats, tasks, n_random=2, controls=("nearest",))
    with pytest.raises(ValueError, match="support and activation mass"):
        class_removals(SignSplit(), categorise(np.array([0.9, 0.5, 0.1, np.nan]), "fixed:0.7/0.3"), tasks,
                       n_random=2, controls=("activity",))
    with pytest.raises(ValueError, match="alive is the pool"):
        group_removal(SignSplit(), DATA, {"g": GROUP}, alive=GROUP, controls=[SizeMatched(GROUP)])
    with pytest.raises(ValueError, match="distinct names"):
        group_removal(SignSplit(), DATA, {"g": GROUP}, controls=[SizeMatched(~GROUP), SizeMatched(~GROUP)])
