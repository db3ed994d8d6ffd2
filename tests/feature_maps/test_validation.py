"""Bad inputs of the feature maps: configs, non-finite or misshapen embeddings, and damaged saved maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmlib.core.artifacts import CorruptArtifactError, write_tensors_atomic
from mmlib.core.errors import ConfigError, InputError, MmlibError, NonFiniteError
from mmlib.data.embeddings import Embeddings
from mmlib.feature_maps._training import check_loss, pair_chunks
from mmlib.feature_maps.base import (
    ArgumentTypeError,
    FeatureMapNotFoundError,
    SourceMismatchError,
    check_pairs,
)
from mmlib.feature_maps.diagnostics import effective_rank, l0, mse, top_m_purity
from mmlib.feature_maps.ncl import NCLConfig, train_ncl
from mmlib.feature_maps.raw import RawConfig, RawDims
from mmlib.feature_maps.sae import SAEConfig, train_sae
from mmlib.feature_maps.store import load_feature_map, load_or_train_feature_map

TINY_SAE = SAEConfig(K=8, epochs=1, batch_size=16)
TINY_NCL = NCLConfig(K=8, epochs=1, batch_size=16)


def pairs(n: int = 32, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)


def with_bad(z: torch.Tensor, row: int, col: int, value: float = float("nan")) -> torch.Tensor:
    z = z.clone()
    z[row, col] = value
    return z


@pytest.fixture(scope="module")
def sae():
    return train_sae(pairs(), TINY_SAE, progress=False, threads=1)[0]


# ------------------------------------------------------------------------------------------------ configs

@pytest.mark.parametrize("cls, kwargs, message", [
    (SAEConfig, dict(K=8.0), r"SAEConfig\.K must be an integer"),
    (SAEConfig, dict(K="512"), r"SAEConfig\.K must be an integer"),
    (SAEConfig, dict(lr=float("nan")), r"SAEConfig\.lr must be a finite number"),
    (SAEConfig, dict(lr=float("inf")), r"SAEConfig\.lr must be a finite number"),
    (SAEConfig, dict(lr=-1e-3), r"SAEConfig\.lr must be in \(0, inf\)"),
    (SAEConfig, dict(lr_decay=1.5), r"SAEConfig\.lr_decay must be in \[0, 1\]"),
    (SAEConfig, dict(epochs=2.5), r"SAEConfig\.epochs must be an integer"),
    (SAEConfig, dict(batch_size="64"), r"SAEConfig\.batch_size must be an integer"),
    (SAEConfig, dict(dead_window=0), r"SAEConfig\.dead_window must be in \[1, inf\)"),
    (SAEConfig, dict(log_every=0), r"SAEConfig\.log_every must be in \[1, inf\)"),
    (SAEConfig, dict(chunk_size=-1), r"SAEConfig\.chunk_size must be in \[1, inf\)"),
    (SAEConfig, dict(aux_coef=-1.0), r"SAEConfig\.aux_coef must be in \[0, inf\)"),
    (SAEConfig, dict(aux_k=2.0), r"SAEConfig\.aux_k must be an integer or None"),
    (SAEConfig, dict(resample_at=(0.0,)), r"SAEConfig\.resample_at must be in \(0, 1\)"),
    (SAEConfig, dict(resample_at=(float("nan"),)), r"SAEConfig\.resample_at must be a tuple of finite numbers"),
    (SAEConfig, dict(shared="yes"), r"SAEConfig\.shared must be True or False"),
    (SAEConfig, dict(seed=1.5), r"SAEConfig\.seed must be an integer"),
    (SAEConfig, dict(kind="topk", K=4, k=5), r"SAEConfig\.k .* \[1, K=4\], got 5"),
    (NCLConfig, dict(K=0), r"NCLConfig\.K .* positive"),
    (NCLConfig, dict(hidden=2.5), r"NCLConfig\.hidden must be an integer or None"),
    (NCLConfig, dict(batch_size=1), r"NCLConfig\.batch_size must be at least 2"),
    (NCLConfig, dict(lr=float("nan")), r"NCLConfig\.lr must be a finite number"),
    (NCLConfig, dict(lr_decay=-0.1), r"NCLConfig\.lr_decay must be in \[0, 1\]"),
    (NCLConfig, dict(weight_decay=-1.0), r"NCLConfig\.weight_decay must be in \[0, inf\)"),
    (NCLConfig, dict(temperature=float("inf")), r"NCLConfig\.temperature must be a finite number"),
    (NCLConfig, dict(temperature=-0.07), r"NCLConfig\.temperature must be in \(0, inf\)"),
    (NCLConfig, dict(epochs="10"), r"NCLConfig\.epochs must be an integer"),
    (NCLConfig, dict(dead_window=0), r"NCLConfig\.dead_window must be in \[1, inf\)"),
    (RawConfig, dict(activation="gelu"), r"RawConfig\.activation must be 'abs' or 'relu'"),
    (RawConfig, dict(activation=1), r"RawConfig\.activation must be a string"),
])
def test_configs_reject_wrong_types_non_finite_and_out_of_range_values(cls, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)


def test_configs_keep_valid_values():
    assert SAEConfig(resample_at=[0.25]).resample_at == (0.25,)  # a list (e.g. from JSON) is stored as a tuple
    assert SAEConfig(lr=1, l1_coef=0).lr == 1 and NCLConfig(hidden=None, seed=np.int64(3)).seed == 3


# ---------------------------------------------------------------------------------------- non-finite input

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_encode_and_decode_refuse_non_finite_input_naming_row_and_column(sae, bad):
    z = with_bad(torch.zeros(5, 4), 3, 2, bad)
    for fmap in (RawDims(4), sae):
        with pytest.raises(NonFiniteError, match=r"z \(image embeddings\) .*first at row 3\).*row 3, column 2"):
            fmap.encode(z, "image")
    with pytest.raises(NonFiniteError, match=r"h \(text activations\) .*row 1, column 7"):
        sae.decode(with_bad(torch.zeros(2, 8), 1, 7, bad), "text")


def test_activations_name_the_argument_and_the_row_of_the_whole_data(sae):
    image, text = pairs(n=30)
    for fmap in (RawDims(4), sae):
        with pytest.raises(NonFiniteError, match=r"data\[1\] \(text embeddings\) .*row 25, column 0"):
            fmap.activations((image, with_bad(text, 25, 0)), batch_size=8)
        emb = Embeddings(image=image, text=text, key="k", meta={})
        assert fmap.activations(emb, batch_size=7)[0].shape == (30, fmap.n_features)
        with pytest.raises(InputError, match=r"batch_size must be a positive integer"):
            fmap.activations(emb, batch_size=0)
        with pytest.raises(InputError, match=r"30 image but 29 text"):
            fmap.activations((image, text[:29]))
        with pytest.raises(ArgumentTypeError, match="Embeddings or an"):
            fmap.activations(image)


@pytest.mark.parametrize("train, config", [(train_sae, TINY_SAE), (train_ncl, TINY_NCL)])
def test_training_refuses_non_finite_embeddings(train, config):
    image, text = pairs()
    with pytest.raises(NonFiniteError, match=r"data\[0\] \(image embeddings\) .*row 20, column 1"):
        train((with_bad(image, 20, 1, float("inf")), text), config, progress=False)
    with pytest.raises(NonFiniteError, match=r"data\.text \(text embeddings\) .*row 31, column 3"):
        train(Pair(image, with_bad(text, 31, 3)), config, progress=False)
    with pytest.raises(NonFiniteError, match=r"text embeddings \(chunk 0\)"):
        train(lambda: iter([(image, with_bad(text, 0, 0))]), config, progress=False)
    with pytest.raises(ArgumentTypeError, match="config must be an"):
        train((image, text), RawConfig(), progress=False)


class Pair:
    """Embeddings-like data that skips the Embeddings constructor's own check."""

    def __init__(self, image: torch.Tensor, text: torch.Tensor) -> None:
        self.image, self.text = image, text


