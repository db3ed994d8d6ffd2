"""The paper profile's unCLIP code path, offline: a randomly initialised tiny StableUnCLIPImg2ImgPipeline built
from config (the same classes as stabilityai/stable-diffusion-2-1-unclip-small, tiny sizes), fed edited
embeddings through mmlib.case_studies.t2i.unclip and mmlib.case_studies.t2i.editing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmlib.case_studies.t2i.editing import EditConfig, edit_sweep
from mmlib.case_studies.t2i.unclip import UnCLIPDecoder, load_unclip_pipeline, unclip_embed_dim, unclip_generate
from mmlib.models.clip import WeightsUnavailableError

D = 16  # the tiny pipeline's CLIP embedding size


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer
    words = ["a", "photo", "of", "red", "blue"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{w}</w>": i + 2 for i, w in enumerate(words)}}
    vocab.update({c: len(vocab) + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77), len(vocab)


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )
    torch.manual_seed(0)
    tokenizer, vocab_size = _tokenizer(tmp_path_factory.mktemp("tok"))
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=16, size=16),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=D, projection_dim=D, num_hidden_layers=1, num_attention_heads=2, image_size=16,
            intermediate_size=20, patch_size=8)),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=D),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer,
        text_encoder=CLIPTextModel(CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=D, projection_dim=D, intermediate_size=20,
            num_attention_heads=2, num_hidden_layers=1, vocab_size=vocab_size)),
        unet=UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(16, 32), attention_head_dim=(2, 4),
            norm_num_groups=8, class_embed_type="projection", projection_class_embeddings_input_dim=2 * D,
            cross_attention_dim=D, layers_per_block=1, use_linear_projection=True),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        vae=AutoencoderKL(block_out_channels=(16,), norm_num_groups=8, latent_channels=4),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_generate_from_embeddings_is_seeded_and_conditioned(tiny_pipe):
    assert unclip_embed_dim(tiny_pipe) == D
    z = torch.randn(3, D, generator=torch.Generator().manual_seed(1)) * 5
    a = unclip_generate(tiny_pipe, z, steps=2, seeds=[0, 1, 2])
    b = unclip_generate(tiny_pipe, z, steps=2, seeds=[0, 1, 2], batch_size=2)  # other batching, same seeds
    assert a.shape == (3, 8, 8, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    c = unclip_generate(tiny_pipe, -z, steps=2, seeds=[0, 1, 2])  # another embedding, same noise
    assert not np.array_equal(a, c)


def test_guidance_and_prompt_path(tiny_pipe):
    z = torch.randn(2, D, generator=torch.Generator().manual_seed(2))
    out = unclip_generate(tiny_pipe, z, prompt="a photo of red", steps=2, guidance=3.0)
    assert out.shape == (2, 8, 8, 3)


def test_wrong_size_embeddings_are_refused(tiny_pipe):
    with pytest.raises(ValueError, match=f"expected {D}, got 7"):
        unclip_generate(tiny_pipe, torch.zeros(2, 7), steps=1)
    with pytest.raises(ValueError, match="2-D"):
        unclip_generate(tiny_pipe, torch.zeros(D), steps=1)
    with pytest.raises(ValueError, match="NaN"):
        unclip_generate(tiny_pipe, torch.full((1, D), float("nan")), steps=1)
    with pytest.raises(ValueError, match="expected d=16"):
        UnCLIPDecoder(tiny_pipe).sample(torch.zeros(1, 5), seeds=[0], steps=1)


class _ColourProbe:
    """Reads 'factor' a = whether the image's mean red exceeds its mean blue (a stand-in probe)."""

    def predict(self, images, factors=None):
        red = (images[..., 0].mean((1, 2)) > images[..., 2].mean((1, 2))).astype(int)
        return {f: red for f in (factors or ["a", "b"])}


class _Identity:
    """A 'feature map' with a decoder: features = ReLU of (z, -z)."""

    has_decoder, n_features, input_dim = True, 2 * D, D

    def encode(self, z, modality):
        z = torch.as_tensor(z).float()
        return torch.cat([z.clamp_min(0), (-z).clamp_min(0)], 1)

    def decode(self, h, modality):
        return h[:, :D] - h[:, D:]


def test_edit_sweep_runs_through_the_pipeline(tiny_pipe):
    gen = UnCLIPDecoder(tiny_pipe)
    z_ref = torch.randn(2, D, generator=torch.Generator().manual_seed(3)) * 3
    z_prompt = torch.randn(2, D, generator=torch.Generator().manual_seed(4)) * 3
    mask = np.zeros(2 * D, bool)
    mask[:D] = True
    res = edit_sweep(gen, _ColourProbe(), _Identity(), z_ref, z_prompt, {"half": mask}, "a", np.array([1, 0]),
                     {"a": np.array([0, 1]), "b": np.array([0, 0])},
                     EditConfig(alphas=(0.0, 1.0), steps=2, guidance=1.0))
    assert set(res.images) == {("reference", 0.0), ("half", 1.0)}
    assert len(res.table) == 4 and res.table["shift"][res.table.alpha == 0].abs().max() < 1e-6


def test_offline_load_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="unCLIP pipeline"):
        load_unclip_pipeline("stabilityai/stable-diffusion-2-1-unclip-small")
