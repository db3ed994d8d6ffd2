"""The v1 defence: the masked alignment loss (hand-computed, blind to unselected features), the config's
checks, training that touches only the adapter and is cached, its two terms, determinism and bad inputs; and the
differentiable feature activations.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlib.case_studies.adversarial.attacks import feature_activations, image_encoder
from mmlib.case_studies.adversarial.defence import (
    DefenceConfig,
    alignment_loss,
    load_or_train_adapter,
    train_alignment_adapter,
)
from mmlib.feature_maps.raw import RawDims


# --------------------------------------------------------------------------------------- alignment loss
def test_alignment_loss_hand_computed_and_masked():
    h_clean = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    h_adv = torch.tensor([[2.0, 2.0, 0.0], [1.0, 5.0, 0.0]])
    mask = np.array([True, False, True])
    torch.testing.assert_close(alignment_loss(h_adv, h_clean, mask), torch.tensor([1.0 + 9.0, 1.0]))
    torch.testing.assert_close(alignment_loss(h_clean, h_clean, mask), torch.zeros(2))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 16), st.lists(st.booleans(), min_size=6, max_size=6).filter(any))
def test_alignment_loss_ignores_unselected_features(seed, selected):
    g = torch.Generator().manual_seed(seed)
    mask = np.array(selected)
    h_clean, h_adv = torch.rand(5, 6, generator=g), torch.rand(5, 6, generator=g)
    changed = h_adv.clone()
    changed[:, ~torch.from_numpy(mask)] += 10 * torch.rand(5, int((~mask).sum()), generator=g)
    torch.testing.assert_close(alignment_loss(changed, h_clean, mask), alignment_loss(h_adv, h_clean, mask))
    matched = h_adv.clone()
    matched[:, torch.from_numpy(mask)] = h_clean[:, torch.from_numpy(mask)]
    assert float(alignment_loss(matched, h_clean, mask).abs().max()) == 0.0


def test_alignment_loss_bad_inputs():
    h = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="empty"):
        alignment_loss(h, h, np.zeros(3, bool))
    with pytest.raises(ValueError, match="boolean mask of shape"):
        alignment_loss(h, h, np.ones(4, bool))
    with pytest.raises(ValueError, match="boolean mask"):
        alignment_loss(h, h, np.ones(3, int))
    with pytest.raises(ValueError, match="share one"):
        alignment_loss(h, torch.zeros(2, 4), np.ones(3, bool))



# ------------------------------------------------------------------------------------------- defence
@pytest.mark.parametrize("kwargs, match", [
    (dict(adapter="lora"), "unknown adapter 'lora'"), (dict(inner="kl"), "unknown inner objective"),
    (dict(eps=2.0), "eps must lie in"), (dict(attack_steps=0), "positive integer"), (dict(steps=0), "steps"),
    (dict(lr=0.0), "lr"), (dict(keep_weight=-1.0), "keep_weight")])
def test_defence_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DefenceConfig(**kwargs)


@pytest.mark.parametrize("adapter, inner", [("last_block", "masked"), ("linear", "embedding")])
def test_alignment_training_updates_only_the_adapter_and_is_cached(tiny_clip, artifact_root, adapter, inner, pixels,
                                                                   linear_relu_map):
    fmap = linear_relu_map(tiny_clip.embed_dim, 8)
    before = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    map_before = fmap.layer.weight.detach().clone()
    mask = np.array([True, True, False, False, True, False, False, False])
    config = DefenceConfig(adapter=adapter, inner=inner, steps=3, batch_size=4, attack_steps=1, eps=0.03, lr=1e-2)
    x = pixels(6)
    first = load_or_train_adapter(tiny_clip, fmap, x, mask, config, selection="test")
    assert len(first.history["loss"]) == 3 and np.isfinite(first.history["loss"]).all()
    assert first.n_selected == 3 and first.key is not None
    for k, v in tiny_clip.model.state_dict().items():  # the bundle's model is untouched
        torch.testing.assert_close(v, before[k])
    torch.testing.assert_close(fmap.layer.weight, map_before)
    assert fmap.layer.weight.grad is None
    assert not torch.allclose(first.encoder.embed(x), image_encoder(tiny_clip).embed(x))  # it did train
    second = load_or_train_adapter(tiny_clip, fmap, x, mask, config, selection="test")
    assert second.key == first.key and second.history == first.history
    torch.testing.assert_close(second.encoder.embed(x), first.encoder.embed(x))
    assert len(list((artifact_root / "adversarial_adapters").iterdir())) == 1


def test_alignment_training_records_both_terms(tiny_clip, pixels):
    fmap, x, mask = RawDims(tiny_clip.embed_dim), pixels(6), np.ones(tiny_clip.embed_dim, bool)
    with_keep = train_alignment_adapter(tiny_clip, fmap, x, mask, DefenceConfig(steps=2, batch_size=3, attack_steps=1))
    h = with_keep.history
    np.testing.assert_allclose(h["loss"], np.add(h["align"], h["keep"]), rtol=1e-5)
    assert h["keep"][0] == pytest.approx(0.0, abs=1e-8)  # the first step starts from the original model
    pure = train_alignment_adapter(tiny_clip, fmap, x, mask,
                                   DefenceConfig(steps=2, batch_size=3, attack_steps=1, keep_weight=0.0))
    assert pure.history["keep"] == [0.0, 0.0] and pure.history["loss"] == pure.history["align"]


def test_alignment_training_is_deterministic(tiny_clip, pixels):
    fmap, x, mask = RawDims(tiny_clip.embed_dim), pixels(6), np.ones(tiny_clip.embed_dim, bool)
    config = DefenceConfig(steps=2, batch_size=3, attack_steps=1, lr=1e-2)
    a = train_alignment_adapter(tiny_clip, fmap, x, mask, config)
    b = train_alignment_adapter(tiny_clip, fmap, x, mask, config)
    assert a.history == b.history
    torch.testing.assert_close(a.encoder.embed(x), b.encoder.embed(x))


def test_alignment_training_bad_inputs(tiny_clip, pixels):
    fmap = RawDims(tiny_clip.embed_dim)
    with pytest.raises(ValueError, match="empty"):
        train_alignment_adapter(tiny_clip, fmap, pixels(), np.zeros(tiny_clip.embed_dim, bool))
    with pytest.raises(ValueError, match="boolean mask of shape"):
        train_alignment_adapter(tiny_clip, fmap, pixels(), np.ones(3, bool))
    with pytest.raises(ValueError, match="expected a 4-D|\\(n, 3, H, W\\)"):
        train_alignment_adapter(tiny_clip, fmap, torch.rand(4, 16, 16), np.ones(tiny_clip.embed_dim, bool))


def test_feature_activations_checks_the_dimension():
    with pytest.raises(ValueError, match="d=4"):
        feature_activations(RawDims(4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="unknown modality"):
        feature_activations(RawDims(4), torch.zeros(2, 4), "audio")