def test_load_or_train_refuses_non_finite_embeddings_before_training(artifact_root):
    image, text = pairs()
    for kind, config in (("raw", RawConfig()), ("sae", TINY_SAE)):
        with pytest.raises(NonFiniteError, match=r"embeddings\[0\] \(image embeddings\) .*row 4, column 0"):
            load_or_train_feature_map(kind, config, (with_bad(image, 4, 0), text), progress=False)
    assert not artifact_root.exists() or not any(artifact_root.rglob("*.safetensors"))
    with pytest.raises(InputError, match="unknown feature map kind 3"):
        load_or_train_feature_map(3, RawConfig(), (image, text))


def test_wrong_widths_name_both():
    with pytest.raises(InputError, match=r"d=3 but this feature map expects d=4 \(expected 4, got 3\)"):
        RawDims(4).encode(torch.zeros(2, 3), "image")
    with pytest.raises(InputError, match=r"data\[1\] \(text embeddings\) have dimension d=5 but the image embeddings "
                                         r"have d=4"):
        check_pairs((torch.zeros(2, 4), torch.zeros(2, 5)))
    with pytest.raises(InputError, match=r"image embeddings \(chunk 1\) have dimension d=5 but chunk 0 has d=4"):
        list(pair_chunks([(torch.zeros(2, 4), torch.zeros(2, 4)), (torch.zeros(2, 5), torch.zeros(2, 5))])())
    with pytest.raises(InputError, match="chunk 0 of the training data must be an"):
        list(pair_chunks(lambda: iter([torch.zeros(2, 4)]))())
    with pytest.raises(InputError, match="must be a numeric 2-D"):
        RawDims(4).encode([["a"] * 4], "image")
    with pytest.raises(InputError, match="unknown modality 3"):
        RawDims(4).encode(torch.zeros(2, 4), 3)
    with pytest.raises(InputError, match="input_dim must be a positive integer, got 4.0"):
        RawDims(4.0)
    with pytest.raises(InputError, match="chunk_size must be a positive integer"):
        pair_chunks(pairs(), chunk_size=0)


