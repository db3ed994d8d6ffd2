"""The multimodal SAE: config validation, model invariants, storage, determinism, and a cross-check against
the overcomplete library.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmlib.data.planted import PlantedConfig, generate_planted
from mmlib.feature_maps._training import iterate_batches, linear_decay_lr, training_data
from mmlib.feature_maps.sae import (
    _SAE,
    SAEConfig,
    SAEMap,
    _aux_loss,
    _group,
    _normalization,
    _pre_at,
    _sparse_decode,
    _topk,
    _topk_sae_loss,
    train_sae,
)
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
    x = torch.zeros(1, 1, 2)
    residual = torch.tensor([[[1.0, 0.0]]])
    pre = torch.tensor([[[0.1, 0.5, 2.0]]])
    dead = torch.tensor([[True, True, False]])
    # aux_k = 1: dead latent 1 (0.5) estimates (0, 0.5): error 1 + 0.25, over ||residual||² = 1
    assert float(_aux_loss(model, x, residual, pre, dead, 1).detach()) == pytest.approx(1.25)
    # aux_k = 2: (0.1, 0.5): error 0.81 + 0.25
    assert float(_aux_loss(model, x, residual, pre, dead, 2).detach()) == pytest.approx(1.06)


# ------------------------------------------------------------------------------------- sparse TopK kernels

def _model64(n_sae: int, dim: int, n_latents: int, k: int, seed: int = 0) -> _SAE:
    """A float64 model with non-trivial biases (so that ReLU cuts some top-k values)."""
    gen = torch.Generator().manual_seed(seed)
    model = _SAE(n_sae, dim, n_latents, "topk", k, gen).double()
    with torch.no_grad():
        model.W_e.add_(0.3 * torch.randn(model.W_e.shape, generator=gen, dtype=torch.float64))
        model.b_e.copy_(0.5 * torch.randn(model.b_e.shape, generator=gen, dtype=torch.float64) - 2.0)
        model.b_d.copy_(0.2 * torch.randn(model.b_d.shape, generator=gen, dtype=torch.float64))
    return model


def _dense_reference(model: _SAE, x: torch.Tensor) -> torch.Tensor:
    """The dense TopK SAE (codes ``(M, b, K)``, decoder product), as the model was written before the kernels."""
    pre = model.pre(x)
    top = pre.topk(model.k, dim=-1)
    h = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return model.decode(h)


@pytest.mark.parametrize("shape, k", [((3, 64), 1), ((2, 5, 256), 8), ((300, 128), 4), ((3, 96), 8), ((5, 480), 8),
                                      ((2, 64), 2), ((300, 1024), 4), ((7, 96), 16),
                                      ((4, 100), 8), ((6, 512), 17), ((2, 32), 8)])
def test_topk_equals_torch_topk(shape, k):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(k))
    values, indices = _topk(x, k)
    expected = x.topk(k, dim=-1)
    assert torch.equal(values, expected.values) and torch.equal(indices, expected.indices)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.sampled_from([64, 128, 256]), st.integers(1, 16), st.integers(0, 2 ** 31 - 1),
       st.booleans())
def test_topk_values_and_indices_with_ties(rows, n_cols, k, seed, ties):
    """With ties (a few distinct values) the values are torch's and the indices distinct entries holding them."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 5, (rows, n_cols), generator=gen).float() if ties else torch.randn(rows, n_cols, generator=gen)
    values, indices = _topk(x, k)
    assert torch.equal(values, x.topk(k, dim=-1).values)
    assert torch.equal(x.gather(1, indices), values)
    assert all(len(set(row.tolist())) == k for row in indices)


