"""Embeddings validate their tensors when constructed: 2-D, one row per pair, one joint dimension, finite."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmlib.core.errors import InputError, NonFiniteError
from mmlib.data.embeddings import Embeddings


def make(n: int = 5, d: int = 3, **changes) -> Embeddings:
    gen = torch.Generator().manual_seed(0)
    fields = dict(image=torch.randn(n, d, generator=gen), text=torch.randn(n, d, generator=gen), key="k",
                  meta={"model": "m"})
    return Embeddings(**{**fields, **changes})


def test_valid_embeddings_are_kept_as_given():
    emb = make(image_tower=torch.zeros(5, 7), text_tower=torch.zeros(5, 2))
    assert len(emb) == 5 and emb.dim == 3 and emb.image_tower.shape == (5, 7)
    assert torch.allclose(emb.normalized().image.norm(dim=1), torch.ones(5))
    from_numpy = make(image=np.ones((5, 3), dtype=np.float32))
    assert isinstance(from_numpy.image, torch.Tensor) and from_numpy.image.dtype == torch.float32
    assert len(make(n=0)) == 0


@pytest.mark.parametrize("field", ["image", "text", "image_tower", "text_tower"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_refused_naming_the_field_row_and_column(field, bad):
    value = torch.zeros(5, 3)
    value[2, 1] = bad
    with pytest.raises(NonFiniteError, match=rf"Embeddings\.{field} holds 1 non-finite .*row 2, column 1"):
        make(**{field: value})


@pytest.mark.parametrize("changes, message", [
    (dict(image=torch.zeros(5)), r"Embeddings\.image must be a real 2-D"),
    (dict(text=torch.zeros(5, 3, 1)), r"Embeddings\.text must be a real 2-D"),
    (dict(image=[[0.0] * 3] * 5), r"Embeddings\.image must be a 2-D \(n, d\) tensor, got list"),
    (dict(text=torch.zeros(4, 3)), r"Embeddings\.text has 4 rows but Embeddings\.image has 5"),
    (dict(text=torch.zeros(5, 4)), r"Embeddings\.text has dimension 4 but Embeddings\.image 3"),
    (dict(image_tower=torch.zeros(6, 2)), r"Embeddings\.image_tower has 6 rows"),
    (dict(image=torch.zeros(5, 3, dtype=torch.complex64)), r"Embeddings\.image must be a real"),
    (dict(key=None), r"Embeddings\.key must be a non-empty string"),
    (dict(key=""), r"Embeddings\.key must be a non-empty string"),
    (dict(meta=["model"]), r"Embeddings\.meta must be a dict"),
    (dict(path=3), r"Embeddings\.path must be a folder path"),
])
def test_malformed_embeddings_are_refused(changes, message):
    with pytest.raises(InputError, match=message):
        make(**changes)


def test_replace_is_validated_too():
    with pytest.raises(NonFiniteError, match=r"Embeddings\.text"):
        dataclasses.replace(make(), text=torch.full((5, 3), float("nan")))
