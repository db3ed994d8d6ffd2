"""SpLiCE: the ADMM solver against scikit-learn, vocabularies, centring, and the analyses on planted data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmlib.companions.splice import (
    AdmmConfig,
    ConceptVocabulary,
    Splice,
    VocabularyError,
    build_splice,
    check_vocabulary,
    class_concept_weights,
    factor_weight_share,
    intervene,
    intervention_report,
    lasso_objective,
    nonneg_lasso_admm,
    nonneg_lasso_sklearn,
    read_vocabulary,
    remove_concepts,
    sparsity_sweep,
    spurious_concepts,
    top_concepts,
    world_vocabulary,
)
from mmlib.data.world import Factor, default_factors

TIGHT = dict(eps_abs=1e-11, eps_rel=1e-9, max_iter=20000, kkt_tol=1e-10)


def planted_problem(n: int, k: int, d: int, active: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm dictionary ``(k, d)`` with a decaying spectrum and targets ``(n, d)``: sparse mixtures + noise."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.arange(1, d + 1, dtype=torch.float64) ** -0.5
    dictionary = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64) * spectrum, dim=1)
    pick = torch.randint(0, k, (n, active), generator=g)
    mix = (torch.rand(n, active, generator=g, dtype=torch.float64)[..., None] * dictionary[pick]).sum(1)
    noise = 0.3 * F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return dictionary, F.normalize(F.normalize(mix, dim=1) + noise, dim=1)


@pytest.mark.parametrize("k, d, penalty, working_set", [
    (80, 16, 0.05, None),   # K > d: Woodbury d x d solve over the whole vocabulary
    (80, 16, 0.05, 8),      # working sets grown by KKT checks
    (300, 32, 0.1, 16),
    (10, 16, 0.01, None),   # K <= d: the K x K system directly
])
def test_admm_matches_sklearn(k, d, penalty, working_set):
    dictionary, targets = planted_problem(6, k, d)
    reference = nonneg_lasso_sklearn(dictionary, targets, penalty)
    result = nonneg_lasso_admm(dictionary, targets, penalty, AdmmConfig(working_set=working_set, **TIGHT))
    assert result.weights.shape == (6, k) and result.weights.dtype == torch.float64
    assert bool(result.converged.all())
    assert float(result.weights.min()) >= 0.0
    assert torch.allclose(result.weights, reference, atol=1e-6)
    assert torch.equal(result.weights > 1e-7, reference > 1e-7)  # same support
    gap = lasso_objective(dictionary, targets, result.weights, penalty) - \
        lasso_objective(dictionary, targets, reference, penalty)
    assert float(gap.abs().max()) < 1e-10


def test_admm_defaults_float32_near_optimal():
    dictionary, targets = planted_problem(40, 500, 32, seed=1)
    reference = nonneg_lasso_sklearn(dictionary, targets, 0.1)
    for working_set in (None, 32):
        result = nonneg_lasso_admm(dictionary.float(), targets.float(), 0.1, AdmmConfig(working_set=working_set))
        assert result.weights.dtype == torch.float32 and bool(result.converged.all())
        f_admm = lasso_objective(dictionary, targets, result.weights, 0.1)
        f_ref = lasso_objective(dictionary, targets, reference, 0.1)
        assert float(((f_admm - f_ref) / f_ref).max()) < 1e-4
        assert float((result.weights.double() - reference).abs().max()) < 5e-3


def test_admm_large_penalty_gives_zero_and_validates_shapes():
    dictionary, targets = planted_problem(5, 30, 8)
    above = float((targets @ dictionary.T).max()) + 1e-3  # every correlation below lambda: w = 0 is optimal
    assert float(nonneg_lasso_admm(dictionary, targets, above).weights.abs().max()) == 0.0
    with pytest.raises(ValueError, match="dictionary"):
        nonneg_lasso_admm(dictionary, targets[:, :4], 0.1)
    with pytest.raises(ValueError, match="l1_penalty"):
        nonneg_lasso_admm(dictionary, targets, -1.0)
    with pytest.raises(ValueError, match="relaxation"):
        AdmmConfig(relaxation=2.0)
    with pytest.raises(ValueError, match="rho"):
        AdmmConfig(rho=0.0)


# ------------------------------------------------------------------------------------------------ vocabularies

def test_vocabulary_errors_name_the_culprits(tiny_clip):
    with pytest.raises(VocabularyError, match="empty"):
        ConceptVocabulary(())
    with pytest.raises(VocabularyError, match=r"2 duplicate concept\(s\): 'red', 'box'"):
        ConceptVocabulary(("red", "box", "red", "circle", "box"))
    with pytest.raises(VocabularyError, match="blank"):
        ConceptVocabulary(("red", "  "))
    long = "a striped circle on a purple background " * 3
    vocab = ConceptVocabulary(("red", long, "box"))
    with pytest.raises(VocabularyError, match=r"1 concept\(s\) exceed the model's context length of 16") as err:
        check_vocabulary(vocab, tiny_clip.tokenizer)
    assert repr(long) in str(err.value) and "'red'" not in str(err.value)
    with pytest.raises(VocabularyError, match="context length"):
        build_splice(tiny_clip, vocab, image_reference=torch.randn(4, 16))


def test_world_vocabulary_labels_and_duplicate_synonyms():
    vocab = world_vocabulary()
    assert len(set(vocab.concepts)) == len(vocab)
    assert vocab.factors[vocab.index("crimson")] == "colour"
    assert vocab.factors[vocab.index("on a black background")] == "background"
    assert vocab.factors[vocab.index("photo")] is None
    assert set(vocab.indices(factors=["shape"])) == {i for i, f in enumerate(vocab.factors) if f == "shape"}
    words_only = world_vocabulary(phrases=False, grammar_words=False)
    assert len(words_only) == sum(len(s) for f in default_factors() for s in f.synonyms)
    clash = Factor("hue", ("warm", "cold"), (1.0, 1.0), (1.0, 1.0), "object", "cross", (("red",), ("blue",)))
    with pytest.raises(VocabularyError, match="'red', 'blue'"):
        world_vocabulary((*default_factors(), clash))
    with pytest.raises(KeyError, match="Did you mean"):
        vocab.index("crimsen")


def test_read_vocabulary(tmp_path: Path):
    path = tmp_path / "vocab.txt"
    path.write_text("# a comment\ncat, 10\n\ndog, 20\nred car, 30\n", encoding="utf-8")
    vocab = read_vocabulary(path)
    assert vocab.concepts == ("cat", "dog", "red car") and vocab.factors == (None, None, None)
    assert read_vocabulary(path, size=2).concepts == ("dog", "red car")
    path.write_text("cat\ncat\n", encoding="utf-8")
    with pytest.raises(VocabularyError, match="'cat'"):
        read_vocabulary(path)
    with pytest.raises(FileNotFoundError):
        read_vocabulary(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------------------- centring

def test_centering_is_an_explicit_parameter(tiny_clip):
    vocab = world_vocabulary()
    images = torch.randn(50, 16) + 3.0  # a shared offset, as the modality gap gives
    centred = build_splice(tiny_clip, vocab, image_reference=images, center=True)
    raw = build_splice(tiny_clip, vocab, center=False)
    assert centred.center and not raw.center and raw.image_mean is None and raw.concept_mean is None
    for s in (centred, raw):
        assert torch.allclose(s.dictionary.norm(dim=1), torch.ones(len(vocab)), atol=1e-5)
    mean = F.normalize(images, dim=1).mean(0)
    assert torch.allclose(centred.image_mean, mean, atol=1e-6)
    x = images[:3]
    assert torch.allclose(centred.prepare(x), F.normalize(F.normalize(x, dim=1) - mean, dim=1), atol=1e-6)
    assert torch.allclose(raw.prepare(x), F.normalize(x, dim=1), atol=1e-6)
    # centring removes the concepts' shared direction
    assert float(centred.dictionary.mean(0).norm()) < float(raw.dictionary.mean(0).norm())
    assert torch.allclose(F.normalize(raw.dictionary - centred.concept_mean, dim=1), centred.dictionary, atol=1e-5)
    with pytest.raises(ValueError, match="image_reference"):
        build_splice(tiny_clip, vocab, center=True)
    given = build_splice(tiny_clip, vocab, image_mean=mean)
    assert torch.equal(given.image_mean, mean)


# ----------------------------------------------------------------------------------------------- analyses

def planted_splice(seed: int = 0) -> tuple[Splice, torch.Tensor, np.ndarray]:
    """A SpLiCE over the world vocabulary with near-orthogonal concepts, and images of 4 shape classes whose
    background is tied to the shape (the spurious world): class k = shape word k + background word k + noise."""
    vocab = world_vocabulary(phrases=False, grammar_words=False)
    g = torch.Generator().manual_seed(seed)
    dictionary = F.normalize(torch.randn(len(vocab), 256, generator=g), dim=1)
    splice = Splice(vocabulary=vocab, dictionary=dictionary, image_mean=None, concept_mean=None, l1_penalty=0.05)
    shapes = ["circle", "square", "triangle", "cross"]
    backgrounds = ["black", "white", "purple", "brown"]
    labels = np.repeat(np.arange(4), 25)
    embeddings = torch.stack([
        dictionary[vocab.index(shapes[c])] + 0.8 * dictionary[vocab.index(backgrounds[c])]
        + 0.02 * torch.randn(256, generator=g) for c in labels])
    return splice, embeddings, labels


def test_decompose_top_concepts_and_recompose():
    splice, embeddings, labels = planted_splice()
    dec = splice.decompose(embeddings)
    assert dec.weights.shape == (100, len(splice.vocabulary)) and len(dec) == 100
    assert bool(dec.solver.converged.all()) and float(dec.cosine.min()) > 0.9
    assert torch.equal(dec.l0, (dec.weights > 0).sum(1))
    top = top_concepts(dec.weights[0], splice.vocabulary, k=2)
    assert list(top["concept"]) == ["circle", "black"] and list(top["factor"]) == ["shape", "background"]
    assert list(top.columns) == ["sample", "rank", "concept", "factor", "weight"]


def test_spurious_backgrounds_show_up_in_shape_classes():
    splice, embeddings, labels = planted_splice()
    dec = splice.decompose(embeddings)
    names = list(default_factors()[0].values)
    table = spurious_concepts(dec.weights, labels, splice.vocabulary, names, exclude_factors=["shape"], top=1)
    assert list(table["concept"]) == ["black", "white", "purple", "brown"]
    assert list(table["class"]) == names
    share = factor_weight_share(dec.weights, labels, splice.vocabulary, names)
    assert np.allclose(share.sum(axis=1), 1.0)
    assert (share["background"] > 0.3).all() and (share["shape"] > 0.4).all()
    per_class = class_concept_weights(dec.weights, labels, splice.vocabulary, names)
    assert per_class.loc["triangle", "purple"] > per_class.loc["circle", "purple"]


def test_concept_intervention_removes_a_factor():
    splice, embeddings, labels = planted_splice()
    dec = splice.decompose(embeddings)
    edited = remove_concepts(dec.weights, splice.vocabulary, concepts=["circle"], factors=["background"])
    background = splice.vocabulary.indices(factors=["background"])
    assert float(edited[:, background].abs().sum()) == 0.0
    assert float(edited[:, splice.vocabulary.index("circle")].abs().sum()) == 0.0
    assert torch.equal(edited[:, splice.vocabulary.index("square")],
                       dec.weights[:, splice.vocabulary.index("square")])
    vocab = splice.vocabulary
    bg_classes = F.normalize(splice.dictionary[[vocab.index(w) for w in ["black", "white", "purple", "brown"]]], dim=1)
    shape_classes = splice.dictionary[[vocab.index(w) for w in ["circle", "square", "triangle", "cross"]]]
    report = intervention_report(splice, embeddings, {"background": (bg_classes, labels),
                                                      "shape": (shape_classes, labels)}, factors=["background"])
    by_task = report.set_index("task")
    assert by_task.loc["background", "recomposed"] == 1.0 and by_task.loc["background", "drop"] >= 0.5
    assert by_task.loc["shape", "intervened"] == 1.0  # the shape task is untouched
    assert intervene(splice, dec.weights, factors=["background"]).shape == embeddings.shape
    with pytest.raises(ValueError, match="nothing to remove"):
        remove_concepts(dec.weights, vocab)


def test_sparsity_sweep_trades_l0_for_fidelity():
    splice, embeddings, labels = planted_splice()
    shape_classes = splice.dictionary[[splice.vocabulary.index(w) for w in ["circle", "square", "triangle", "cross"]]]
    sweep = sparsity_sweep(splice, embeddings, shape_classes, labels, [0.01, 0.1, 0.5, 2.0], progress=False)
    assert list(sweep["l1_penalty"]) == [0.01, 0.1, 0.5, 2.0]
    assert sweep["l0_mean"].is_monotonic_decreasing and sweep["cosine"].is_monotonic_decreasing
    assert sweep["l0_mean"].iloc[-1] == 0.0 and sweep["accuracy"].iloc[0] == 1.0
    assert (sweep["ci_low"] <= sweep["accuracy"]).all() and (sweep["accuracy"] <= sweep["ci_high"]).all()
