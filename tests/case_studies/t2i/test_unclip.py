"""The paper profile's unCLIP code path, offline: a randomly initialised tiny StableUnCLIPImg2ImgPipeline built
from config (the same classes as stabilityai/stable-diffusion-2-1-unclip-small, tiny sizes), fed edited
embeddings through mmlib.case_studies.t2i.unclip and mmlib.case_studies.t2i.editing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlib.case_studies.t2i.editing import EditConfig, edit_sweep
from mmlib.case_studies.t2i.unclip import (
    UnCLIPDecoder,
    load_unclip_pipeline,
    save_tiny_random_unclip,
    tiny_random_unclip,
    unclip_embed_dim,
    unclip_generate,
)
from mmlib.core.errors import InputError
from mmlib.models.clip import WeightsUnavailableError

D = 16  # the tiny pipeline's CLIP embedding size


@pytest.fixture(scope="module")
def tiny_pipe():
    return tiny_random_unclip(D, seed=0)


def test_a_saved_tiny_pipeline_loads_back_from_its_folder(tmp_path, tiny_pipe):
    folder = save_tiny_random_unclip(tmp_path / "unclip", D, seed=0)
    pipe = load_unclip_pipeline(str(folder))
    assert unclip_embed_dim(pipe) == D
    z = torch.randn(2, D, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(unclip_generate(pipe, z, steps=2, seeds=[0, 1]),
                                  unclip_generate(tiny_pipe, z, steps=2, seeds=[0, 1]))
    with pytest.raises(InputError):
        tiny_random_unclip(15)


@pytest.mark.parametrize("size", [6, 9, True, 8.0])
def test_a_bad_image_size_is_refused(size):
    with pytest.raises(InputError, match="image_size"):
        tiny_random_unclip(D, image_size=size)


def test_the_image_size_sets_the_generated_resolution(tmp_path):
    folder = save_tiny_random_unclip(tmp_path / "unclip16", D, seed=0, image_size=16)
    out = unclip_generate(load_unclip_pipeline(str(folder)), torch.zeros(1, D), steps=1, seeds=[0])
    assert out.shape == (1, 16, 16, 3)


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
