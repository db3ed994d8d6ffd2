"""The per-head decomposition (mmlib.companions.clip_interpret.decomposition) sums to encode_image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmlib.companions.clip_interpret import head_heatmap
from mmlib.companions.clip_interpret.decomposition import (
    ImageDecomposition,
    NotAViTError,
    decompose_images,
    decomposition_error,
    direct_effects,
    layer_index,
    vision_transformer,
    world_images,
)
from mmlib.data.world import WorldConfig, generate_world
from mmlib.models.clip import TinyClipArch, build_tiny_clip, load_open_clip, tiny_bundle


def assert_sums_to_embedding(model: nn.Module, images: torch.Tensor, dec: ImageDecomposition) -> None:
    with torch.inference_mode():
        reference = model.encode_image(images)
    assert dec.total().shape == reference.shape
    torch.testing.assert_close(dec.total(), reference, atol=2e-5, rtol=1e-4)


def test_decomposition_sums_to_embedding_tiny(tiny_clip, tiny_arch, random_images):
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
def test_decomposition_two_layers_with_and_without_a_convolutional_stem(stem, random_images):
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


def test_decomposition_sums_to_embedding_vit_b32_random_weights(random_images):
    bundle = load_open_clip("ViT-B-32", pretrained=None)
    images = random_images(2, 224, seed=2)
    dec = decompose_images(bundle, images, token_layers=[-1])
    assert dec.heads.shape == (2, 12, 12, 512) and dec.grid == (7, 7)
    assert_sums_to_embedding(bundle.model, images, dec)
    assert head_heatmap(dec, (11, 0), torch.randn(512)).shape == (2, 7, 7)


def test_non_vit_tower_is_a_clear_error(random_images):
    bundle = load_open_clip("RN50", pretrained=None)
    with pytest.raises(NotAViTError, match="ModifiedResNet"):
        decompose_images(bundle, random_images(1, 224))
    with pytest.raises(NotAViTError, match="VisionTransformer"):
        vision_transformer(nn.Linear(2, 2))


def test_tiny_bundle_and_model_and_tower_are_all_accepted(tiny_arch, random_images):
    model = build_tiny_clip(tiny_arch, seed=2)
    bundle = tiny_bundle(model, tiny_arch)
    images = random_images(2, tiny_arch.image_size)
    a = decompose_images(bundle, images).total()
    torch.testing.assert_close(decompose_images(model, images).total(), a)
    torch.testing.assert_close(decompose_images(model.visual, images).total(), a)


def test_layer_index_counts_from_the_end():
    assert layer_index(0, 3) == 0 and layer_index(-1, 3) == 2 and layer_index(-3, 3) == 0
    with pytest.raises(IndexError, match="out of range"):
        layer_index(3, 3)


def test_decomposition_error_and_direct_effects(tiny_clip, tiny_arch, random_images):
    images = random_images(5, tiny_arch.image_size)
    dec = decompose_images(tiny_clip, images)
    err = decomposition_error(tiny_clip, images, dec, batch_size=2)
    assert set(err) == {"max_abs", "max_rel"} and err["max_rel"] < 1e-4 and err["max_abs"] < 1e-4
    shifted = dataclasses.replace(dec, ln_bias=dec.ln_bias + 1.0)
    assert decomposition_error(tiny_clip.model, images, shifted)["max_abs"] > 0.9
    with pytest.raises(ValueError, match="decomposition of 5"):
        decomposition_error(tiny_clip, images[:2], dec)
    effects = direct_effects(dec)
    n_heads = tiny_arch.vision_width // tiny_arch.vision_head_width
    assert len(effects) == tiny_arch.vision_layers * (n_heads + 1) + 3
    assert list(effects["term"][:2]) == ["L0H0", "L0H1"] and effects["term"].iloc[-1] == "ln_post bias"
    assert set(effects["kind"]) == {"head", "mlp", "other"}
    assert effects["effect"].sum() == pytest.approx(1.0, abs=1e-5)  # the projections of the unit embedding's terms


def test_world_images_match_the_bundle_preprocessing(tiny_clip, tiny_arch):
    world = generate_world(WorldConfig(n_train=0, n_val=0, n_test=3, image_size=16 * 2, seed=4))
    arch = dataclasses.replace(tiny_arch, image_size=32)
    bundle = tiny_bundle(build_tiny_clip(arch, seed=0), arch)
    fast = world_images(bundle, world, np.array([2, 0]), arch=arch)
    slow = world_images(bundle, world, [2, 0])
    assert fast.shape == slow.shape == (2, 3, 32, 32)
    torch.testing.assert_close(fast, slow, atol=2e-2, rtol=0)  # PIL's uint8 round trip vs the direct float path


@pytest.mark.parametrize("layers", [1, 2])
def test_the_embedding_is_the_sum_of_its_head_terms_as_chapter_10_computes_it(layers):
    """Once claim 6.2a, an identity of the architecture: on a tiny open_clip ViT at random weights, the images of a
    generated world decomposed in several batches (``world_images``, ``decompose_images``, ``decomposition_error``:
    chapter 10's path) sum back to ``encode_image`` to a relative error below the chapter's ``EXACT`` = 1e-4 for every
    image, and dropping any one head's term breaks the sum.
    """
    arch = TinyClipArch(embed_dim=16, image_size=32, patch_size=4, vision_width=32, vision_layers=layers,
                        vision_head_width=8, text_width=32, text_layers=1, text_heads=2, context_length=16,
                        stem_channels=(8,))
    bundle = tiny_bundle(build_tiny_clip(arch, seed=3), arch)
    world = generate_world(WorldConfig(n_train=0, n_val=0, n_test=7, image_size=32, seed=5))
    images = world_images(bundle, world, np.arange(7), arch=arch)
    dec = decompose_images(bundle, images, batch_size=3)
    assert dec.heads.shape == (7, layers, 4, 16)
    err = decomposition_error(bundle, images, dec, batch_size=2)
    assert err["max_rel"] < 1e-4
    for la, h in [(0, 0), (layers - 1, 3)]:
        heads = dec.heads.clone()
        heads[:, la, h] = 0
        assert decomposition_error(bundle, images, dataclasses.replace(dec, heads=heads))["max_rel"] > 1e-3