@pytest.mark.parametrize("n_sae", [1, 2])
def test_topk_sae_loss_and_gradients_equal_the_dense_model(n_sae):
    model = _model64(n_sae, 6, 64, 5)
    x = torch.randn(n_sae, 9, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    params = [model.W_e, model.b_e, model.W_d, model.b_d]

    loss, residual, values, indices, pre = _topk_sae_loss(x, *params, model.k, 0.3)
    sparse_grads = torch.autograd.grad(loss, params)
    dense = _dense_reference(model, x)
    dense_loss = 0.3 * (x - dense).square().sum()
    dense_grads = torch.autograd.grad(dense_loss, params)

    assert bool((values == 0).any()) and bool((values > 0).any())  # the ReLU cuts some codes
    assert float(loss.detach()) == pytest.approx(float(dense_loss.detach()), rel=1e-12)
    assert torch.allclose(residual, x - dense.detach(), atol=1e-12)
    assert torch.allclose(pre, model.pre(x).detach(), atol=1e-12)
    assert torch.equal(values, torch.relu(pre.gather(-1, indices)))
    for got, want in zip(sparse_grads, dense_grads):
        assert torch.allclose(got, want, atol=1e-12)


def test_topk_sae_loss_gradcheck():
    model = _model64(2, 3, 8, 2, seed=3)
    x = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    params = [p.detach().clone().requires_grad_() for p in (model.W_e, model.b_e, model.W_d, model.b_d)]
    assert torch.autograd.gradcheck(lambda W_e, b_e, W_d, b_d: _topk_sae_loss(x, W_e, b_e, W_d, b_d, 2, 0.7)[0],
                                    params)


def test_pre_at_and_sparse_decode_gradcheck():
    model = _model64(2, 3, 7, 2, seed=5)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    indices = torch.stack([torch.randperm(7, generator=gen)[:3] for _ in range(8)]).view(2, 4, 3)
    values = torch.rand(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    W_e, b_e, W_d, b_d = (p.detach().clone().requires_grad_() for p in (model.W_e, model.b_e, model.W_d, model.b_d))

    def pre_at(x, W_e, b_e, b_d):
        pre = torch.baddbmm(b_e[:, None], x - b_d[:, None], W_e.transpose(1, 2)).detach()
        return _pre_at(pre, x, W_e, b_e, b_d, indices)

    assert torch.autograd.gradcheck(pre_at, (x, W_e, b_e, b_d))
    assert torch.autograd.gradcheck(lambda v, W_d: _sparse_decode(v, indices, W_d), (values, W_d))
    dense = torch.zeros(2, 4, 7, dtype=torch.float64).scatter(-1, indices, values.detach())
    assert torch.allclose(_sparse_decode(values, indices, W_d), dense @ W_d.detach().transpose(1, 2), atol=1e-12)


@pytest.mark.parametrize("n_sae", [1, 2])
def test_aux_loss_equals_the_dense_computation(n_sae):
    """The AuxK loss and its gradients (sparse kernels) equal a dense computation on the dead latents."""
    model = _model64(n_sae, 5, 40, 3, seed=7)
    x = torch.randn(n_sae, 6, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    dead = torch.rand(n_sae, 40, generator=torch.Generator().manual_seed(9)) < 0.4
    aux_k = 4
    params = [model.W_e, model.b_e, model.W_d, model.b_d]
    with torch.no_grad():
        _, residual, _, _, pre = _topk_sae_loss(x, *params, model.k)
    sparse = _aux_loss(model, x, residual, pre, dead, aux_k)
    sparse_grads = torch.autograd.grad(sparse, params, allow_unused=True)

    total = _dense_aux_loss(model, model.pre(x), residual, dead, aux_k)
    dense_grads = torch.autograd.grad(total, params, allow_unused=True)
    assert float(sparse.detach()) == pytest.approx(float(total.detach()), rel=1e-12)
    for got, want in zip(sparse_grads, dense_grads):
        assert torch.allclose(got, want, atol=1e-12)


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


def _dense_topk_training(data, config: SAEConfig) -> tuple[_SAE, dict[str, list[float]]]:
    """A reference TopK trainer as the module was written before its sparse kernels: dense codes ``(M, b, K)``, dense
    decoder product, per-modality MSE, AuxK on the dense pre-activations of the dead latents, autograd, Adam.
    """
    chunks, stats, _ = training_data(data, config.chunk_size)
    gen = torch.Generator().manual_seed(config.seed)
    norm_mean, norm_scale = _normalization(stats, config.normalize)
    model = _SAE(config.n_sae, stats.dim, config.K, "topk", config.k, gen)
    with torch.no_grad():
        centre = (stats.mean - norm_mean) / norm_scale[:, None]
        model.b_d.copy_(centre.mean(0, keepdim=True) if config.shared else centre)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    total = config.epochs * stats.steps_per_epoch(config.batch_size)
    last = torch.zeros(config.n_sae, config.K, dtype=torch.long)
    history: dict[str, list[float]] = {"loss": [], "mse": [], "l0": [], "dead": []}
    step = 0
    for _ in range(config.epochs):
        for z in iterate_batches(chunks, config.batch_size, gen):
            step += 1
            for group in optimizer.param_groups:
                group["lr"] = linear_decay_lr(step, total, config.lr, config.lr_decay)
            x = _group((z - norm_mean[:, None, :]) / norm_scale[:, None, None], config.n_sae)
            pre = model.pre(x)
            top = pre.topk(config.k, dim=-1)
            h = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            x_hat = model.decode(h)
            mse = (x - x_hat).square().sum(-1).reshape(2, -1).mean(1)
            loss = mse.sum()
            last[(h > 0).any(1)] = step
            dead = (step - last) >= config.dead_window
            if bool(dead.any()):
                loss = loss + config.aux_coef * _dense_aux_loss(model, pre, (x - x_hat).detach(), dead, stats.dim // 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.normalize_decoder()
            for key, value in (("loss", loss), ("mse", mse.mean()), ("dead", dead.float().mean())):
                history[key].append(float(value.detach()))
            history["l0"].append(int((h > 0).sum()) / (2 * z.shape[1]))
    return model, history


def _dense_aux_loss(model: _SAE, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor,
                    aux_k: int) -> torch.Tensor:
    """AuxK with dense codes of the dead latents (pre-activations ``pre`` with their gradient)."""
    total = pre.new_zeros(())
    for s in range(dead.shape[0]):
        if not bool(dead[s].any()):
            continue
        masked = pre[s].masked_fill(~dead[s], float("-inf"))
        top = masked.topk(min(aux_k, int(dead[s].sum())), dim=-1)
        h = torch.zeros_like(masked).scatter(-1, top.indices, torch.relu(top.values))
        err = (residual[s] - h @ model.W_d[s].T).square().sum(-1).mean()
        total = total + err / residual[s].square().sum(-1).mean()
    return total


@pytest.mark.parametrize("shared", [True, False])
def test_topk_training_equals_the_dense_reference_trainer(shared):
    """TopK training (sparse kernels, grouped top-k, liveness by index, AuxK on dead latents) follows the dense
    formulation step by step: the same losses, MSE, L0, dead fractions and final weights, up to float rounding.
    """
    config = SAEConfig(K=64, kind="topk", k=8, shared=shared, epochs=3, batch_size=50, dead_window=4, lr=1e-2,
                       normalize="center_scale", log_every=1)
    fmap, history = train_sae(DATA, config, progress=False, threads=1)
    reference, expected = _dense_topk_training(DATA, config)
    assert max(history["dead"]) > 0  # AuxK was used
    assert history["dead"] == expected["dead"] and history["l0"] == expected["l0"]
    for key in ("loss", "mse"):
        assert np.allclose(history[key], expected[key], rtol=1e-4), key
    for key, tensor in reference.state_dict().items():
        assert torch.allclose(fmap.state_tensors()[key], tensor, atol=1e-4), key


@pytest.mark.parametrize("shared", [True, False])
def test_topk_codes_cut_by_the_relu_do_not_fire(shared):
    """Constant embeddings sit at ``b_d``'s start (their mean): every pre-activation is 0, so the top-k codes are all
    0, nothing fires, the loss stays 0 and every latent is dead once ``dead_window`` steps have passed.
    """
    z = torch.ones(40, 16)
    config = SAEConfig(K=64, kind="topk", k=8, shared=shared, epochs=2, batch_size=10, dead_window=3,
                       normalize="none", log_every=1)
    _, history = train_sae((z, z.clone()), config, progress=False, threads=1)
    assert history["l0"] == [0.0] * 8 and history["loss"] == [0.0] * 8
    assert history["dead"] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("kind", ["relu_l1", "topk"])
def test_training_is_deterministic_and_seeded(kind):
    config = SAEConfig(K=64, kind=kind, k=4, epochs=2, batch_size=64, dead_window=3)
    a, ha = train_sae(DATA, config, progress=False, threads=1)
    b, hb = train_sae(DATA, config, progress=False, threads=1)
    c, _ = train_sae(DATA, dataclasses.replace(config, seed=1), progress=False, threads=1)
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
