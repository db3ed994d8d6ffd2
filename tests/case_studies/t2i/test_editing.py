"""Feature-space editing: the arithmetic on hand-made feature vectors, group masks, errors, and a sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlib.analysis.categories import categorise, group_masks
from mmlib.case_studies.t2i.editing import EditConfig, edit_embedding, edit_features, edit_sweep, scale_sweep

K = 6
MASK = np.array([True, True, False, False, True, False])


def test_hand_computed_interpolation():
    h_ref = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    h_p = torch.tensor([0.0, 4.0, 9.0, 9.0, 1.0, 9.0])
    out = edit_features(h_ref, h_p, MASK, alpha=0.5)
    torch.testing.assert_close(out, torch.tensor([[0.5, 3.0, 3.0, 4.0, 3.0, 6.0]]))
    out = edit_features(h_ref, h_p, MASK, alpha=0.5, scale=2.0)  # 0.5 * ref + 0.5 * 2 * prompt on the group
    torch.testing.assert_close(out, torch.tensor([[0.5, 5.0, 3.0, 4.0, 3.5, 6.0]]))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(0, 2 ** 16))
def test_alpha_zero_is_the_reference_and_alpha_one_replaces_the_group(n, seed):
    g = torch.Generator().manual_seed(seed)
    h_ref, h_p = torch.rand(n, K, generator=g), torch.rand(n, K, generator=g)
    torch.testing.assert_close(edit_features(h_ref, h_p, MASK, 0.0), h_ref)
    out = edit_features(h_ref, h_p, MASK, 1.0)
    m = torch.from_numpy(MASK)
    torch.testing.assert_close(out[:, m], h_p[:, m])     # the prompt's features on the group
    torch.testing.assert_close(out[:, ~m], h_ref[:, ~m])  # the reference's elsewhere
    mid = edit_features(h_ref, h_p, MASK, 0.3)
    torch.testing.assert_close(mid, 0.7 * h_ref + 0.3 * out)  # linear in alpha


def test_bad_inputs():
    h = torch.ones(2, K)
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"alpha .* \[0, 1\]"):
            edit_features(h, h, MASK, alpha)
    with pytest.raises(ValueError, match="boolean mask of shape"):
        edit_features(h, h, MASK[:4], 0.5)
    with pytest.raises(ValueError, match="boolean mask"):
        edit_features(h, h, MASK.astype(int), 0.5)
    with pytest.raises(ValueError, match="do not match"):
        edit_features(h, torch.ones(3, K), MASK, 0.5)
    with pytest.raises(ValueError, match="scale"):
        edit_features(h, h, MASK, 0.5, scale=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        EditConfig(alphas=(0.0, 2.0))


class LinearSAE:
    """A hand-made 'SAE': h = ReLU(W z) with W = [I; -I] (d = 3, K = 6), decode = W^T h / 1 (exact for any z)."""

    has_decoder, n_features, input_dim = True, K, 3

    def encode(self, z, modality):
        z = torch.as_tensor(z).float()
        return torch.cat([z.clamp_min(0), (-z).clamp_min(0)], 1)

    def decode(self, h, modality):
        return h[:, :3] - h[:, 3:]


class LossySAE(LinearSAE):
    """Drops the third coordinate: reconstruction error on it."""

    def decode(self, h, modality):
        out = super().decode(h, modality)
        out[:, 2] = 0
        return out


def test_edit_embedding_on_a_hand_made_map():
    z_ref = torch.tensor([[1.0, -2.0, 3.0]])
    z_p = torch.tensor([5.0, 5.0, -1.0])
    # group = positive parts of coords 0, 1 and the negative part of coord 1 -> coords 0 and 1 move to the prompt's
    mask = np.array([True, True, False, False, True, False])
    out = edit_embedding(LinearSAE(), z_ref, z_p, mask, alpha=1.0)
    torch.testing.assert_close(out, torch.tensor([[5.0, 5.0, 3.0]]))
    torch.testing.assert_close(edit_embedding(LinearSAE(), z_ref, z_p, mask, 0.0), z_ref)
    # keep_residual: alpha = 0 returns z_ref exactly even for a lossy map; without it the reconstruction
    torch.testing.assert_close(edit_embedding(LossySAE(), z_ref, z_p, mask, 0.0), z_ref)
    torch.testing.assert_close(edit_embedding(LossySAE(), z_ref, z_p, mask, 0.0, keep_residual=False),
                               torch.tensor([[1.0, -2.0, 0.0]]))
    torch.testing.assert_close(edit_embedding(LossySAE(), z_ref, z_p, mask, 1.0), torch.tensor([[5.0, 5.0, 3.0]]))


def test_edit_embedding_needs_a_decoder_and_a_known_modality():
    class NoDecoder(LinearSAE):
        has_decoder = False
    with pytest.raises(NotImplementedError, match="no decoder"):
        edit_embedding(NoDecoder(), torch.zeros(1, 3), torch.zeros(3), MASK, 0.5)
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        edit_embedding(LinearSAE(), torch.zeros(1, 3), torch.zeros(3), MASK, 0.5, prompt_modality="audio")


def test_group_masks():
    scores = np.array([0.95, 0.9, 0.5, 0.45, 0.1, np.nan, 0.55, 0.05])
    cats = categorise(scores, "fixed:0.8/0.2")
    masks = group_masks(cats, ["ImgD", "TextD", "random:ImgD"], seed=3)
    np.testing.assert_array_equal(masks["ImgD"], [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(masks["TextD"], [0, 0, 0, 0, 1, 0, 0, 1])
    assert masks["random:ImgD"].sum() == 2 and not masks["random:ImgD"][5]  # size-matched, alive only
    again = group_masks(cats, ["ImgD", "TextD", "random:ImgD"], 3)["random:ImgD"]
    np.testing.assert_array_equal(masks["random:ImgD"], again)
    with pytest.raises(ValueError, match=r"unknown feature group\(s\) \['VisD'\]; choose from"):
        group_masks(cats, ["VisD"])
    empty = categorise(np.array([0.5, 0.5, 0.5]), "fixed:0.8/0.2")
    with pytest.raises(ValueError, match="'ImgD' is empty"):
        group_masks(empty, ["ImgD"])
    assert list(group_masks(empty, ["ImgD", "CrossD"], skip_empty=True)) == ["CrossD"]


class RedProbe:
    """'colour' = 1 if the image's mean red > mean blue; 'spot' = 1 if the top-left pixel is bright."""

    def predict(self, images, factors=None):
        out = {"colour": (images[..., 0].mean((1, 2)) > images[..., 2].mean((1, 2))).astype(int),
               "spot": (images[:, 0, 0].mean(-1) > 127).astype(int)}
        return {f: out[f] for f in factors}


