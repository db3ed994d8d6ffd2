"""CLIP-InterpreT's analyses (mmlib.companions.clip_interpret.analyses) on planted decompositions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmlib.companions.clip_interpret import decompose_images
from mmlib.companions.clip_interpret.analyses import (
    attribution_by_category,
    contrastive_heatmap,
    dominant_property,
    head_embeddings,
    head_feature_projections,
    head_heatmap,
    head_image_neighbors,
    head_text_neighbors,
    nearest_neighbors,
    neighbour_agreement,
    per_head_neighbours,
    property_nearest_neighbors,
    segmentation_maps,
    share_by_head,
    upsample_heatmap,
    value_queries,
)
from mmlib.companions.clip_interpret.decomposition import ImageDecomposition
from mmlib.companions.clip_interpret.textspan import TextPool


def test_heatmaps_have_the_patch_grid(tiny_clip, tiny_arch, random_images):
    dec = decompose_images(tiny_clip, random_images(3, tiny_arch.image_size), token_layers=[0])
    text_a, text_b = torch.randn(2, tiny_arch.embed_dim)
    grid = tiny_arch.image_size // tiny_arch.patch_size
    heat = head_heatmap(dec, (0, 1), text_a)
    assert heat.shape == (3, grid, grid)
    both = head_heatmap(dec, [(0, 0), (0, 1)], text_a)
    torch.testing.assert_close(both, head_heatmap(dec, (0, 0), text_a) + heat)
    torch.testing.assert_close(contrastive_heatmap(dec, (0, 1), text_a, text_b),
                               heat - head_heatmap(dec, (0, 1), text_b))
    assert upsample_heatmap(heat, tiny_arch.image_size).shape == (3, tiny_arch.image_size, tiny_arch.image_size)
    no_tokens = decompose_images(tiny_clip, random_images(1, tiny_arch.image_size))
    with pytest.raises(ValueError, match="token_layers"):
        head_heatmap(no_tokens, (0, 0), text_a)


def test_heatmap_locates_a_planted_patch(planted_decomposition):
    dec = planted_decomposition()
    text = torch.zeros(8)
    text[3] = 1.0
    tokens = dec.tokens.clone()
    tokens[:, 1, 0, 1 + 2, 3] += 100.0  # patch (1, 0) of head (1, 0) writes along the text
    dec = ImageDecomposition(heads=tokens.sum(3), mlps=dec.mlps, attn_biases=dec.attn_biases,
                             embedding=dec.embedding, ln_bias=dec.ln_bias, tokens=tokens,
                             token_layers=dec.token_layers, grid=dec.grid)
    heat = head_heatmap(dec, (1, 0), text)
    assert bool((heat.flatten(1).argmax(1) == 2).all())


def test_nearest_neighbour_analyses(planted_decomposition):
    dec = planted_decomposition(n=10)
    idx, scores = nearest_neighbors(dec.head(1, 1), dec.head(1, 1), k=3, exclude=range(10))
    assert idx.shape == scores.shape == (10, 3) and not bool((idx == torch.arange(10)[:, None]).any())
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    same, _ = head_image_neighbors(dec, 1, 1, [0, 4], k=3)
    torch.testing.assert_close(same, idx[[0, 4]])
    prop, _ = property_nearest_neighbors(dec, [(0, 0), (1, 1)], [3], k=2)
    expect, _ = nearest_neighbors(head_embeddings(dec, [(0, 0), (1, 1)])[[3]],
                                  head_embeddings(dec, [(0, 0), (1, 1)]), k=2, exclude=[3])
    torch.testing.assert_close(prop, expect)
    text = dec.head(0, 1)[6] * 2.0  # a text along image 6's head output
    best, _ = head_text_neighbors(dec, 0, 1, text, k=1)
    assert best.tolist() == [[6]]


def test_feature_head_projections_find_the_writing_head(planted_decomposition):
    dec = planted_decomposition(n=50, seed=3)
    g = torch.Generator().manual_seed(3)
    activation = torch.rand(50, generator=g)
    heads = dec.heads.clone() * 0.01
    heads[:, 1, 0, 2] += 4.0 * activation  # head (1, 0) writes feature 0's direction e_2
    dec = ImageDecomposition(heads=heads, mlps=dec.mlps, attn_biases=dec.attn_biases, embedding=dec.embedding,
                             ln_bias=dec.ln_bias, tokens=None, token_layers=(), grid=dec.grid)
    directions = torch.zeros(2, 8)
    directions[0, 2] = 3.0
    directions[1, 5] = 1.0
    proj = head_feature_projections(dec, directions)
    assert proj.shape == (2, 2, 2)
    assert torch.argmax(proj[0]).item() == 2  # flat index of (layer 1, head 0)
    weighted = head_feature_projections(dec, directions, activations=torch.stack([activation, activation], 1))
    assert weighted[0, 1, 0] > proj[0, 1, 0]  # weighting by activation emphasises where the feature fires
    table = attribution_by_category(proj, ["ImgD", "TextD"])
    assert len(table) == 2 * 2 * 2 and set(table["category"]) == {"ImgD", "TextD"}
    top = table[table["category"] == "ImgD"].sort_values("projection").iloc[-1]
    assert (top["layer"], top["head"]) == (1, 0) and top["share"] > 0.9


def test_neighbour_agreement_and_dominant_property():
    values = np.array([0, 0, 1, 1, 0])
    neighbours = torch.tensor([[1, 4], [2, 3]])
    assert neighbour_agreement(neighbours, values, [0, 2]) == 1.0
    assert neighbour_agreement(np.array([[2, 4]]), values, np.array([0])) == 0.5
    table = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "consistency": [0.4, 0.8, 0.6, 0.2],
                          "property": ["shape", "colour", "shape", None]})
    assert dominant_property(table) == "shape"
    assert dominant_property(table.iloc[:2]) == "colour"  # a tie goes to the more consistent head's property
    with pytest.raises(ValueError, match="no head"):
        dominant_property(table.assign(property=None))


def test_value_queries_and_per_head_neighbours(planted_decomposition):
    pool = TextPool(texts=("x0", "x1", "y0", "x0b"), properties=("x", "x", "y", "x"), values=(0, 1, 0, 0))
    assert value_queries(pool, "x", 2) == [0, 1]
    with pytest.raises(ValueError, match="value 1"):
        value_queries(pool, "y", 2)
    dec = planted_decomposition(n=10)
    values = {"x": np.arange(10) % 2, "y": np.zeros(10, dtype=int)}
    text_emb = torch.stack([dec.head(1, 1)[0], dec.head(1, 1)[1], dec.head(0, 0)[3], dec.head(1, 1)[2]])
    table = pd.DataFrame({"layer": [1, 0, 0], "head": [1, 0, 1], "property": ["x", "y", None],
                          "consistency": [1.0, 1.0, 0.0]})
    out = per_head_neighbours(dec, table, values, pool, text_emb, np.arange(4), {"x": 2, "y": 1}, k=1)
    assert list(out["head"]) == ["L1H1", "L0H0"] and list(out["chance"]) == [0.5, 1.0]
    assert out.loc[0, "text_nn_precision"] == 1.0  # each text is an image's own head output: it finds that image
    assert out.loc[1, "image_nn_agreement"] == 1.0  # one value only
    nn, _ = head_image_neighbors(dec, 1, 1, np.arange(4), k=1)
    assert out.loc[0, "image_nn_agreement"] == neighbour_agreement(nn, values["x"], np.arange(4))


def test_segmentation_maps_and_share_by_head(planted_decomposition):
    dec = planted_decomposition(n=3, d=8)
    own, other = torch.randn(3, 8), torch.randn(3, 8)
    maps = segmentation_maps(dec, [(1, 0)], own, other, size=6)
    assert maps.shape == (2, 3, 6, 6)
    expect = upsample_heatmap(head_heatmap(dec.select([1]), [(1, 0)], own[1]), 6)[0].numpy()
    np.testing.assert_allclose(maps[0, 1], expect, rtol=1e-5, atol=1e-6)
    contrast = contrastive_heatmap(dec.select([2]), [(1, 0)], own[2], other[2])
    np.testing.assert_allclose(maps[1, 2], upsample_heatmap(contrast, 6)[0].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one pair of texts per image"):
        segmentation_maps(dec, [(1, 0)], own[:2], other, size=6)
    attribution = attribution_by_category(torch.randn(3, 2, 2), ["TextD", "ImgD", "ImgD"])
    pivot = share_by_head(attribution)
    assert list(pivot.index) == ["ImgD", "TextD"] and list(pivot.columns) == ["L0H0", "L0H1", "L1H0", "L1H1"]
    assert pivot.loc["TextD"].abs().sum() == pytest.approx(1.0)  # one feature: its shares of |projection|
