"""SpLiCE's analyses (mmlib.companions.splice.analyses) on planted decompositions and a small generated world."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mmlib.companions.splice import build_splice
from mmlib.companions.splice.analyses import (
    audit_spurious,
    class_concept_weights,
    factor_weight_share,
    faithful_penalties,
    intervene,
    intervention_report,
    name_features,
    remove_concepts,
    sparsity_sweep,
    spurious_concepts,
    tied_concept_lift,
    tied_hits,
    tied_value,
    tied_weights,
    with_wilson_intervals,
    zero_shot_tasks,
)
from mmlib.companions.splice.vocabulary import world_vocabulary
from mmlib.data.world import WorldConfig, default_factors, generate_world
from mmlib.models.embed import EmbedConfig


def test_spurious_backgrounds_show_up_in_shape_classes(planted_splice):
    splice, embeddings, labels = planted_splice()
    dec = splice.decompose(embeddings)
    names = list(default_factors()[0].values)
    table = spurious_concepts(dec.weights, labels, splice.vocabulary, names, exclude_factors=["shape"], top=1)
    assert list(table["concept"]) == ["black", "white", "purple", "brown"]
    assert list(table["class"]) == names
    share = factor_weight_share(dec.weights, labels, splice.vocabulary, names)
    assert np.allclose(share.sum(axis=1), 1.0)
    assert (share["background"] > 0.3).all() and (share["shape"] > 0.4).all()
    per_class = class_concept_weights(dec.weights, labels, splice.vocabulary, names)
    assert per_class.loc["triangle", "purple"] > per_class.loc["circle", "purple"]


def test_concept_intervention_removes_a_factor(planted_splice):
    splice, embeddings, labels = planted_splice()
    dec = splice.decompose(embeddings)
    edited = remove_concepts(dec.weights, splice.vocabulary, concepts=["circle"], factors=["background"])
    background = splice.vocabulary.indices(factors=["background"])
    assert float(edited[:, background].abs().sum()) == 0.0
    assert float(edited[:, splice.vocabulary.index("circle")].abs().sum()) == 0.0
    assert torch.equal(edited[:, splice.vocabulary.index("square")],
                       dec.weights[:, splice.vocabulary.index("square")])
    vocab = splice.vocabulary
    bg_classes = F.normalize(splice.dictionary[[vocab.index(w) for w in ["black", "white", "purple", "brown"]]], dim=1)
    shape_classes = splice.dictionary[[vocab.index(w) for w in ["circle", "square", "triangle", "cross"]]]
    report = intervention_report(splice, embeddings, {"background": (bg_classes, labels),
                                                      "shape": (shape_classes, labels)}, factors=["background"])
    by_task = report.set_index("task")
    assert by_task.loc["background", "recomposed"] == 1.0 and by_task.loc["background", "drop"] >= 0.5
    assert by_task.loc["shape", "intervened"] == 1.0  # the shape task is untouched
    assert intervene(splice, dec.weights, factors=["background"]).shape == embeddings.shape
    with pytest.raises(ValueError, match="nothing to remove"):
        remove_concepts(dec.weights, vocab)


def test_sparsity_sweep_trades_l0_for_fidelity(planted_splice):
    splice, embeddings, labels = planted_splice()
    shape_classes = splice.dictionary[[splice.vocabulary.index(w) for w in ["circle", "square", "triangle", "cross"]]]
    sweep = sparsity_sweep(splice, embeddings, shape_classes, labels, [0.01, 0.1, 0.5, 2.0], progress=False)
    assert list(sweep["l1_penalty"]) == [0.01, 0.1, 0.5, 2.0]
    assert sweep["l0_mean"].is_monotonic_decreasing and sweep["cosine"].is_monotonic_decreasing
    assert sweep["l0_mean"].iloc[-1] == 0.0 and sweep["accuracy"].iloc[0] == 1.0
    assert (sweep["ci_low"] <= sweep["accuracy"]).all() and (sweep["accuracy"] <= sweep["ci_high"]).all()


def test_zero_shot_tasks_and_wilson_intervals(tiny_clip):
    world = generate_world(WorldConfig(n_train=0, n_val=0, n_test=12, seed=1))
    tasks = zero_shot_tasks(tiny_clip, world, ["shape", "colour"])
    assert list(tasks) == ["shape", "colour"]
    for name, (cls, labels) in tasks.items():
        assert cls.shape == (len(world.factor(name).values), 16)
        assert torch.allclose(cls.norm(dim=-1), torch.ones(len(cls)), atol=1e-5)
        assert np.array_equal(labels, world.subset("test").values(name))
    table = pd.DataFrame({"acc": [0.5, 1.0], "n": [10, 4]})
    out = with_wilson_intervals(table, ["acc"], digits=2)
    assert list(out.columns) == ["acc", "n", "acc_ci"] and "acc_ci" not in table
    lo, hi = (float(x) for x in out.loc[0, "acc_ci"].strip("[]").split(", "))
    assert lo < 0.5 < hi and out.loc[1, "acc_ci"].endswith("1.00]")


def sweep(l0, cosine, accuracy, ci_high, dense=0.8, penalties=(0.05, 0.1, 0.2)):
    return pd.DataFrame({"l1_penalty": penalties, "l0_mean": l0, "cosine": cosine, "accuracy": accuracy,
                         "ci_high": ci_high, "dense_accuracy": dense})


def test_faithful_penalties_applies_the_claim_rule():
    a = sweep([20, 8, 3], [0.95, 0.9, 0.7], [0.8, 0.7, 0.5], [0.85, 0.75, 0.6])
    b = sweep([20, 9, 4], [0.95, 0.85, 0.8], [0.8, 0.7, 0.7], [0.85, 0.73, 0.75])
    good, lost = faithful_penalties({"a": a, "b": b})
    assert good == [0.1] and not lost  # 0.2 fails a's cosine; 0.05 is not sparse
    good, lost = faithful_penalties({"a": a, "b": b}, min_cosine=0.95)
    assert good == [] and not lost
    worse = sweep([20, 8, 3], [0.95, 0.9, 0.9], [0.8, 0.5, 0.4], [0.85, 0.6, 0.5])  # both sparse ones lose
    assert faithful_penalties({"a": a, "b": worse}) == ([], True)
    dense_only = sweep([20, 15, 12], [0.95, 0.9, 0.9], [0.8, 0.5, 0.4], [0.85, 0.6, 0.5])
    assert faithful_penalties({"a": dense_only}) == ([], False)  # nothing sparse: neither good nor lost


def test_tied_background_lift_and_hits(planted_splice):
    splice, embeddings, labels = planted_splice()
    vocab = splice.vocabulary
    assert list(tied_value(np.arange(6))) == [0, 1, 2, 3, 0, 1]
    dec = splice.decompose(embeddings)
    lift = tied_concept_lift(dec.weights, labels, vocab)
    assert lift.shape == (4,) and (lift > 0.3).all()  # the planted backgrounds are the tied ones
    names = list(default_factors()[0].values)
    top = spurious_concepts(dec.weights, labels, vocab, names, exclude_factors=["shape"], top=2)
    assert tied_hits(top, vocab, names) == 4
    assert tied_hits(top, vocab, names[1:] + names[:1]) == 0  # class names shifted: no class tops its own tie
    shuffled = np.random.default_rng(0).permutation(labels)
    assert (np.abs(tied_concept_lift(dec.weights, shuffled, vocab)) < 0.2).all()
    tied = tied_weights(dec.weights, vocab, 4)
    assert tied.shape == (len(labels), 4) and (tied[np.arange(len(labels)), labels] > 0.3).all()


@pytest.mark.slow
def test_audit_spurious_on_a_small_world(tiny_clip):
    reference = torch.randn(30, 16)
    splice = build_splice(tiny_clip, world_vocabulary(), image_reference=reference, l1_penalty=0.05)
    config = WorldConfig(n_train=0, n_val=0, n_test=40, seed=2, spurious=1.0)
    audit = audit_spurious(splice, tiny_clip, config, EmbedConfig(batch_size=64), top=2)
    assert audit.strength == 1.0 and audit.tie_rate == 1.0  # every background tied
    assert 0 <= audit.hits <= 4 and set(audit.lift) == set(default_factors()[0].values)
    assert set(audit.top.columns) >= {"class", "rank", "concept", "factor", "lift"}
    assert "shape" not in set(audit.top["factor"]) and 0.0 <= audit.background_accuracy <= 1.0
    assert audit.tied_weight.shape == (40, 4) and audit.labels.shape == (40,)
    control = audit_spurious(splice, tiny_clip, dataclasses.replace(config, spurious=0.0), EmbedConfig(batch_size=64))
    assert control.tie_rate < 0.6


def test_name_features_names_directions_by_their_concepts(planted_splice):
    splice, _, _ = planted_splice()
    vocab = splice.vocabulary
    directions = torch.stack([splice.dictionary[vocab.index("circle")] + 0.5 * splice.dictionary[vocab.index("red")],
                              -splice.dictionary.sum(0)])  # the second has no positive decomposition
    roles = {f.name: f.role for f in default_factors()}
    table = name_features(splice, directions, 0.05, k=2, roles=roles)
    assert list(table.columns) == ["name", "top_factor", "top_role", "l0"]
    assert table.loc[0, "name"] == "circle, red" and table.loc[0, "top_factor"] == "shape"
    assert table.loc[0, "top_role"] == roles["shape"] and table.loc[0, "l0"] >= 2
    assert table.loc[1, "name"] == "(none)" and table.loc[1, "top_role"] == "(none)" and table.loc[1, "l0"] == 0
    assert "top_role" not in name_features(splice, directions[:1], 0.05)
