"""The diffusion decoder: config checks, training/saving/reloading, sampling determinism, bad conditioning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlib.case_studies.t2i.tiny_decoder import (
    DecoderConfig,
    EmbeddingDecoder,
    decoder_key,
    load_or_train_decoder,
    to_resolution,
    to_uint8,
    train_decoder,
)

TINY = DecoderConfig(resolution=8, channels=(8, 16), norm_groups=4, steps=4, batch_size=4, log_every=2)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    return images, torch.from_numpy(rng.normal(size=(12, 6)).astype(np.float32))


def test_resolution_round_trip_and_area_mean():
    img = np.zeros((1, 4, 4, 3), np.uint8)
    img[0, :2, :2] = 255  # top-left quarter white
    x = to_resolution(img, 2)
    assert x.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(x[0, 0].numpy(), [[1.0, -1.0], [-1.0, -1.0]])
    np.testing.assert_array_equal(to_uint8(to_resolution(img, 4)), img)
    with pytest.raises(ValueError, match=r"\(n, S, S, 3\)"):
        to_resolution(np.zeros((2, 4, 4)), 2)
    with pytest.raises(ValueError, match="cannot downsample"):
        to_resolution(img, 8)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=3, max_size=3))
def test_uint8_round_trip_is_exact(rgb):
    img = np.array(rgb, np.uint8).reshape(1, 1, 1, 3).repeat(2, 1).repeat(2, 2)
    np.testing.assert_array_equal(to_uint8(to_resolution(img, 2)), img)


def test_config_errors():
    with pytest.raises(ValueError, match="unknown conditioning 'film'"):
        DecoderConfig(conditioning="film")
    with pytest.raises(ValueError, match="multiple of"):
        DecoderConfig(resolution=10, channels=(8, 16, 16), norm_groups=4)
    with pytest.raises(ValueError, match="unknown cond_norm 'unit'"):
        DecoderConfig(cond_norm="unit")
    with pytest.raises(ValueError, match="cond_drop"):
        DecoderConfig(cond_drop=1.0)
    with pytest.raises(ValueError, match="norm_groups"):
        DecoderConfig(channels=(10, 20))


def test_train_save_reload_gives_identical_outputs(data, artifact_root):
    images, z = data
    first = load_or_train_decoder(images, z, TINY)
    assert first.trained_now and first.path.is_dir() and len(first.history["loss"]) == 2
    assert all(np.isfinite(first.history["loss"]))
    again = load_or_train_decoder(images, z, TINY)
    assert not again.trained_now and again.key == first.key
    for k, v in first.decoder.unet.state_dict().items():
        torch.testing.assert_close(v, again.decoder.unet.state_dict()[k], rtol=0, atol=0)
    torch.testing.assert_close(again.decoder.cond_std, first.decoder.cond_std, rtol=0, atol=0)
    unit = torch.nn.functional.normalize(z, dim=-1)
    torch.testing.assert_close(first.decoder.cond_mean, unit.mean(0))  # the training embeddings' statistics
    torch.testing.assert_close(first.decoder.condition(z).mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    a = first.decoder.sample(z[:3], steps=3, seed=5)
    b = again.decoder.sample(z[:3], steps=3, seed=5)
    assert a.shape == (3, 8, 8, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    # training is deterministic: the same config and data give the same weights
    fresh, _ = train_decoder(images, z, TINY)
    torch.testing.assert_close(next(fresh.unet.parameters()), next(first.decoder.unet.parameters()), rtol=0, atol=0)


def test_key_depends_on_config_and_data(data):
    images, z = data
    k = decoder_key(images, z, TINY)
    assert k == decoder_key(images.copy(), z.clone(), TINY)
    assert k != decoder_key(images, z + 1e-3, TINY)
    assert k != decoder_key(images, z, DecoderConfig(**{**TINY.__dict__, "seed": 1}))


def test_sampling_is_seeded_and_conditioned(data):
    images, z = data
    dec, _ = train_decoder(images, z, TINY)
    a = dec.sample(z[:2], steps=2, seeds=[7, 8])
    b = dec.sample(torch.cat([z[:2], z[:2]]), steps=2, seeds=[7, 8, 7, 8], batch_size=3)
    np.testing.assert_array_equal(a, b[:2])
    np.testing.assert_array_equal(a, b[2:])  # a row's noise depends on its seed only
    c = dec.sample(z[2:4], steps=2, seeds=[7, 8])
    assert not np.array_equal(a, c)
    u1 = dec.sample(z[:1], steps=2, guidance=0.0, seeds=[1])
    u2 = dec.sample(z[5:6], steps=2, guidance=0.0, seeds=[1])
    np.testing.assert_array_equal(u1, u2)  # guidance 0 ignores the conditioning


@pytest.mark.parametrize("change", [{"conditioning": "cross"}, {"cond_norm": "l2", "film": False},
                                    {"cond_norm": "none"}])
def test_other_conditionings_run(data, change):
    images, z = data
    cfg = DecoderConfig(**{**TINY.__dict__, **change, "steps": 2})
    dec, hist = train_decoder(images, z, cfg)
    assert dec.sample(z[:2], steps=2).shape == (2, 8, 8, 3) and len(hist["loss"]) == 1
    if cfg.cond_norm == "l2":
        torch.testing.assert_close(dec.condition(z).norm(dim=1), torch.full((12,), 6 ** 0.5))


def test_bad_conditioning_is_refused(data):
    images, z = data
    dec = EmbeddingDecoder(TINY, embed_dim=6)
    with pytest.raises(ValueError, match="expected 6, got 5"):
        dec.sample(torch.zeros(2, 5), steps=1)
    with pytest.raises(ValueError, match="2-D"):
        dec.sample(torch.zeros(6), steps=1)
    with pytest.raises(ValueError, match="NaN"):
        dec.sample(torch.full((1, 6), float("nan")), steps=1)
    with pytest.raises(ValueError, match="guidance"):
        dec.sample(torch.zeros(1, 6), steps=1, guidance=-1.0)
    with pytest.raises(ValueError, match="noise seeds"):
        dec.sample(torch.zeros(2, 6), steps=1, seeds=[1])
    with pytest.raises(ValueError, match="12 images but 3 embeddings"):
        train_decoder(images, z[:3], TINY)
