"""Tests of mmlib.data.smoke: the smoke corpus reads back through the real readers, byte-stable and atomic."""

from __future__ import annotations

import hashlib
import tarfile

import numpy as np
import pytest

from mmlib.companions.splice.vocabulary import read_vocabulary
from mmlib.core.errors import ConfigError, InputError
from mmlib.data.celeba import CelebAFaces
from mmlib.data.corpora import open_pairs
from mmlib.data.smoke import CELEBA_ATTRIBUTES, DISTRACTORS, SmokeConfig, write_smoke_data, write_wds_shards
from mmlib.data.world import WorldConfig, generate_world

CONFIG = SmokeConfig(n=10, image_size=32, shard_size=4)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return write_smoke_data(tmp_path_factory.mktemp("smoke") / "data", CONFIG)


def _digest(folder):
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_csv_and_shards_hold_the_same_pairs_as_the_world(smoke):
    world = generate_world(WorldConfig(n_train=10, n_val=0, n_test=0, image_size=32, seed=0))
    csv, wds = open_pairs(str(smoke.csv)), open_pairs(smoke.shards)
    assert len(csv) == len(wds) == smoke.n == 10
    assert smoke.shards.endswith("{00000..00002}.tar")
    for i in range(10):
        assert csv.caption(i) == wds.caption(i) == world.caption(i)
        assert csv.image(i).size == wds.image(i).size == (32, 32)
        # JPEG is lossy, but the picture is the world's
        diff = np.abs(np.asarray(csv.image(i), float) - world.images[i].astype(float)).mean()
        assert diff < 12, diff


def test_shards_are_img2dataset_style(smoke):
    with tarfile.open(smoke.folder / "wds" / "00000.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["000000000.jpg", "000000000.txt", "000000000.json"] and len(names) == 12


def test_celeba_folder_reads_with_the_world_gender_as_male(smoke):
    faces = CelebAFaces(smoke.celeba_root)
    world = generate_world(WorldConfig(n_train=10, n_val=0, n_test=0, image_size=32, seed=0))
    male = np.asarray(world.factor("gender").values)[world.latents.values["gender"]] == "male"
    assert faces.attribute_names == list(CELEBA_ATTRIBUTES)
    assert np.array_equal(faces.labels, male.astype(int))
    assert len(CelebAFaces(smoke.celeba_root, partition="test")) == len(range(2, 10, 3))


def test_vocabulary_names_the_world_factors_and_distractors(smoke):
    world = generate_world(WorldConfig(n_train=10, n_val=0, n_test=0, image_size=32, seed=0))
    concepts = read_vocabulary(smoke.vocabulary_file).concepts
    values = list(dict.fromkeys(v for f in world.factors for v in f.values))
    assert list(concepts) == values + list(DISTRACTORS)
    assert not set(DISTRACTORS) & set(values)


def test_same_config_same_bytes_and_no_partial_folder(tmp_path, smoke):
    again = write_smoke_data(tmp_path / "again", CONFIG)
    assert _digest(again.folder) == _digest(smoke.folder)
    assert [p.name for p in tmp_path.iterdir()] == ["again"]


def test_refuses_a_non_empty_folder_and_bad_config(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not an empty folder"):
        write_smoke_data(tmp_path / "x", CONFIG)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError):
        SmokeConfig(n=1)
    with pytest.raises(ConfigError):
        SmokeConfig(shard_size=0)
    with pytest.raises(InputError):
        write_wds_shards(open_pairs(str(write_smoke_data(tmp_path / "y", CONFIG).csv)), tmp_path / "z", shard_size=0)


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    import mmlib.data.smoke as smoke_module

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(smoke_module, "write_celeba", boom)
    with pytest.raises(KeyboardInterrupt):
        write_smoke_data(tmp_path / "data", CONFIG)
    assert list(tmp_path.iterdir()) == []
