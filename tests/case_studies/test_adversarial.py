"""Adversarial attack and defence: PGD's budget, box, ascent and seeding; the masked alignment loss; the defence's
training and storage; steering attacks; retrieval ranks against hand-computed values; bad inputs; and the
ViT-B-32 forward path at random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mmlib.case_studies.adversarial import (
    DefenceConfig,
    PGDConfig,
    alignment_loss,
    category_shift,
    cross_modal_effect,
    feature_activations,
    feature_scale,
    image_encoder,
    load_or_train_adapter,
    noise_attack,
    pgd_attack,
    steering_attack,
    to_pixels,
    train_alignment_adapter,
    zero_shot_attack,
    zero_shot_logits,
)
from mmlib.feature_maps.base import FeatureMap
from mmlib.feature_maps.raw import RawDims


class LinearReLUMap(FeatureMap):
    """A tiny feature map with weights (``h = ReLU(W z)``), to check that attacks never train it."""

    kind = "raw"

    def __init__(self, dim: int, k: int, seed: int = 0) -> None:
        super().__init__(dim, k)
        self.layer = nn.Linear(dim, k, bias=False)
        with torch.no_grad():
            self.layer.weight.copy_(torch.randn(k, dim, generator=torch.Generator().manual_seed(seed)))

    def _encode(self, z, modality):
        return torch.relu(self.layer(z))

    def state_tensors(self):
        return {"W": self.layer.weight.detach()}

    @classmethod
    def from_state(cls, tensors, config):  # pragma: no cover - not stored by these tests
        raise NotImplementedError


def pixels(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    x[0, 0, :2] = 0.0  # pixels on the box's faces: the attack must stay inside
    x[0, 1, :2] = 1.0
    return x


def classes(tiny_clip, k: int = 3) -> torch.Tensor:
    return torch.randn(k, tiny_clip.embed_dim, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------- PGD
@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=-0.01), "eps must lie in"), (dict(eps=1.5), "eps must lie in"), (dict(eps=float("nan")), "eps"),
    (dict(steps=0), "positive integer"), (dict(steps=2.5), "positive integer"), (dict(step_size=0.0), "step_size")])
def test_pgd_config_rejects_bad_budgets(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PGDConfig(**kwargs)


def test_pgd_config_default_step_is_madrys_rule():
    assert PGDConfig(eps=0.04, steps=10).alpha == pytest.approx(0.01)
    assert PGDConfig(eps=0.04, steps=10, step_size=0.002).alpha == 0.002


@pytest.mark.parametrize("eps", [1 / 255, 8 / 255, 0.3])
def test_zero_shot_attack_respects_budget_and_box_and_raises_the_loss(tiny_clip, eps):
    enc, x, cls = image_encoder(tiny_clip), pixels(), classes(tiny_clip)
    labels = torch.tensor([0, 1, 2, 0])
    adv = zero_shot_attack(enc, x, labels, cls, PGDConfig(eps=eps, steps=5, seed=3))
    assert adv.shape == x.shape
    assert float((adv - x).abs().max()) <= eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0

    def ce(p):
        with torch.no_grad():
            return F.cross_entropy(zero_shot_logits(enc(p), cls, enc.logit_scale), labels).item()
    assert ce(adv) > ce(x)


def test_pgd_is_deterministic_for_a_seed_and_batch_size_independent(tiny_clip):
    enc, x, cls = image_encoder(tiny_clip), pixels(), classes(tiny_clip)
    labels = torch.tensor([0, 1, 2, 0])
    a = zero_shot_attack(enc, x, labels, cls, PGDConfig(eps=0.03, steps=2, seed=5))
    b = zero_shot_attack(enc, x, labels, cls, PGDConfig(eps=0.03, steps=2, seed=5), batch_size=3)
    c = zero_shot_attack(enc, x, labels, cls, PGDConfig(eps=0.03, steps=2, seed=6))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_zero_budget_returns_the_images(tiny_clip):
    x = pixels()
    adv = pgd_attack(image_encoder(tiny_clip), x, lambda z, i: z.sum(1), PGDConfig(eps=0.0))
    torch.testing.assert_close(adv, x)


def test_attack_bad_inputs(tiny_clip):
    enc, x, cls = image_encoder(tiny_clip), pixels(), classes(tiny_clip)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        zero_shot_attack(enc, x * 255, torch.zeros(4, dtype=torch.long), cls, PGDConfig())
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        zero_shot_attack(enc, x, torch.zeros(3, dtype=torch.long), cls, PGDConfig())
    with pytest.raises(ValueError, match="labels must lie in"):
        zero_shot_attack(enc, x, torch.tensor([0, 1, 2, 3]), cls, PGDConfig())
    with pytest.raises(ValueError, match="do not fit"):
        zero_shot_attack(enc, x, torch.zeros(4, dtype=torch.long), torch.randn(3, 7), PGDConfig())
    with pytest.raises(ValueError, match="empty"):
        zero_shot_attack(enc, x[:0], torch.zeros(0, dtype=torch.long), cls, PGDConfig())
    with pytest.raises(ValueError, match="eps must lie in"):
        noise_attack(x, 2.0)


def test_encoder_matches_the_models_own_preprocessing(tiny_clip, pattern_image):
    images = [pattern_image(i, size=16) for i in range(3)]
    x = to_pixels(tiny_clip, images)
    assert x.shape == (3, 3, 16, 16) and float(x.min()) >= 0 and float(x.max()) <= 1
    with torch.no_grad():
        expected = tiny_clip.model.encode_image(torch.stack([tiny_clip.preprocess(im) for im in images]))
    torch.testing.assert_close(image_encoder(tiny_clip).embed(x), expected, atol=1e-5, rtol=1e-5)
    array = np.stack([np.asarray(im) for im in images])
    torch.testing.assert_close(to_pixels(tiny_clip, array), x)
    with pytest.raises(ValueError, match=r"\(n, H, W, 3\)"):
        to_pixels(tiny_clip, array[..., 0])


def test_noise_attack_stays_in_budget():
    x = pixels()
    y = noise_attack(x, 0.05, seed=1)
    assert float((y - x).abs().max()) <= 0.05 + 1e-6 and float(y.min()) >= 0 and float(y.max()) <= 1
    torch.testing.assert_close(y, noise_attack(x, 0.05, seed=1))


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
def test_alignment_training_updates_only_the_adapter_and_is_cached(tiny_clip, artifact_root, adapter, inner):
    fmap = LinearReLUMap(tiny_clip.embed_dim, 8)
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


def test_alignment_training_records_both_terms(tiny_clip):
    fmap, x, mask = RawDims(tiny_clip.embed_dim), pixels(6), np.ones(tiny_clip.embed_dim, bool)
    with_keep = train_alignment_adapter(tiny_clip, fmap, x, mask, DefenceConfig(steps=2, batch_size=3, attack_steps=1))
    h = with_keep.history
    np.testing.assert_allclose(h["loss"], np.add(h["align"], h["keep"]), rtol=1e-5)
    assert h["keep"][0] == pytest.approx(0.0, abs=1e-8)  # the first step starts from the original model
    pure = train_alignment_adapter(tiny_clip, fmap, x, mask,
                                   DefenceConfig(steps=2, batch_size=3, attack_steps=1, keep_weight=0.0))
    assert pure.history["keep"] == [0.0, 0.0] and pure.history["loss"] == pure.history["align"]


def test_alignment_training_is_deterministic(tiny_clip):
    fmap, x, mask = RawDims(tiny_clip.embed_dim), pixels(6), np.ones(tiny_clip.embed_dim, bool)
    config = DefenceConfig(steps=2, batch_size=3, attack_steps=1, lr=1e-2)
    a = train_alignment_adapter(tiny_clip, fmap, x, mask, config)
    b = train_alignment_adapter(tiny_clip, fmap, x, mask, config)
    assert a.history == b.history
    torch.testing.assert_close(a.encoder.embed(x), b.encoder.embed(x))


def test_alignment_training_bad_inputs(tiny_clip):
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


# ------------------------------------------------------------------------------------ category shift
def test_category_shift_finds_the_group_that_moved():
    rng = np.random.default_rng(0)
    h = torch.from_numpy(rng.random((50, 6))).float()
    adv = h.clone()
    adv[:, :2] += 1.0  # only features 0 and 1 move
    groups = {"moved": np.array([1, 1, 0, 0, 0, 0], bool), "still": np.array([0, 0, 1, 1, 0, 0], bool)}
    t = category_shift(h, adv, groups, n_random=50).set_index("group")
    assert t.loc["still", "change"] == 0.0
    expected = float((1.0 / h[:, :2].std(0)).mean())  # |dh| / s_k, averaged over the group
    assert t.loc["moved", "change"] == pytest.approx(expected, rel=1e-5)
    assert t.loc["moved", "ratio"] > 1 and t.loc["moved", "p_greater"] < 0.05
    assert t.loc["moved", "ci_low"] - 1e-5 <= t.loc["moved", "change"] <= t.loc["moved", "ci_high"] + 1e-5
    rel = category_shift(h, adv, groups, n_random=10, normalise="relative").set_index("group")
    assert rel.loc["moved", "change"] == pytest.approx(float((2.0 / h[:, :2].sum(1)).mean()), rel=1e-5)


def test_category_shift_bad_inputs():
    h = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="group 'ImgD' is empty"):
        category_shift(h, h, {"ImgD": np.zeros(4, bool)})
    with pytest.raises(ValueError, match="no feature groups"):
        category_shift(h, h, {})
    with pytest.raises(ValueError, match="same"):
        category_shift(h, torch.zeros(3, 5), {"a": np.ones(4, bool)})
    with pytest.raises(ValueError, match="unknown normalise"):
        category_shift(h, h, {"a": np.ones(4, bool)}, normalise="max")


def test_feature_scale_marks_constant_features():
    s = feature_scale(torch.tensor([[1.0, 2.0], [1.0, 4.0]]))
    assert torch.isinf(s[0]) and s[1] == pytest.approx(np.sqrt(2.0))


# ------------------------------------------------------------------------------------ cross-modal
def test_cross_modal_effect_unchanged_images_keep_their_ranks():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    target = np.array([1, 2, 3, 4, 5, 0])
    t = cross_modal_effect(img, img, txt, target)
    for col in ("i2t_own", "i2t_target", "t2i_own", "t2i_target"):
        assert (t[f"{col}_clean"] == t[f"{col}_adv"]).all()
    # moving image 0 onto caption 1 puts caption 1 first for it, and it first for caption 1
    adv = img.clone()
    adv[0] = txt[1] * 10
    t = cross_modal_effect(img, adv, txt, target)
    assert t.loc[0, "i2t_target_adv"] == 0 and t.loc[0, "t2i_target_adv"] == 0
    with pytest.raises(ValueError, match="one target per image"):
        cross_modal_effect(img, img, txt, target[:3])


def test_steering_attack_moves_the_selected_features(tiny_clip):
    fmap = RawDims(tiny_clip.embed_dim)
    enc, x = image_encoder(tiny_clip), pixels()
    mask = np.zeros(fmap.n_features, bool)
    mask[:4] = True
    with torch.no_grad():
        h0 = fmap.encode(enc(x), "image")
    target = h0 + 5.0
    adv = steering_attack(enc, fmap, x, target, mask, PGDConfig(eps=0.1, steps=5), penalty=1.0)
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        h = fmap.encode(enc(adv), "image")
    assert float(((h - target)[:, :4] ** 2).mean()) < float(((h0 - target)[:, :4] ** 2).mean())
    with pytest.raises(ValueError, match="target activations must be"):
        steering_attack(enc, fmap, x, target[:2], mask, PGDConfig())
    with pytest.raises(ValueError, match="empty"):
        steering_attack(enc, fmap, x, target, np.zeros(fmap.n_features, bool), PGDConfig())


# --------------------------------------------------------------------------------- ViT-B-32 code path
def test_vit_b_32_attack_forward_path_at_random_weights():
    """The paper profile's architecture: one PGD step on one 224-px preprocessed image (random weights)."""
    from PIL import Image

    from mmlib.models.clip import load_open_clip
    torch.manual_seed(0)
    bundle = load_open_clip("ViT-B-32", pretrained=None)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8), mode="RGB")
    x = to_pixels(bundle, [image])
    assert x.shape == (1, 3, 224, 224)
    enc = image_encoder(bundle)
    with torch.no_grad():
        expected = bundle.model.encode_image(bundle.preprocess(image)[None])
    torch.testing.assert_close(enc.embed(x), expected, atol=1e-4, rtol=1e-4)
    cls = torch.randn(2, bundle.embed_dim, generator=torch.Generator().manual_seed(0))
    adv = zero_shot_attack(enc, x, torch.tensor([1]), cls, PGDConfig(eps=2 / 255, steps=1))
    assert float((adv - x).abs().max()) <= 2 / 255 + 1e-6 and not torch.equal(adv, x)