def test_diverged_training_is_an_error_not_a_nan_map():
    image, text = pairs()
    with pytest.raises(InputError, match=r"SAE training diverged at step 1: the loss is inf.*SAEConfig\.lr"):
        train_sae((image * 1e30, text * 1e30), SAEConfig(K=8, epochs=1, batch_size=16, normalize="none"),
                  progress=False)
    with pytest.raises(InputError, match=r"NCL training diverged at step 7: the loss is nan"):
        check_loss(float("nan"), 7, TINY_NCL, "NCL")


def test_diagnostics_refuse_non_finite_input():
    z = torch.zeros(3, 2)
    with pytest.raises(NonFiniteError, match=r"z_hat holds 1 non-finite .*row 2, column 1"):
        mse(z, with_bad(z, 2, 1))
    with pytest.raises(NonFiniteError, match="activations holds"):
        l0(with_bad(z, 0, 0))
    with pytest.raises(NonFiniteError, match="x holds"):
        effective_rank(with_bad(z, 0, 0, float("inf")))
    with pytest.raises(InputError, match="m .* must be a positive integer"):
        top_m_purity(torch.ones(3, 2), {"f": np.zeros(3)}, m=0)
    with pytest.raises(InputError, match="no samples"):
        mse(torch.zeros(0, 2), torch.zeros(0, 2))


def test_source_mismatch_is_an_input_error():
    assert issubclass(SourceMismatchError, InputError) and issubclass(SourceMismatchError, ValueError)


# ------------------------------------------------------------------------------------- the single-file format

def _data_start(path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_tensors_is_detected(sae, tmp_path):
    path = sae.save(tmp_path / "sae.safetensors")
    assert torch.equal(load_feature_map(path).state_tensors()["W_d"], sae.state_tensors()["W_d"])
    _flip(path, _data_start(path) + 100)
    with pytest.raises(CorruptArtifactError, match=rf"{path.name} does not match the checksum .*retrain"):
        load_feature_map(path)


@pytest.mark.parametrize("needle", [b'"l1_coef\\": 0.1', b'"input_dim\\": 4', b'"identity\\": null'])
def test_a_flipped_byte_in_the_header_config_is_detected(sae, tmp_path, needle):
    path = sae.save(tmp_path / "sae.safetensors")
    at = path.read_bytes().index(needle)
    data = bytearray(path.read_bytes())
    data[at + len(needle) - 1] = ord("9") if data[at + len(needle) - 1] != ord("9") else ord("8")  # still valid JSON
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="does not match the checksum"):
        load_feature_map(path)


def test_every_single_byte_flip_of_a_saved_map_is_refused(tmp_path):
    path = RawDims(3, RawConfig("relu")).save(tmp_path / "raw.safetensors")
    original = path.read_bytes()
    for offset in range(len(original)):
        path.write_bytes(original)
        _flip(path, offset)
        with pytest.raises(MmlibError, match="raw.safetensors"):
            load_feature_map(path)


def test_a_file_without_checksum_is_refused_with_how_to_resave_it(tmp_path):
    fmap = RawDims(3)
    old = tmp_path / "old.safetensors"
    write_tensors_atomic(old, fmap.state_tensors(), {"config": json.dumps(fmap.config(), sort_keys=True)})
    with pytest.raises(CorruptArtifactError, match=r"records no checksum.*allow_unchecked=True\)\.save"):
        load_feature_map(old)
    with pytest.warns(RuntimeWarning, match="unverified"):
        back = load_feature_map(old, allow_unchecked=True)
    back.save(old)
    assert isinstance(load_feature_map(old), RawDims)


def test_directories_missing_and_foreign_files(tmp_path):
    with pytest.raises(InputError, match=rf"{tmp_path.name} is a directory, not a feature map"):
        load_feature_map(tmp_path)
    with pytest.raises(InputError, match="is a directory: pass a file name"):
        RawDims(3).save(tmp_path)
    with pytest.raises(FeatureMapNotFoundError, match="no feature map at .*nothing.safetensors"):
        load_feature_map(tmp_path / "nothing.safetensors")
    assert issubclass(FeatureMapNotFoundError, FileNotFoundError) and issubclass(FeatureMapNotFoundError, MmlibError)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, this is not a tensor file at all")
    with pytest.raises(CorruptArtifactError, match="notes.safetensors is not a readable safetensors file"):
        load_feature_map(text)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CorruptArtifactError, match="empty.safetensors"):
        load_feature_map(empty)
    with pytest.raises(ArgumentTypeError, match="path must be a path"):
        load_feature_map(3)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot write the feature map"):
        RawDims(3).save(blocker / "raw.safetensors")


def test_a_map_with_non_finite_weights_is_not_saved(sae, tmp_path):
    broken = load_feature_map(sae.save(tmp_path / "sae.safetensors"))
    broken.model.W_d.data[0, 1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=r"tensor 'W_d' holds 1 non-finite"):
        broken.save(tmp_path / "broken.safetensors")
    assert not (tmp_path / "broken.safetensors").exists()