class PaintGenerator:
    """Paints red where z[0] > 0 else blue; the top-left pixel bright where z[2] > 0."""

    embed_dim = 3

    def sample(self, z, *, seeds, steps, guidance):
        z = torch.as_tensor(z)
        img = np.zeros((len(z), 4, 4, 3), np.uint8)
        img[..., 0] = np.where(z[:, 0].numpy() > 0, 200, 0)[:, None, None]
        img[..., 2] = np.where(z[:, 0].numpy() > 0, 0, 200)[:, None, None]
        img[:, 0, 0, :] = np.where(z[:, 2].numpy() > 0, 255, 0)[:, None]
        return img


def test_sweep_reads_control_and_preservation():
    z_ref = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 1.0]])  # blue, spot on
    z_p = torch.tensor([[3.0, 0.0, -1.0], [3.0, 0.0, -1.0]])   # a "red, no spot" prompt
    groups = {"first": np.array([True, False, False, True, False, False]),   # coord 0 only
              "third": np.array([False, False, True, False, False, True])}   # coord 2 only
    res = edit_sweep(PaintGenerator(), RedProbe(), LinearSAE(), z_ref, z_p, groups, "colour", np.array([1, 1]),
                     {"colour": np.array([0, 0]), "spot": np.array([1, 1])}, EditConfig(alphas=(0.0, 1.0)))
    t = res.table.set_index(["group", "alpha"])
    assert t.loc[("first", 0.0), "control"].sum() == 0 and t.loc[("first", 1.0), "control"].all()
    assert t.loc[("first", 1.0), "preserved"].eq(1).all()  # editing coord 0 keeps the spot
    assert t.loc[("third", 1.0), "control"].sum() == 0 and t.loc[("third", 1.0), "preserved"].eq(0).all()
    assert t.loc[("third", 1.0), "changed"].sum() == 0
    assert set(res.images) == {("reference", 0.0), ("first", 1.0), ("third", 1.0)}
    with pytest.raises(ValueError, match="no references"):
        edit_sweep(PaintGenerator(), RedProbe(), LinearSAE(), z_ref[:0], z_p[:0], groups, "colour", np.array([]),
                   {"colour": np.array([])})
    with pytest.raises(ValueError, match="edited factor 'colour'"):
        edit_sweep(PaintGenerator(), RedProbe(), LinearSAE(), z_ref, z_p, groups, "colour", np.array([1, 1]),
                   {"spot": np.array([1, 1])})


def test_scale_sweep_amplifies_the_prompt_at_alpha_one():
    z_ref = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 1.0]])  # blue
    z_p = torch.tensor([[0.5, 0.0, 0.0], [0.1, 0.0, 0.0]])     # weakly red
    groups = {"first": np.array([True, False, False, True, False, False])}  # coord 0

    class Recording(PaintGenerator):
        calls: list = []

        def sample(self, z, *, seeds, steps, guidance):
            self.calls.append((steps, guidance))
            return super().sample(z, seeds=seeds, steps=steps, guidance=guidance)

    gen = Recording()
    t = scale_sweep(gen, RedProbe(), LinearSAE(), z_ref, z_p, groups, "colour", np.array([1, 1]),
                    {"colour": np.array([0, 0]), "spot": np.array([1, 1])}, scales=(1.0, 4.0),
                    config=EditConfig(alphas=(0.0, 0.5), steps=3, guidance=1.5))
    assert gen.calls == [(3, 1.5), (3, 1.5)]  # one sweep per scale, with the config's sampling settings
    assert t.columns[-1] == "scale" and set(t.alpha) == {1.0} and len(t) == 4  # 2 refs x 2 scales, alpha 1 only
    assert t.control.all() and t.preserved.eq(1).all()  # coord 0 becomes the prompt's (> 0: red); the spot stays
    for sc in (1.0, 4.0):  # alpha = 1: coord 0 replaced by scale x the prompt's
        edited = z_ref.clone()
        edited[:, 0] = sc * z_p[:, 0]
        expected = 1 - torch.nn.functional.cosine_similarity(edited, z_ref, dim=1).numpy()
        np.testing.assert_allclose(t[t.scale == sc].sort_values("ref")["shift"], expected, atol=1e-6)
    with pytest.raises(ValueError, match="at least one scale"):
        scale_sweep(gen, RedProbe(), LinearSAE(), z_ref, z_p, groups, "colour", np.array([1, 1]),
                    {"colour": np.array([0, 0])}, scales=())
