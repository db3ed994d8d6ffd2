"""Chapter 02's feature-map comparison tables, on hand-made values, raw-dimension maps and a tiny planted SAE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmlib.data.embeddings import Embeddings
from mmlib.data.planted import ATOM_CLASSES, PlantedConfig, generate_planted
from mmlib.data.world import WorldConfig, generate_world
from mmlib.feature_maps.raw import RawDims
from mmlib.feature_maps.sae import SAEConfig
from mmlib.feature_maps.store import TrainedFeatureMap
from mmlib.profiles import get_profile
from mmlib.reporting.map_quality import (
    ci_cells,
    map_diagnostics,
    planted_recovery,
    profile_row,
    purity_summary,
    purity_table,
    random_purity,
    recovery_window,
    retention_table,
    retrieval_in_galleries,
    sae_variants,
    value_range,
    zero_shot_prompts,
)


def test_ci_cells_hand_values():
    table = pd.DataFrame({"mean": [0.5, float("nan"), 0.25, 0.1], "ci_low": [0.25, 0.0, float("nan"), 0.1],
                          "ci_high": [0.75, 1.0, float("nan"), 0.1004]})
    assert list(ci_cells(table, digits=2)) == ["0.50 [0.25, 0.75]", "-", "0.25", "0.10"]
    assert ci_cells(table.iloc[:0]).empty


def test_value_range():
    assert value_range([0.12345, 0.5, float("nan")], ".2f") == "0.12 to 0.50"
    assert value_range(np.array([3.0, 3.01]), ".1f") == "3.0"
    assert value_range([float("nan")]) == "n/a"


def test_sae_variants_labels_and_configs():
    base = SAEConfig(K=32, l1_coef=0.3, seed=0)
    variants = sae_variants(base, l1_coefs=(0.01, 1.0), topk=(2,), seeds=(0, 1, 2))
    assert [v[:2] for v in variants] == [("relu_l1", "λ=0.01"), ("relu_l1", "λ=1"), ("topk", "k=2"),
                                         ("relu_l1 (seed)", "λ=0.3, seed 1"), ("relu_l1 (seed)", "λ=0.3, seed 2")]
    assert variants[1][2].l1_coef == 1.0 and variants[2][2].kind == "topk" and variants[2][2].k == 2
    assert variants[4][2].seed == 2 and variants[4][2].l1_coef == 0.3 and variants[0][2].K == 32


def test_planted_recovery_table(artifact_root):
    planted = generate_planted(PlantedConfig(d=8, n_shared=4, n_image=2, n_text=2, sparsity=1.0), 256)
    base = SAEConfig(K=16, l1_coef=0.3, epochs=2, batch_size=64)
    table, cosines = planted_recovery(planted, sae_variants(base, l1_coefs=(0.3,), topk=(2,)), threshold=0.5)
    assert list(table.setting) == ["λ=0.3", "k=2"] and list(cosines) == ["λ=0.3", "k=2"]
    assert all(c.shape == (8,) for c in cosines.values())
    assert table.recovered.iloc[0] == pytest.approx(np.mean(cosines["λ=0.3"] >= 0.5))
    for c in ATOM_CLASSES:
        assert table[f"recovered_{c}"].between(0, 1).all()
    assert (table.fvu > 0).all() and (table.l0_image >= 0).all() and (table.seconds >= 0).all()


def test_recovery_window():
    table = pd.DataFrame({"kind": ["relu_l1", "relu_l1", "topk"], "setting": ["λ=0.1", "λ=1", "k=2"],
                          "recovered": [1.0, 0.2, 1.0], "l0_image": [3.0, 0.1, 2.0], "l0_text": [5.0, 0.1, 2.0]})
    window = recovery_window(table, share=1.0)
    assert list(window.setting) == ["λ=0.1", "k=2"] and list(window.l0) == [4.0, 2.0]


def _raw_maps(d: int, seeds=(0, 1)) -> dict[int, dict[str, TrainedFeatureMap]]:
    return {s: {"raw": TrainedFeatureMap(RawDims(d), {}, 0.0, f"k{s}", Path("raw"))} for s in seeds}


def _embeddings(n: int, d: int, same: bool = False) -> Embeddings:
    gen = torch.Generator().manual_seed(n)
    image = torch.randn(n, d, generator=gen)
    return Embeddings(image=image, text=image.clone() if same else torch.randn(n, d, generator=gen), key="k", meta={})


def test_map_diagnostics_rows():
    diag = map_diagnostics(_raw_maps(4), _embeddings(50, 4))
    assert len(diag) == 2 * (2 + 2)      # per seed: raw image/text and CLIP embeddings image/text
    raw = diag[diag["map"] == "raw"]
    assert (raw.dead == 0).all() and (raw.l0 == 4).all() and (raw.K == 4).all()
    clip = diag[diag["map"] == "CLIP embeddings"]
    assert clip.eff_rank.between(1, 4).all() and "mse" not in diag.columns   # no map here has a decoder


def test_retrieval_in_galleries_identical_modalities():
    image = torch.randn(10, 4)
    table = retrieval_in_galleries(RawDims(4), image, image.clone(), size=4)   # galleries of 4, 4 and 2 pairs
    assert set(table.metric) == {"i2t@1", "i2t@5", "t2i@1", "t2i@5"}
    assert np.allclose(table.original, 1.0) and np.allclose(table.retention, table.mapped)
    with pytest.raises(ValueError, match="size"):
        retrieval_in_galleries(RawDims(4), image, image, size=0)


class _Split:
    """A duck-typed WorldSplit: ``depicted`` and ``values`` of one factor."""

    def __init__(self, values: np.ndarray, shown: np.ndarray) -> None:
        self._values, self._shown = values, shown

    def values(self, factor: str) -> np.ndarray:
        return self._values

    def depicted(self, factor: str) -> np.ndarray:
        return self._shown


def test_retention_table_rows():
    test = _embeddings(12, 4, same=True)
    split = _Split(np.arange(12) % 2, np.arange(12) < 8)
    prompts = {"shape": torch.randn(2, 3, 4)}
    table = retention_table(_raw_maps(4), test, split, prompts, gallery=6)
    assert set(table.metric) == {"i2t@1", "i2t@5", "t2i@1", "t2i@5", "zero-shot shape"}
    assert len(table) == 2 * 5 and set(table.seed) == {0, 1}
    assert table[table.metric == "i2t@1"].original.eq(1.0).all()


def test_zero_shot_prompts_shape(tiny_clip):
    world = generate_world(WorldConfig(n_train=8, n_val=4, n_test=8, seed=0))
    prompts = zero_shot_prompts(tiny_clip, world, ["shape"])
    k = len(world.factor("shape").values)
    assert list(prompts) == ["shape"] and prompts["shape"].shape[0] == k and prompts["shape"].shape[2] == 16
    assert prompts["shape"].shape[1] == len(world.factor("colour").values)   # colour is the shape's prompt context


def test_purity_table_summary_and_random():
    n = 60
    labels = {"a": np.arange(n) % 2, "b": np.arange(n) % 3}
    test = _embeddings(n, 3)
    purity = purity_table(_raw_maps(3), test, labels, m=10)
    assert len(purity) == 2 * 2 * 3 and set(purity.side) == {"image", "text"}
    rand = random_purity(labels, m=10, n_draws=50, seed=0)
    assert rand.shape == (50,) and ((rand >= 0.5) & (rand <= 1)).all()
    assert np.array_equal(rand, random_purity(labels, m=10, n_draws=50, seed=0))
    hand = pd.DataFrame({"map": ["x"] * 4, "side": ["image"] * 4, "seed": [0] * 4,
                         "purity": [1.0, 0.6, float("nan"), 0.95]})
    s = purity_summary(hand, random_q95=0.7, pure=0.9).iloc[0]
    assert s.scored == 0.75 and s.mean_purity == pytest.approx((1.0 + 0.6 + 0.95) / 3)
    assert s.share_above_random == pytest.approx(2 / 3) and s.share_pure == pytest.approx(2 / 3)


def test_profile_row():
    tiny, paper = profile_row(get_profile("tiny")), profile_row(get_profile("paper"))
    assert tiny.keys() == paper.keys()
    assert tiny["d"] == 64 and paper["d"] == 512 and "K=4096" in paper["SAE"] and "ViT-B-32" in paper["model"]
