"""Fixtures of the SpLiCE tests: a planted decomposer whose images mix a shape and its tied background."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmlib.companions.splice import Splice, world_vocabulary


def planted_splice(seed: int = 0) -> tuple[Splice, torch.Tensor, np.ndarray]:
    """A SpLiCE over the world vocabulary with near-orthogonal concepts, and images of 4 shape classes whose
    background is tied to the shape (the spurious world): class k = shape word k + background word k + noise.
    """
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


@pytest.fixture(name="planted_splice")
def planted_splice_fixture() -> Callable[..., tuple[Splice, torch.Tensor, np.ndarray]]:
    """The :func:`planted_splice` function: ``planted_splice(seed=0)`` -> ``(splice, embeddings, labels)``."""
    return planted_splice
