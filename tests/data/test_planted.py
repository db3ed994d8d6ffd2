"""The planted dictionary generator, atom recovery, and the SAE's acceptance test on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlib.core.errors import ConfigError, InputError, NonFiniteError
from mmlib.data.planted import ATOM_CLASSES, PlantedConfig, atom_recovery, generate_planted
from mmlib.feature_maps.sae import SAEConfig, train_sae

CONFIG = PlantedConfig(d=24, n_shared=6, n_image=4, n_text=2, sparsity=2.0, noise=0.1, gap=1.5, seed=1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(d=0), "d must"),
    (dict(n_shared=0, n_image=0, n_text=0), "at least one atom"),
    (dict(n_image=-1), "atom counts"),
    (dict(sparsity=0.0), "sparsity"),
    (dict(n_shared=2, n_image=2, n_text=2, sparsity=5.0), r"sparsity .* \(0, 4\]"),
    (dict(noise=-0.1), "noise"),
    (dict(coef_range=(1.0, 0.5)), "coef_range"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlantedConfig(**kwargs)


def test_shapes_classes_and_codes():
    data = generate_planted(CONFIG, 500)
    assert data.image.shape == data.text.shape == (500, 24) and data.dictionary.shape == (12, 24)
    assert data.codes_image.shape == data.codes_text.shape == (500, 12) and len(data) == 500
    assert list(data.atom_class) == ["shared"] * 6 + ["image"] * 4 + ["text"] * 2
    assert set(ATOM_CLASSES) == set(data.atom_class)
    assert torch.allclose(data.dictionary.norm(dim=1), torch.ones(12))
    assert bool((data.codes_image >= 0).all()) and bool((data.codes_text >= 0).all())
    is_text, is_image = torch.from_numpy(data.atom_class == "text"), torch.from_numpy(data.atom_class == "image")
    assert not data.codes_image[:, is_text].any() and not data.codes_text[:, is_image].any()
    shared = torch.from_numpy(data.atom_class == "shared")
    assert torch.equal(data.codes_image[:, shared], data.codes_text[:, shared])   # no jitter: same coefficient
    active = data.codes_image[data.codes_image > 0]
    assert float(active.min()) >= 0.5 and float(active.max()) <= 1.5


def test_embeddings_follow_the_generative_model():
    data = generate_planted(CONFIG, 2000)
    residual = data.image - data.codes_image @ data.dictionary - data.gap_vectors[0]
    assert float(residual.norm(dim=1).mean()) == pytest.approx(0.1, rel=0.1)     # noise of expected norm 0.1
    assert float((data.gap_vectors[0] - data.gap_vectors[1]).norm()) == pytest.approx(1.5)
    # expected active atoms per embedding, averaged over the modalities, is `sparsity`
    l0 = ((data.codes_image > 0).sum(1).float().mean() + (data.codes_text > 0).sum(1).float().mean()) / 2
    assert float(l0) == pytest.approx(2.0, rel=0.1)


def test_jitter_keeps_the_support_and_changes_coefficients():
    data = generate_planted(PlantedConfig(d=8, n_shared=4, n_image=1, n_text=1, sparsity=1.5, jitter=0.3), 300)
    shared = torch.from_numpy(data.atom_class == "shared")
    ci, ct = data.codes_image[:, shared], data.codes_text[:, shared]
    assert torch.equal(ci > 0, ct > 0) and not torch.equal(ci, ct)


def test_generation_is_deterministic_and_keyed():
    a, b = generate_planted(CONFIG, 50), generate_planted(CONFIG, 50)
    assert torch.equal(a.image, b.image) and a.key == b.key
    c = generate_planted(PlantedConfig(**{**CONFIG.__dict__, "seed": 2}), 50)
    assert not torch.equal(a.image, c.image) and a.key != c.key
    emb = a.as_embeddings()
    assert emb.key == a.key and emb.meta["identity"] == f"planted:{a.key}" and torch.equal(emb.text, a.text)
    with pytest.raises(ValueError, match="n must"):
        generate_planted(CONFIG, 0)


def test_atom_recovery_hand_values():
    true = torch.eye(3)
    learned = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, -1.0, 0.0]])
    rec = atom_recovery(learned, true)
    # atom 0 is learned exactly (scale does not matter); atoms 1 and 2 only at 45 degrees; sign matters
    assert rec.tolist() == pytest.approx([1.0, 2 ** -0.5, 2 ** -0.5])
    with pytest.raises(ValueError, match="share d"):
        atom_recovery(torch.zeros(2, 4), true)


@pytest.mark.slow
def test_sae_recovers_the_planted_atoms_at_the_right_sparsity():
    """Acceptance: at least 90 % of the atoms (64 atoms in d = 64: 32 shared, 16 image-only, 16 text-only; 3 active
    per embedding; modality gap 1) have a decoder direction within cosine 0.9, at about the planted L0 (the true
    atoms plus the latent that encodes each modality's offset).
    """
    data = generate_planted(PlantedConfig(), 4000)
    fmap, _ = train_sae(data, SAEConfig(K=256, l1_coef=0.3), progress=False, threads=1)
    recovery = atom_recovery(fmap.dictionary, data.dictionary)
    assert float((recovery >= 0.9).float().mean()) >= 0.9, np.sort(recovery.numpy())[:10]
    for z, codes, modality in ((data.image, data.codes_image, "image"), (data.text, data.codes_text, "text")):
        true_l0 = float((codes > 0).sum(1).float().mean())
        l0 = float((fmap.encode(z, modality) > 0).sum(1).float().mean())
        assert true_l0 <= l0 <= true_l0 + 2.5, (modality, l0, true_l0)


# ------------------------------------------------------------------------------------------ bad inputs

@pytest.mark.parametrize("kwargs, message", [
    (dict(d="64"), r"PlantedConfig\.d must be an integer"),
    (dict(d=64.0), r"PlantedConfig\.d must be an integer"),
    (dict(n_shared=True), r"PlantedConfig\.n_shared must be an integer"),
    (dict(n_text=2.5), r"PlantedConfig\.n_text must be an integer"),
    (dict(sparsity=float("nan")), r"PlantedConfig\.sparsity must be a finite number"),
    (dict(noise=float("inf")), r"PlantedConfig\.noise must be a finite number"),
    (dict(gap=-1.0), r"PlantedConfig\.gap must be in \[0, inf\)"),
    (dict(jitter="0"), r"PlantedConfig\.jitter must be a number"),
    (dict(coef_range=(0.5,)), r"PlantedConfig\.coef_range must be a \(low, high\) pair"),
    (dict(coef_range=(0.5, 1.0, 2.0)), r"PlantedConfig\.coef_range must be a \(low, high\) pair"),
    (dict(coef_range=("a", 1.0)), r"PlantedConfig\.coef_range must be a number"),
    (dict(coef_range=(float("nan"), 1.0)), r"PlantedConfig\.coef_range must be a finite number"),
    (dict(coef_range=(-1.0, 1.0)), r"PlantedConfig\.coef_range must be in \[0, inf\)"),
    (dict(coef_range=0.5), r"PlantedConfig\.coef_range must be a tuple"),
    (dict(seed=-1), r"PlantedConfig\.seed must be in"),
])
def test_config_rejects_wrong_types_and_non_finite_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PlantedConfig(**kwargs)


@pytest.mark.parametrize("n", [0, -5, 2.5, "100", True, None])
def test_generate_rejects_bad_sizes(n):
    with pytest.raises(InputError, match=r"generate_planted: n must be a positive integer"):
        generate_planted(CONFIG, n)


def test_generate_and_recovery_reject_bad_arguments():
    with pytest.raises(InputError, match="config must be a PlantedConfig"):
        generate_planted({"d": 8}, 10)
    assert len(generate_planted(CONFIG, np.int64(3))) == 3
    atoms = torch.eye(3)
    bad = atoms.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=r"atom_recovery: decoder .*row 1, column 2"):
        atom_recovery(bad, atoms)
    with pytest.raises(NonFiniteError, match="atom_recovery: true"):
        atom_recovery(atoms, bad)
    with pytest.raises(InputError, match="must share d"):
        atom_recovery(torch.eye(4), atoms)
