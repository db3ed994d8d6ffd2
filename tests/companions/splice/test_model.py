"""The SpLiCE model (mmlib.companions.splice.model): centring, decomposition and recomposition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmlib.companions.splice import top_concepts
from mmlib.companions.splice.model import build_splice
from mmlib.companions.splice.vocabulary import world_vocabulary


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


def test_decompose_top_concepts_and_recompose(planted_splice):
    splice, embeddings, labels = planted_splice()
    dec = splice.decompose(embeddings)
    assert dec.weights.shape == (100, len(splice.vocabulary)) and len(dec) == 100
    assert bool(dec.solver.converged.all()) and float(dec.cosine.min()) > 0.9
    assert torch.equal(dec.l0, (dec.weights > 0).sum(1))
    top = top_concepts(dec.weights[0], splice.vocabulary, k=2)
    assert list(top["concept"]) == ["circle", "black"] and list(top["factor"]) == ["shape", "background"]
    assert list(top.columns) == ["sample", "rank", "concept", "factor", "weight"]
