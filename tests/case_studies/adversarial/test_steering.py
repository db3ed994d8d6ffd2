"""Cross-modal steering: retrieval ranks of unchanged and moved images, and the steering attack."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmlib.case_studies.adversarial.attacks import PGDConfig, image_encoder
from mmlib.case_studies.adversarial.steering import (
    best_caption,
    cross_modal_effect,
    measure_summary,
    random_targets,
    selectivity,
    steering_attack,
    steering_measures,
)
from mmlib.feature_maps.raw import RawDims


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


def test_steering_attack_moves_the_selected_features(tiny_clip, pixels):
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


# ------------------------------------------------------------------------------------------- measures
def test_random_targets_never_pick_the_own_pair():
    t = random_targets(50, seed=0)
    assert t.shape == (50,) and ((0 <= t) & (t < 50)).all() and (t != np.arange(50)).all()
    np.testing.assert_array_equal(t, random_targets(50, seed=0))
    assert not np.array_equal(t, random_targets(50, seed=1))
    rng = np.random.default_rng(0)  # the chapter's historical draw
    np.testing.assert_array_equal(t, (np.arange(50) + rng.integers(1, 50, size=50)) % 50)
    with pytest.raises(ValueError, match="at least 2"):
        random_targets(1)


def test_steering_measures_hand_computed():
    effect = pd.DataFrame({"i2t_own_clean": [0, 1], "i2t_own_adv": [2, 1], "i2t_target_clean": [3, 2],
                           "i2t_target_adv": [0, 3], "t2i_own_clean": [0, 0], "t2i_own_adv": [0, 0],
                           "t2i_target_clean": [1, 1], "t2i_target_adv": [1, 0]})
    m = steering_measures(effect)
    np.testing.assert_allclose(m["i2t_target_gain"], [1.5, -0.5])
    np.testing.assert_allclose(m["t2i_target_gain"], [0.0, 0.5])
    np.testing.assert_allclose(m["own_caption_drop"], [1.0, 0.0])


def test_selectivity_inside_minus_outside():
    h_clean = torch.zeros(2, 4)
    h_adv = torch.tensor([[2.0, 0.0, 1.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    scale = torch.tensor([1.0, 1.0, 0.5, float("inf")])
    mask, alive = np.array([1, 1, 0, 0], bool), np.array([1, 1, 1, 0], bool)
    np.testing.assert_allclose(selectivity(h_clean, h_adv, scale, mask, alive), [1.0 - 2.0, 0.0])
    assert np.isnan(selectivity(h_clean, h_adv, scale, alive, alive)).all()  # nothing alive outside
    with pytest.raises(ValueError, match="must be"):
        selectivity(h_clean, h_adv, scale, mask[:3], alive)


def test_measure_summary_means_intervals_and_all_nan():
    per_image = {("-", "noise"): {"gain": np.array([0.0, 0.1, 0.2]), "selectivity": np.full(3, np.nan)},
                 ("SAE", "TextD"): {"gain": np.array([1.0, np.nan, 3.0])}}
    t = measure_summary(per_image).set_index(["map", "selection", "measure"])
    assert t.loc[("-", "noise", "gain"), "mean"] == pytest.approx(0.1)
    assert t.loc[("-", "noise", "gain"), "ci_low"] <= 0.1 <= t.loc[("-", "noise", "gain"), "ci_high"]
    assert np.isnan(t.loc[("-", "noise", "selectivity")]).all()
    assert t.loc[("SAE", "TextD", "gain"), "mean"] == pytest.approx(2.0)


def test_best_caption_is_the_nearest_by_cosine():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    z = torch.tensor([[5.0, 0.1], [0.2, 3.0], [-1.0, -0.5]])
    np.testing.assert_array_equal(best_caption(z, text), [0, 1, 2])
