"""Bad inputs to the companions (SpLiCE, CLIP-InterpreT): non-finite tensors and bad configs give named errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmlib.companions.clip_interpret.analyses import attribution_by_category, nearest_neighbors
from mmlib.companions.clip_interpret.decomposition import NotAViTError, decompose_images, vision_transformer
from mmlib.companions.clip_interpret.textspan import textspan
from mmlib.companions.splice import ConceptVocabulary, Splice
from mmlib.companions.splice.admm import AdmmConfig, nonneg_lasso_admm
from mmlib.companions.splice.model import center_embeddings, modality_mean
from mmlib.companions.splice.vocabulary import VocabularyError
from mmlib.core.errors import ConfigError, InputError, MmlibError, NonFiniteError

BAD = [float("nan"), float("inf"), float("-inf")]


def _with(x: torch.Tensor, index: tuple[int, ...], value: float) -> torch.Tensor:
    y = x.clone()
    y[index] = value
    return y


def _splice(**kwargs) -> Splice:
    vocab = ConceptVocabulary(("red", "blue", "circle"))
    dictionary = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    return Splice(**dict(dict(vocabulary=vocab, dictionary=dictionary, image_mean=None, concept_mean=None), **kwargs))


@pytest.mark.parametrize("bad", BAD)
def test_splice_rejects_non_finite_tensors(bad):
    d = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    splice = _splice()
    cases = [
        (lambda: nonneg_lasso_admm(_with(d, (2, 1), bad), z, 0.1), "dictionary.*row 2, column 1"),
        (lambda: nonneg_lasso_admm(d, _with(z, (4, 3), bad), 0.1), "targets.*row 4, column 3"),
        (lambda: splice.decompose(_with(z, (0, 2), bad)), "image_emb.*row 0, column 2"),
        (lambda: splice.recompose(_with(torch.zeros(2, 3), (1, 1), bad)), "weights.*row 1, column 1"),
        (lambda: _splice(dictionary=_with(d, (1, 0), bad)), "Splice.dictionary.*row 1, column 0"),
        (lambda: _splice(image_mean=_with(torch.zeros(4), (2,), bad)), "Splice.image_mean.*index 2"),
        (lambda: modality_mean(_with(z, (3, 3), bad)), "embeddings.*row 3, column 3"),
        (lambda: center_embeddings(z, _with(torch.zeros(4), (0,), bad)), "mean.*index 0"),
    ]
    for call, match in cases:
        with pytest.raises(NonFiniteError, match=match):
            call()


@pytest.mark.parametrize("bad", BAD)
def test_clip_interpret_rejects_non_finite_tensors(bad):
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    t = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    cases = [
        (lambda: textspan(_with(x, (5, 0), bad), t, k=2), "outputs.*row 5, column 0"),
        (lambda: textspan(x, _with(t, (1, 3), bad), k=2), "text_emb.*row 1, column 3"),
        (lambda: nearest_neighbors(_with(t, (0, 0), bad), x), "query.*row 0, column 0"),
        (lambda: nearest_neighbors(t, _with(x, (2, 2), bad)), "database.*row 2, column 2"),
        (lambda: attribution_by_category(_with(torch.zeros(2, 1, 1), (1, 0, 0), bad), ["ImgD", "TextD"]),
         "projections"),
    ]
    for call, match in cases:
        with pytest.raises(NonFiniteError, match=match):
            call()


def test_shape_mismatches_are_input_errors():
    x, t = torch.randn(6, 4), torch.randn(3, 5)
    with pytest.raises(InputError, match=r"query \(3, 5\) and database \(6, 4\)"):
        nearest_neighbors(t, x)
    with pytest.raises(InputError, match="weights must be"):
        _splice().recompose(torch.zeros(2, 4))
    with pytest.raises(InputError, match="image_emb must be"):
        _splice().decompose(torch.zeros(4))
    with pytest.raises(InputError, match="image_mean has shape"):
        _splice(image_mean=torch.zeros(5))


@pytest.mark.parametrize("kwargs", [dict(rho=0.0), dict(rho=float("nan")), dict(rho="1"), dict(relaxation=2.0),
                                    dict(relaxation=float("nan")), dict(max_iter=0), dict(max_iter=10.0),
                                    dict(eps_abs=-1.0), dict(eps_rel=float("inf")), dict(balance=1.0),
                                    dict(working_set=0), dict(kkt_tol=float("nan")), dict(chunk_size="8"),
                                    dict(adaptive_rho="yes")])
def test_admm_config_rejects_bad_fields(kwargs):
    with pytest.raises(ConfigError, match="AdmmConfig|must"):
        AdmmConfig(**kwargs)


@pytest.mark.parametrize("penalty", [float("nan"), float("inf"), -0.1, "0.1"])
def test_bad_l1_penalties(penalty):
    d, z = torch.eye(3, 4), torch.ones(2, 4)
    with pytest.raises(InputError, match="l1_penalty"):
        _splice(l1_penalty=penalty)
    if not isinstance(penalty, str):
        with pytest.raises(InputError, match="l1_penalty"):
            nonneg_lasso_admm(d, z, penalty)


def test_error_classes_are_reparented():
    assert issubclass(VocabularyError, InputError) and issubclass(VocabularyError, ValueError)
    assert issubclass(NotAViTError, MmlibError) and issubclass(NotAViTError, TypeError)
    with pytest.raises(VocabularyError):
        ConceptVocabulary(())
    with pytest.raises(NotAViTError):
        vision_transformer(torch.nn.Linear(2, 2))


def test_decompose_images_checks_the_pixels_before_running():
    with pytest.raises((NotAViTError, InputError)):
        decompose_images(torch.nn.Linear(2, 2), torch.zeros(1, 3, 4, 4))
