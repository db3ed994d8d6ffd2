"""The multimodal NCL head: config validation, RepReLU, invariants, storage, determinism, learning."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmlib.data.planted import PlantedConfig, generate_planted
from mmlib.feature_maps.diagnostics import retrieval_recall
from mmlib.feature_maps.ncl import NCLConfig, NCLMap, rep_relu, train_ncl
from mmlib.feature_maps.store import load_feature_map

DATA = generate_planted(PlantedConfig(d=16, n_shared=8, n_image=4, n_text=4, sparsity=2.0, seed=5), 512)
VARIANTS = {
    "linear_relu_shared": NCLConfig(K=24, epochs=4, batch_size=64),
    "mlp_rep_relu_separate": NCLConfig(K=24, head="mlp", hidden=32, nonneg="rep_relu", shared=False, epochs=4,
                                       batch_size=64),
}


@pytest.fixture(scope="module")
def trained() -> dict[str, tuple[NCLMap, dict]]:
    return {name: train_ncl(DATA, config, progress=False, threads=1) for name, config in VARIANTS.items()}


@pytest.mark.parametrize("kwargs, message", [
    (dict(K=0), "K .* positive"),
    (dict(head="transformer"), "head"),
    (dict(hidden=0), "hidden"),
    (dict(nonneg="softplus"), "nonneg"),
    (dict(batch_size=1), "at least 2"),
    (dict(epochs=0), "epochs"),
    (dict(lr=-1.0), "lr"),
    (dict(temperature=0.0), "temperature"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NCLConfig(**kwargs)


def test_rep_relu_is_relu_forward_and_gelu_gradient_backward():
    x = torch.linspace(-3, 3, 13, requires_grad=True)
    y = rep_relu(x)
    assert torch.equal(y, torch.relu(x.detach()))
    y.sum().backward()
    ref = x.detach().clone().requires_grad_(True)
    F.gelu(ref).sum().backward()
    assert torch.allclose(x.grad, ref.grad, atol=1e-6)
    assert float(x.grad[0]) != 0.0          # negative inputs still receive a gradient (ReLU's would be 0)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 8), st.just(16)),
              elements=st.floats(-100, 100, allow_nan=False, width=32)),
       st.sampled_from(["image", "text"]))
def test_encode_is_non_negative(trained, z, modality):
    for fmap, _ in trained.values():
        h = fmap.encode(z, modality)
        assert h.shape == (len(z), 24) and bool((h >= 0).all())


def test_ncl_has_no_decoder(trained):
    fmap, _ = trained["linear_relu_shared"]
    assert not fmap.has_decoder and fmap.n_features == 24 and fmap.input_dim == 16
    with pytest.raises(NotImplementedError, match="has no decoder"):
        fmap.decode(torch.zeros(1, 24), "image")


def test_features_are_aligned_across_modalities_and_retrieve(trained):
    """The contrastive loss aligns feature k across modalities, even with one head per modality."""
    base = retrieval_recall(DATA.image, DATA.text, ks=(1,))["i2t@1"]
    for fmap, history in trained.values():
        h_img, h_txt = fmap.activations(DATA)
        assert retrieval_recall(h_img, h_txt, ks=(1,))["i2t@1"] > max(0.1, 0.5 * base)
        assert history["loss"][-1] < history["loss"][0]


def test_training_uses_the_clip_loss_with_a_learnt_temperature(trained):
    fmap, history = trained["linear_relu_shared"]
    assert fmap.logit_scale != pytest.approx(1 / 0.07) and 1.0 <= fmap.logit_scale <= 100.0
    # the logged loss is open_clip's ClipLoss on the normalised features of a batch
    h_img, h_txt = fmap.activations((DATA.image[:64], DATA.text[:64]))
    loss = open_clip.ClipLoss()(F.normalize(h_img, dim=-1), F.normalize(h_txt, dim=-1), fmap.logit_scale)
    assert 0.0 < float(loss) < np.log(64) * 2
    assert set(history) == {"step", "loss", "l0", "logit_scale", "dead", "lr"}


def test_training_is_deterministic_and_seeded():
    config = NCLConfig(K=8, epochs=1, batch_size=64)
    a, ha = train_ncl(DATA, config, progress=False, threads=1)
    b, hb = train_ncl(DATA, config, progress=False, threads=1)
    c, _ = train_ncl(DATA, NCLConfig(K=8, epochs=1, batch_size=64, seed=2), progress=False, threads=1)
    assert all(torch.equal(a.state_tensors()[k], b.state_tensors()[k]) for k in a.state_tensors()) and ha == hb
    assert not torch.equal(a.heads.W, c.heads.W)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_save_load_gives_identical_encodings(trained, tmp_path, name):
    fmap, _ = trained[name]
    back = load_feature_map(fmap.save(tmp_path / f"{name}.safetensors"))
    assert isinstance(back, NCLMap) and back.hparams == fmap.hparams and back.name == fmap.name
    assert back.source == fmap.source and back.logit_scale == pytest.approx(fmap.logit_scale)
    for z, modality in ((DATA.image, "image"), (DATA.text, "text")):
        assert torch.equal(back.encode(z, modality), fmap.encode(z, modality))


def test_encode_refuses_other_dimensions(trained):
    fmap, _ = trained["mlp_rep_relu_separate"]
    with pytest.raises(ValueError, match="expected 16, got 12"):
        fmap.encode(torch.zeros(3, 12), "text")
