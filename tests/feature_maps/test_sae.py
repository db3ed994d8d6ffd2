"""The multimodal SAE: config validation, model invariants, storage, determinism, and a cross-check against
the overcomplete library.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmlib.data.planted import PlantedConfig, generate_planted
from mmlib.feature_maps.sae import _SAE, SAEConfig, SAEMap, _aux_loss, train_sae
from mmlib.feature_maps.store import load_feature_map

DATA = generate_planted(PlantedConfig(d=16, n_shared=8, n_image=4, n_text=4, sparsity=2.0, gap=2.0, seed=3), 600)
VARIANTS = {
    "relu_shared": SAEConfig(K=32, epochs=3, batch_size=64, normalize="center_scale", resample_at=(0.5,),
                             dead_window=5, l1_coef=0.3),
    "topk_separate": SAEConfig(K=24, kind="topk", k=3, shared=False, epochs=3, batch_size=64, dead_window=5),
}


@pytest.fixture(scope="module")
def trained() -> dict[str, tuple[SAEMap, dict]]:
    return {name: train_sae(DATA, config, progress=False, threads=1) for name, config in VARIANTS.items()}


# ------------------------------------------------------------------------------------------------- config

@pytest.mark.parametrize("kwargs, message", [
    (dict(K=0), "K .* positive"),
    (dict(K=-3), "K .* positive"),
    (dict(kind="topk", k=0), r"k .* \[1, K=512\]"),
    (dict(kind="topk", K=8, k=9), r"\[1, K=8\], got 9"),
    (dict(l1_coef=-0.1), "l1_coef"),
    (dict(l1_coef=float("nan")), "l1_coef"),
    (dict(kind="gated"), "kind"),
    (dict(normalize="whiten"), "normalize"),
    (dict(epochs=0), "epochs"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=0.0), "lr"),
    (dict(resample_at=(1.5,)), "resample_at"),
    (dict(aux_k=0), "aux_k"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SAEConfig(**kwargs)


def test_topk_k_is_not_checked_for_relu_l1():
    assert SAEConfig(K=4, k=100).kind == "relu_l1"


# ---------------------------------------------------------------------------------------------- the model

def test_initialisation_bd_at_the_mean_and_tied_encoder():
    """With a vanishing learning rate the trained map is its initialisation."""
    config = SAEConfig(K=12, epochs=1, batch_size=600, lr=1e-12, normalize="none", resample_at=())
    fmap, _ = train_sae(DATA, config, progress=False, threads=1)
    pooled = torch.cat([DATA.image, DATA.text]).mean(0)
    assert torch.allclose(fmap.model.b_d[0], pooled, atol=1e-5)
    assert torch.allclose(fmap.model.W_e[0], fmap.model.W_d[0].T, atol=1e-5)
    per_mod, _ = train_sae(DATA, SAEConfig(K=12, epochs=1, batch_size=600, lr=1e-12, normalize="none",
                                           shared=False), progress=False, threads=1)
    assert torch.allclose(per_mod.model.b_d, torch.stack([DATA.image.mean(0), DATA.text.mean(0)]), atol=1e-5)


def test_decoder_columns_have_unit_norm(trained):
    for fmap, _ in trained.values():
        assert torch.allclose(fmap.model.W_d.norm(dim=1), torch.ones(1), atol=1e-5)
        assert torch.allclose(fmap.dictionary.norm(dim=1), torch.ones(1), atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 8), st.just(16)),
              elements=st.floats(-100, 100, allow_nan=False, width=32)),
       st.sampled_from(["image", "text"]))
def test_encode_is_non_negative_and_topk_is_k_sparse(trained, z, modality):
    for name, config in VARIANTS.items():
        fmap, _ = trained[name]
        h = fmap.encode(z, modality)
        assert h.shape == (len(z), fmap.n_features) and bool((h >= 0).all())
        if config.kind == "topk":
            assert int((h > 0).sum(1).max()) <= config.k


def test_per_modality_maps_use_separate_blocks(trained):
    fmap, _ = trained["topk_separate"]
    assert fmap.n_features == 2 * 24 and fmap.n_latents == 24
    h_img, h_txt = fmap.encode(DATA.image, "image"), fmap.encode(DATA.text, "text")
    assert not h_img[:, 24:].any() and not h_txt[:, :24].any()
    assert h_img[:, :24].any() and h_txt[:, 24:].any()


def test_decode_returns_the_original_space():
    offset = torch.full((16,), 50.0)
    data = (DATA.image + offset, DATA.text - offset)
    fmap, _ = train_sae(data, SAEConfig(K=32, epochs=3, batch_size=64, normalize="center_scale", l1_coef=0.05),
                        progress=False, threads=1)
    for z, modality in ((data[0], "image"), (data[1], "text")):
        z_hat = fmap.reconstruct(z, modality)
        err = (z - z_hat).square().sum(1).mean() / (z - z.mean(0)).square().sum(1).mean()
        assert float(err) < 0.5
        assert torch.allclose(z_hat.mean(0), z.mean(0), atol=0.5)
    assert torch.allclose(fmap.norm_mean, torch.stack([data[0].mean(0), data[1].mean(0)]), atol=1e-4)


def test_scale_normalisation_statistics():
    fmap, _ = train_sae(DATA, SAEConfig(K=8, epochs=1, batch_size=64), progress=False, threads=1)
    expected = torch.stack([DATA.image.square().sum(1).mean().sqrt(), DATA.text.square().sum(1).mean().sqrt()])
    assert torch.allclose(fmap.norm_scale, expected, rtol=1e-4) and not fmap.norm_mean.any()


def test_decode_checks_its_input(trained):
    fmap, _ = trained["relu_shared"]
    with pytest.raises(ValueError, match="expected 32, got 5"):
        fmap.decode(torch.zeros(2, 5), "image")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fmap.decode(torch.full((2, 32), float("nan")), "text")


def test_aux_loss_hand_value():
    model = _SAE(1, 2, 3, "topk", 1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.W_d.copy_(torch.tensor([[[1.0, 0.0, 2 ** -0.5], [0.0, 1.0, 2 ** -0.5]]]))
    residual = torch.tensor([[[1.0, 0.0]]])
    pre = torch.tensor([[[0.1, 0.5, 2.0]]])
    dead = torch.tensor([[True, True, False]])
    # aux_k = 1: dead latent 1 (0.5) estimates (0, 0.5): error 1 + 0.25, over ||residual||² = 1
    assert float(_aux_loss(model, residual, pre, dead, 1).detach()) == pytest.approx(1.25)
    # aux_k = 2: (0.1, 0.5): error 0.81 + 0.25
    assert float(_aux_loss(model, residual, pre, dead, 2).detach()) == pytest.approx(1.06)


# ------------------------------------------------------------------------------------ training and storage

def test_history_records_loss_sparsity_and_dead_fraction(trained):
    for name, (_, history) in trained.items():
        n_logs = len(history["step"])
        assert n_logs > 0 and all(len(history[k]) == n_logs for k in ("loss", "mse", "l0", "dead", "lr"))
        assert all(0.0 <= d <= 1.0 for d in history["dead"])
        assert history["step"][-1] == VARIANTS[name].epochs * math.ceil(600 / 64)
    _, relu_history = trained["relu_shared"]
    assert relu_history["resample_step"] == [round(0.5 * relu_history["step"][-1])]
    assert trained["topk_separate"][1]["l0"][-1] <= 3


def test_training_is_deterministic_and_seeded():
    config = SAEConfig(K=16, epochs=2, batch_size=64)
    a, ha = train_sae(DATA, config, progress=False, threads=1)
    b, hb = train_sae(DATA, config, progress=False, threads=1)
    c, _ = train_sae(DATA, SAEConfig(K=16, epochs=2, batch_size=64, seed=1), progress=False, threads=1)
    assert all(torch.equal(a.state_tensors()[k], b.state_tensors()[k]) for k in a.state_tensors())
    assert ha == hb
    assert not torch.equal(a.model.W_d, c.model.W_d)


def test_loss_decreases():
    _, history = train_sae(DATA, SAEConfig(K=32, epochs=4, batch_size=64, log_every=5), progress=False, threads=1)
    assert history["mse"][-1] < 0.5 * history["mse"][0]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_save_load_gives_identical_encodings_and_decodings(trained, tmp_path, name):
    fmap, _ = trained[name]
    back = load_feature_map(fmap.save(tmp_path / f"{name}.safetensors"))
    assert isinstance(back, SAEMap) and back.hparams == fmap.hparams and back.source == fmap.source
    assert back.name == fmap.name
    for z, modality in ((DATA.image, "image"), (DATA.text, "text")):
        h = fmap.encode(z, modality)
        assert torch.equal(back.encode(z, modality), h)
        assert torch.equal(back.decode(h, modality), fmap.decode(h, modality))


def test_map_records_its_source(trained):
    fmap, _ = trained["relu_shared"]
    assert fmap.source.identity == DATA.meta["identity"] and fmap.source.embeddings_key == DATA.key
    emb_map, _ = train_sae(DATA.as_embeddings(), SAEConfig(K=8, epochs=1), progress=False, threads=1)
    assert emb_map.source.identity == f"planted:{DATA.key}" and emb_map.source.n == 600


# ----------------------------------------------------------------------------------- overcomplete cross-check

@pytest.mark.slow
def test_fvu_matches_overcomplete_at_equal_l0(load_benchmark):
    """Both TopK SAEs (same K, k, epochs, rows per step, lr) on the same planted embeddings: ours is within 0.02
    FVU of overcomplete's, or better (``benchmarks/bench_sae.py`` runs the full-size comparison).
    """
    if importlib.util.find_spec("overcomplete") is None:
        pytest.skip("overcomplete (a test dependency) is not installed")
    bench = load_benchmark("bench_sae")
    sizes = bench.Sizes(n=2000, K=128, k=4, epochs=20, batch_pairs=128, lr=3e-3, pairs=1, threads=1, scaling_K=())
    row = bench.run(sizes, log=lambda line: None)["ratios"][0]
    assert row["l0_ours"] == pytest.approx(4, abs=0.05) and row["l0_reference"] == pytest.approx(4, abs=0.05), row
    assert row["fvu_ours"] <= row["fvu_reference"] + 0.02, row
