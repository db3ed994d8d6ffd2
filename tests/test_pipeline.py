"""Pipeline: one call gives the world, its models and cached embeddings; a second call reuses them all."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmlib.data.world import WorldConfig
from mmlib.models.training import TrainConfig
from mmlib.pipeline import feature_maps, tiny_setup
from mmlib.profiles import get_profile


@pytest.mark.slow
def test_tiny_setup_trains_once_and_embeds(artifact_root, tiny_arch, monkeypatch):
    cfg = TrainConfig(steps=3, batch_size=16, warmup=1)
    arch = dataclasses.replace(tiny_arch, image_size=32)
    profile = get_profile("tiny", world=WorldConfig(n_train=32, n_val=16, n_test=16, image_size=32), arch=arch, clip_train=cfg, declip_train=dataclasses.replace(cfg, declip=True),
                          embed_batch_size=16, device="cpu")
    setup = tiny_setup(profile)
    assert set(setup.bundles) == {"CLIP", "DeCLIP-like"}
    e = setup.emb("DeCLIP-like", "test")
    assert e.image.shape == (16, arch.embed_dim) and e.image_tower is not None
    with pytest.raises(KeyError, match="available"):
        setup.emb("CLIP", "val")
    null = tiny_setup(profile, null=True, models=("CLIP",))
    assert null.world.config.null and null.world.fingerprint != setup.world.fingerprint
    # second call: models and embeddings come from the artifact store, training is not called
    import mmlib.models.training as training
    monkeypatch.setattr(training, "train_tiny_clip", lambda *a, **k: pytest.fail("retrained"))
    again = tiny_setup(profile, models=("CLIP",))
    assert torch.equal(again.emb("CLIP", "train").text, setup.emb("CLIP", "train").text)
    with pytest.raises(ValueError, match="unknown tiny model"):
        tiny_setup(profile, models=("SigLIP",))
    no_train = tiny_setup(profile, models=("CLIP",), splits=("test",))
    with pytest.raises(ValueError, match="pass train="):
        feature_maps(no_train, profile, names=("raw",))
    raw = feature_maps(no_train, profile, names=("raw",), train=setup.emb("CLIP", "train"))["raw"]
    assert raw.fmap.n_features == arch.embed_dim


def test_paper_setup_embeds_the_real_corpus_as_train_split(artifact_root, tiny_clip, make_csv_corpus, monkeypatch):
    """The paper profile's code path, with a random tiny CLIP standing in for the real model (offline)."""
    import mmlib.pipeline as pipeline
    monkeypatch.setattr(pipeline, "load_open_clip", lambda name, pretrained, device="cpu": tiny_clip)
    profile = get_profile("paper", world=WorldConfig(n_train=0, n_val=0, n_test=8, image_size=32),
                          embed_batch_size=8, device="cpu")
    corpus = make_csv_corpus(n=12)
    setup = tiny_setup(profile, pairs=corpus)
    name = profile.open_clip_model
    assert setup.emb(name, "train").image.shape == (12, tiny_clip.embed_dim)
    assert setup.emb(name, "train").image_tower is None  # the corpus is embedded without the towers
    assert setup.emb(name, "test").image.shape[0] == 8
    raw = feature_maps(setup, profile, model=name, names=("raw",))["raw"]
    assert raw.fmap.n_features == tiny_clip.embed_dim
    with pytest.raises(ValueError, match="set the notebook parameter pairs"):
        feature_maps(tiny_setup(profile), profile, model=name, names=("raw",))
    with pytest.raises(ValueError, match="pairs is for the paper profile"):
        tiny_setup(get_profile("tiny"), pairs=corpus)
