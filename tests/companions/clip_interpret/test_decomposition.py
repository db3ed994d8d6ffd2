"""CLIP-InterpreT: the decomposition sums to encode_image, TextSpan on planted heads, metrics and analyses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmlib.companions.clip_interpret import (
    ImageDecomposition,
    NotAViTError,
    TextPool,
    TextSpanResult,
    attribution_by_category,
    contrastive_heatmap,
    decompose_images,
    head_embeddings,
    head_feature_projections,
    head_heatmap,
    head_image_neighbors,
    head_properties,
    head_text_neighbors,
    interpretability_scores,
    nearest_neighbors,
    property_heads,
    property_nearest_neighbors,
    textspan,
    textspan_heads,
    upsample_heatmap,
    vision_transformer,
    world_descriptions,
)
from mmlib.models.clip import TinyClipArch, build_tiny_clip, load_open_clip, tiny_bundle


def random_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_sums_to_embedding(model: nn.Module, images: torch.Tensor, dec: ImageDecomposition) -> None:
    with torch.inference_mode():
        reference = model.encode_image(images)
    assert dec.total().shape == reference.shape
    torch.testing.assert_close(dec.total(), reference, atol=2e-5, rtol=1e-4)


def test_decomposition_sums_to_embedding_tiny(tiny_clip, tiny_arch):
    images = random_images(4, tiny_arch.image_size)
    dec = decompose_images(tiny_clip, images, token_layers=[-1], batch_size=3)
    n_heads = tiny_arch.vision_width // tiny_arch.vision_head_width
    assert dec.heads.shape == (4, tiny_arch.vision_layers, n_heads, tiny_arch.embed_dim)
    assert dec.mlps.shape == dec.attn_biases.shape == (4, tiny_arch.vision_layers, tiny_arch.embed_dim)
    assert_sums_to_embedding(tiny_clip.model, images, dec)
    grid = tiny_arch.image_size // tiny_arch.patch_size
    assert dec.grid == (grid, grid) and dec.token_layers == (tiny_arch.vision_layers - 1,)
    assert dec.tokens.shape == (4, 1, n_heads, 1 + grid * grid, tiny_arch.embed_dim)
    torch.testing.assert_close(dec.tokens.sum(3), dec.heads[:, -1:], atol=1e-6, rtol=1e-5)
    unit = dec.normalized()
    torch.testing.assert_close(unit.total(), F.normalize(dec.total(), dim=-1), atol=1e-6, rtol=1e-5)
    assert dec.select([2, 0]).total().shape == (2, tiny_arch.embed_dim)


@pytest.mark.parametrize("stem", [(8,), ()], ids=["conv-stem", "patch-conv"])
def test_decomposition_two_layers_with_and_without_a_convolutional_stem(stem):
    arch = TinyClipArch(embed_dim=16, image_size=16, patch_size=4, vision_width=32, vision_layers=2,
                        vision_head_width=8, text_width=32, text_layers=1, text_heads=2, context_length=16,
                        stem_channels=stem)
    model = build_tiny_clip(arch, seed=1).eval()
    assert isinstance(model.visual.conv1, nn.Sequential) == bool(stem)
    images = random_images(3, arch.image_size, seed=1)
    dec = decompose_images(model, images, token_layers=[0, 1])
    assert dec.heads.shape == (3, 2, 4, 16) and dec.grid == (4, 4)
    assert_sums_to_embedding(model, images, dec)
    torch.testing.assert_close(dec.tokens.sum(3), dec.heads, atol=1e-6, rtol=1e-5)


def test_decomposition_sums_to_embedding_vit_b32_random_weights():
    bundle = load_open_clip("ViT-B-32", pretrained=None)
    images = random_images(2, 224, seed=2)
    dec = decompose_images(bundle, images, token_layers=[-1])
    assert dec.heads.shape == (2, 12, 12, 512) and dec.grid == (7, 7)
    assert_sums_to_embedding(bundle.model, images, dec)
    assert head_heatmap(dec, (11, 0), torch.randn(512)).shape == (2, 7, 7)


def test_non_vit_tower_is_a_clear_error():
    bundle = load_open_clip("RN50", pretrained=None)
    with pytest.raises(NotAViTError, match="ModifiedResNet"):
        decompose_images(bundle, random_images(1, 224))
    with pytest.raises(NotAViTError, match="VisionTransformer"):
        vision_transformer(nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------------- TextSpan

def test_textspan_picks_the_planted_text_first():
    g = torch.Generator().manual_seed(0)
    texts = F.normalize(torch.randn(12, 16, generator=g), dim=1)
    coef = torch.randn(300, generator=g)
    outputs = 5.0 + coef[:, None] * texts[7] + 0.01 * torch.randn(300, 16, generator=g)  # a head writing text 7
    picked, explained = textspan(outputs, texts, k=3)
    assert picked[0] == 7 and explained[0] > 0.99 and explained == sorted(explained)
    # two planted directions: both come first, in the order of their variance
    outputs = 3.0 * coef[:, None] * texts[2] + torch.randn(300, generator=g)[:, None] * texts[9]
    picked, explained = textspan(outputs, texts, k=4, rank=2)
    assert picked[:2] == [2, 9] and explained[1] > 0.999 and len(picked) <= 4


def test_textspan_heads_and_property_metrics(tiny_clip, tiny_arch):
    dec = decompose_images(tiny_clip, random_images(20, tiny_arch.image_size))
    pool = world_descriptions()
    assert len(pool) == len(set(pool.texts)) and "a photo of a crimson object" in pool.texts
    text_emb = torch.randn(len(pool), tiny_arch.embed_dim, generator=torch.Generator().manual_seed(0))
    results = textspan_heads(dec, text_emb, pool, k=3)
    assert [(r.layer, r.head) for r in results] == [(0, 0), (0, 1)]
    assert all(len(r.texts) == 3 and r.texts[0] == pool.texts[r.indices[0]] for r in results)
    table = head_properties(results, pool)
    assert list(table.columns) == ["layer", "head", "property", "consistency", "explained", "texts"]
    with pytest.raises(ValueError, match="text embeddings"):
        textspan_heads(dec, text_emb[:5], pool)


def test_property_consistency_and_entanglement_hand_computed():
    pool = TextPool(texts=tuple("abcdefgh"), values=(0,) * 8,
                    properties=("colour", "colour", "colour", "shape", "shape", "size", None, "shape"))
    results = [TextSpanResult(0, 0, (0, 1, 2), ("a", "b", "c"), (0.5, 0.6, 0.7)),   # colour 3/3
               TextSpanResult(0, 1, (3, 4, 0), ("d", "e", "a"), (0.5, 0.6, 0.7)),   # shape 2/3
               TextSpanResult(1, 0, (5, 6, 7), ("f", "g", "h"), (0.5, 0.6, 0.8)),   # tie size/shape -> size 1/3
               TextSpanResult(1, 1, (1, 3, 2), ("b", "d", "c"), (0.5, 0.6, 0.9))]   # colour 2/3
    table = head_properties(results, pool)
    assert list(table["property"]) == ["colour", "shape", "size", "colour"]
    assert np.allclose(table["consistency"], [1.0, 2 / 3, 1 / 3, 2 / 3])
    scores = interpretability_scores(table)
    assert scores["association"] == pytest.approx(2.667 / 4, abs=1e-3)
    assert scores["entanglement"] == pytest.approx(0.5)  # the two colour heads share their property
    assert scores["disentanglement"] == pytest.approx(0.5) and scores["distinct_properties"] == 3
    strict = head_properties(results, pool, min_consistency=0.5)
    assert strict["property"].isna().sum() == 1
    assert property_heads(table, "colour") == [(0, 0), (1, 1)]


# ------------------------------------------------------------------------------------------------- analyses

def planted_decomposition(n: int = 12, layers: int = 2, heads: int = 2, d: int = 8, grid: int = 2,
                          seed: int = 0) -> ImageDecomposition:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, layers, heads, 1 + grid * grid, d, generator=g)
    zeros = torch.zeros(n, layers, d)
    return ImageDecomposition(heads=tokens.sum(3), mlps=zeros, attn_biases=zeros.clone(), embedding=torch.zeros(n, d),
                              ln_bias=torch.zeros(n, d), tokens=tokens, token_layers=tuple(range(layers)),
                              grid=(grid, grid))


def test_heatmaps_have_the_patch_grid(tiny_clip, tiny_arch):
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


def test_heatmap_locates_a_planted_patch():
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


def test_nearest_neighbour_analyses():
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


def test_feature_head_projections_find_the_writing_head():
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


def test_tiny_bundle_and_model_and_tower_are_all_accepted(tiny_arch):
    model = build_tiny_clip(tiny_arch, seed=2)
    bundle = tiny_bundle(model, tiny_arch)
    images = random_images(2, tiny_arch.image_size)
    a = decompose_images(bundle, images).total()
    torch.testing.assert_close(decompose_images(model, images).total(), a)
    torch.testing.assert_close(decompose_images(model.visual, images).total(), a)
