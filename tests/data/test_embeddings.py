"""Embeddings validate their tensors when constructed: 2-D, one row per pair, one joint dimension, finite."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmlib.core.artifacts import Artifact, load_artifact, save_artifact
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


# ------------------------------------------------------------------------------ from a verified artifact

def _stored(tmp_path, kind: str = "embeddings", **tensors) -> Artifact:
    gen = torch.Generator().manual_seed(1)
    fields = {"image": torch.randn(6, 3, generator=gen), "text": torch.randn(6, 3, generator=gen), **tensors}
    save_artifact(kind, "k1", {k: v for k, v in fields.items() if v is not None}, {"n": 6}, root=tmp_path)
    return load_artifact(kind, "k1", tmp_path)


def test_from_verified_artifact_equals_the_checked_constructor(tmp_path):
    art = _stored(tmp_path, image_tower=torch.ones(6, 5), text_tower=torch.zeros(6, 2))
    fast = Embeddings.from_verified_artifact(art)
    t = art.tensors
    checked = Embeddings(image=t["image"], text=t["text"], key="k1", meta=art.meta, image_tower=t["image_tower"],
                         text_tower=t["text_tower"], path=art.path)
    for name in ("image", "text", "image_tower", "text_tower"):
        assert torch.equal(getattr(fast, name), getattr(checked, name))
    assert (fast.key, fast.meta, fast.path) == (checked.key, checked.meta, checked.path) == ("k1", art.meta, art.path)
    assert all(getattr(fast, name) is t[name] for name in ("image", "text", "image_tower", "text_tower"))  # no copy
    plain = Embeddings.from_verified_artifact(_stored(tmp_path / "plain"))
    assert plain.image_tower is None and plain.text_tower is None and len(plain) == 6 and plain.dim == 3


def test_from_verified_artifact_reads_no_value(tmp_path, monkeypatch):
    """The finiteness scan is what reads every byte; the trusted path skips it (and only it)."""
    import mmlib.data.embeddings as module

    class Scanned(Exception):
        pass

    def scan(*args, **kwargs):
        raise Scanned

    art = _stored(tmp_path)
    monkeypatch.setattr(module, "check_finite", scan)
    assert len(Embeddings.from_verified_artifact(art)) == 6
    with pytest.raises(Scanned):  # the public constructor still scans
        Embeddings(image=art.tensors["image"], text=art.tensors["text"], key="k", meta={})


def test_from_verified_artifact_still_checks_the_shapes_and_the_kind(tmp_path):
    with pytest.raises(InputError, match=r"Embeddings\.text has 4 rows but Embeddings\.image has 6"):
        Embeddings.from_verified_artifact(_stored(tmp_path / "a", text=torch.zeros(4, 3)))
    with pytest.raises(InputError, match=r"Embeddings\.text has dimension 2"):
        Embeddings.from_verified_artifact(_stored(tmp_path / "b", text=torch.zeros(6, 2)))
    with pytest.raises(InputError, match="holds no text tensor"):
        Embeddings.from_verified_artifact(_stored(tmp_path / "c", text=None))
    with pytest.raises(InputError, match="an artifact of kind 'features'"):
        Embeddings.from_verified_artifact(_stored(tmp_path / "d", kind="features"))
    with pytest.raises(InputError, match="got a dict"):
        Embeddings.from_verified_artifact({"image": torch.zeros(2, 2)})
