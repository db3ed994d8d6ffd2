"""PGD on pixels: the budget, the box, ascent and seeding; the encoder against the model's own
preprocessing; the noise control; bad inputs; and the ViT-B-32 forward path at random weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmlib.case_studies.adversarial.attacks import (
    PGDConfig,
    image_encoder,
    noise_attack,
    pgd_attack,
    to_pixels,
    zero_shot_attack,
    zero_shot_logits,
)


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
def test_zero_shot_attack_respects_budget_and_box_and_raises_the_loss(tiny_clip, eps, pixels, classes):
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


def test_pgd_is_deterministic_for_a_seed_and_batch_size_independent(tiny_clip, pixels, classes):
    enc, x, cls = image_encoder(tiny_clip), pixels(), classes(tiny_clip)
    labels = torch.tensor([0, 1, 2, 0])
    a = zero_shot_attack(enc, x, labels, cls, PGDConfig(eps=0.03, steps=2, seed=5))
    b = zero_shot_attack(enc, x, labels, cls, PGDConfig(eps=0.03, steps=2, seed=5), batch_size=3)
    c = zero_shot_attack(enc, x, labels, cls, PGDConfig(eps=0.03, steps=2, seed=6))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_zero_budget_returns_the_images(tiny_clip, pixels):
    x = pixels()
    adv = pgd_attack(image_encoder(tiny_clip), x, lambda z, i: z.sum(1), PGDConfig(eps=0.0))
    torch.testing.assert_close(adv, x)


def test_attack_bad_inputs(tiny_clip, pixels, classes):
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


def test_noise_attack_stays_in_budget(pixels):
    x = pixels()
    y = noise_attack(x, 0.05, seed=1)
    assert float((y - x).abs().max()) <= 0.05 + 1e-6 and float(y.min()) >= 0 and float(y.max()) <= 1
    torch.testing.assert_close(y, noise_attack(x, 0.05, seed=1))



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
