"""Model loaders and their errors; the tiny CLIP architecture: preprocessing, save and reload."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmlib.data.world import WorldConfig, generate_world
from mmlib.models.clip import (
    TinyClipArch,
    UnknownModelError,
    WeightsUnavailableError,
    build_tiny_clip,
    load_open_clip,
    load_tiny_clip,
    save_tiny_clip,
)
from mmlib.models.training import (
    images_to_tensor,
)

ARCH = TinyClipArch(embed_dim=32, image_size=32, patch_size=8, vision_width=32, vision_layers=1,
                    vision_head_width=16, text_width=32, text_layers=1, text_heads=2, context_length=32)
WORLD = WorldConfig(n_train=512, n_val=128, n_test=128, seed=0)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="ViT-B-32"):
        load_open_clip("ViT-B-33")



def test_pretrained_offline_says_how_to_run_paper_profile():
    with pytest.raises(WeightsUnavailableError, match="paper"):
        load_open_clip("ViT-B-32", "openai")
    with pytest.raises(WeightsUnavailableError, match="no pretrained tag"):
        load_open_clip("ViT-B-32", "openaii")



def test_preprocess_matches_training_tensor(tiny_arch=ARCH):
    w = generate_world(dataclasses.replace(WORLD, n_train=4, n_val=0, n_test=0))
    from mmlib.models.clip import tiny_bundle
    bundle = tiny_bundle(build_tiny_clip(ARCH), ARCH)
    via_pil = torch.stack([bundle.preprocess(w.image(i)) for i in range(4)])
    assert torch.allclose(via_pil, images_to_tensor(w.images, ARCH), atol=1e-6)



def test_save_reload_identical_outputs(tmp_path):
    model = build_tiny_clip(ARCH, seed=1)
    save_tiny_clip(tmp_path / "m", model, ARCH)
    bundle = load_tiny_clip(tmp_path / "m")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model.encode_image(x), bundle.model.encode_image(x))
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "m").iterdir())


def test_caption_scaled_sets_every_class_to_the_mean_caption_norm():
    import pytest

    from mmlib.models.prompts import caption_scale, caption_scaled

    captions = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1: mean 3
    assert caption_scale(captions) == 3.0
    classes = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    out = caption_scaled(classes, captions)
    assert torch.allclose(out.norm(dim=1), torch.tensor([3.0, 3.0]))
    assert torch.allclose(out[1], torch.tensor([3.0, 3.0]) / 2 ** 0.5)
    assert caption_scaled(torch.ones(2, 4, 2), captions).shape == (2, 4, 2)  # (k, p, d) prompt sets too
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        caption_scale(torch.zeros(0, 2))
