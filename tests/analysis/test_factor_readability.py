"""Factor readability: balanced accuracy by hand, and probes on embeddings that hold known factors."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmlib.analysis.factor_readability import balanced_accuracy, readability_table, readability_wide
from mmlib.core.errors import InputError
from mmlib.data.world import WorldConfig, WorldSplit, generate_world


def test_balanced_accuracy_by_hand():
    # class 0: 3 of 4 right, class 1: 0 of 1 right -> (0.75 + 0) / 2; plain accuracy would be 0.6
    correct = np.array([1, 1, 1, 0, 0], dtype=bool)
    labels = np.array([0, 0, 0, 0, 1])
    assert balanced_accuracy(correct, labels) == pytest.approx(0.375)
    assert math.isnan(balanced_accuracy(np.array([], dtype=bool), np.array([])))
    with pytest.raises(InputError, match="one length"):
        balanced_accuracy(correct, labels[:3])


@given(st.lists(st.integers(0, 3), min_size=1, max_size=40))
def test_balanced_accuracy_is_one_when_all_right_and_zero_when_all_wrong(labels):
    labels = np.array(labels)
    assert balanced_accuracy(np.ones(len(labels), bool), labels) == 1.0
    assert balanced_accuracy(np.zeros(len(labels), bool), labels) == 0.0


@pytest.fixture(scope="module")
def small_world():
    return generate_world(dataclasses.replace(WorldConfig(), n_train=600, n_val=0, n_test=400, seed=3))


def _one_hot_embeddings(split: WorldSplit, factor: str, rng: np.random.Generator) -> np.ndarray:
    """Noise, plus a one-hot code of ``factor``'s value (shifted far from the noise)."""
    values = split.values(factor)
    code = np.eye(values.max() + 1)[values] * 5.0
    return np.hstack([code, rng.normal(size=(len(split), 6))])


def test_a_factor_held_by_both_sides_is_readable_and_one_held_by_neither_is_not(small_world):
    rng = np.random.default_rng(0)
    train = WorldSplit(small_world, "train", small_world.indices("train"))
    test = WorldSplit(small_world, "test", small_world.indices("test"))
    emb = {side: (_one_hot_embeddings(train, "shape", rng), _one_hot_embeddings(test, "shape", rng))
           for side in ("image", "text")}
    table = readability_table(train, test, emb, n_boot=50).set_index("factor")
    assert table.loc["shape", "image"] == 1.0 and table.loc["shape", "text"] == 1.0
    assert table.loc["shape", "readable"] and table.loc["shape", "required"]
    assert table.loc["colour", "image"] < 0.5 and not table.loc["colour", "readable"]  # chance is 0.25
    assert table.loc["shape", "image_low"] <= 1.0 <= table.loc["shape", "image_high"]
    # owner is never depicted: no image score, not required from both sides
    assert math.isnan(table.loc["owner", "image"]) and not table.loc["owner", "required"]
    assert not table.loc["owner", "readable"]


def test_bad_embeddings_are_refused(small_world):
    train = WorldSplit(small_world, "train", small_world.indices("train"))
    test = WorldSplit(small_world, "test", small_world.indices("test"))
    good = (np.zeros((len(train), 3)), np.zeros((len(test), 3)))
    with pytest.raises(InputError, match="exactly 'image' and 'text'"):
        readability_table(train, test, {"image": good})
    with pytest.raises(InputError, match="must be \\(train"):
        readability_table(train, test, {"image": good, "text": (good[0][:5], good[1])})
    with pytest.raises(InputError, match="target"):
        readability_table(train, test, {"image": good, "text": good}, target=1.5)


def test_wide_table_puts_models_side_by_side_and_refuses_other_worlds():
    a = pd.DataFrame(dict(factor=["shape", "mood"], role=["cross", "text-ladder"], p_depict=[1.0, 0.5],
                          p_mention=[1.0, 1.0], required=[True, True], image=[0.9, 0.3], text=[1.0, 0.2],
                          readable=[True, False]))
    b = a.assign(image=[0.95, 0.85], text=[0.9, 0.81], readable=[True, True])
    wide = readability_wide({"CLIP": a, "DeCLIP-like": b})
    assert wide.loc["mood", ("DeCLIP-like", "readable")] and not wide.loc["mood", ("CLIP", "readable")]
    assert wide.loc["shape", ("factor", "role")] == "cross"
    with pytest.raises(InputError, match="same world"):
        readability_wide({"CLIP": a, "other": b.iloc[::-1]})
    with pytest.raises(InputError, match="at least one"):
        readability_wide({})
