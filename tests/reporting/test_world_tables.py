"""Chapter 00's tables of the tiny models: training time against the budget, zero-shot accuracy per model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmlib.data.world import WorldConfig, generate_world
from mmlib.models.training import TrainConfig, TrainedModel
from mmlib.reporting.world_tables import training_summary, zero_shot_by_model


def test_training_summary_against_the_budget(tiny_clip, tiny_arch):
    n_params = sum(p.numel() for p in tiny_clip.model.parameters())
    models = {"A": TrainedModel(tiny_clip, tiny_arch, TrainConfig(steps=10, batch_size=4), {}, 12.0, Path("x/abc")),
              "B": TrainedModel(tiny_clip, tiny_arch, TrainConfig(steps=20, batch_size=8), {}, 30.5, Path("x/def"))}
    table = training_summary(models, budget_s=30)
    assert list(table.model) == ["A", "B"]
    assert list(table.within_budget) == [True, False]
    assert table.parameters_M.iloc[0] == pytest.approx(n_params / 1e6)
    assert list(table.steps) == [10, 20] and list(table.batch_size) == [4, 8]
    assert list(table.artifact) == ["abc", "def"] and list(table.seconds) == [12.0, 30.5]


def test_zero_shot_by_model_stacks_the_reports(tiny_clip):
    world = generate_world(WorldConfig(n_train=8, n_val=4, n_test=24, seed=2))
    split = world.subset("test")
    images = {"m1": torch.randn(24, 16), "m2": torch.randn(24, 16)}
    table = zero_shot_by_model({"m1": tiny_clip, "m2": tiny_clip}, images, split, factors=["shape", "colour"],
                               readings=("joint", "single"))
    assert len(table) == 2 * 2 * 2 and list(table.model.unique()) == ["m1", "m2"]
    assert set(table.reading) == {"joint", "single"} and (table.n == 24).all()
    assert table.accuracy.between(0, 1).all() and (table.chance == 0.25).all()
    with pytest.raises(KeyError, match="m3"):
        zero_shot_by_model({"m3": tiny_clip}, images, split)
