"""Pipeline: one call gives the world, its models and cached embeddings; a second call reuses them all; one call
gives every (world, model, map, seed) with its map, MDS in both forms and categories, on either profile.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmlib.analysis.mds import modality_dominance
from mmlib.data.world import WorldConfig
from mmlib.feature_maps.ncl import NCLConfig
from mmlib.feature_maps.sae import SAEConfig
from mmlib.models.training import TrainConfig
from mmlib.pipeline import MapGrid, map_grid, setup, trained_maps
from mmlib.profiles import get_profile


@pytest.fixture
def small_tiny(tiny_arch):
    cfg = TrainConfig(steps=3, batch_size=16, warmup=1)
    arch = dataclasses.replace(tiny_arch, image_size=32)
    return get_profile("tiny", world=WorldConfig(n_train=32, n_val=16, n_test=16, image_size=32), arch=arch,
                       clip_train=cfg, declip_train=dataclasses.replace(cfg, declip=True), embed_batch_size=16,
                       device="cpu", sae=SAEConfig(K=24, epochs=2, batch_size=16),
                       ncl=NCLConfig(K=24, epochs=2, batch_size=16), map_seeds=(0, 1))


@pytest.mark.slow
def test_setup_trains_once_and_embeds(artifact_root, small_tiny, monkeypatch):
    s = setup(small_tiny)
    assert set(s.bundles) == {"CLIP", "DeCLIP-like"} and s.models == ("CLIP", "DeCLIP-like")
    e = s.emb("DeCLIP-like", "test")
    assert e.image.shape == (16, small_tiny.arch.embed_dim) and e.image_tower is not None
    with pytest.raises(KeyError, match="available"):
        s.emb("CLIP", "val")
    null = setup(small_tiny, null=True, models=("CLIP",))
    assert null.world.config.null and null.world.fingerprint != s.world.fingerprint
    # second call: models and embeddings come from the artifact store, training is not called
    import mmlib.models.training as training
    monkeypatch.setattr(training, "train_tiny_clip", lambda *a, **k: pytest.fail("retrained"))
    again = setup(small_tiny, models=("CLIP",))
    assert torch.equal(again.emb("CLIP", "train").text, s.emb("CLIP", "train").text)
    with pytest.raises(ValueError, match="unknown tiny model"):
        setup(small_tiny, models=("SigLIP",))
    no_train = setup(small_tiny, models=("CLIP",), splits=("test",))
    with pytest.raises(ValueError, match="pass train="):
        trained_maps(no_train, small_tiny, names=("raw",))
    raw = trained_maps(no_train, small_tiny, names=("raw",), train=s.emb("CLIP", "train"))["raw"]
    assert raw.fmap.n_features == small_tiny.arch.embed_dim


@pytest.mark.slow
def test_map_grid_gives_every_cell_with_its_mds_and_categories(artifact_root, small_tiny):
    grid = map_grid(small_tiny, models=("CLIP",), maps=("raw", "SAE"))
    assert isinstance(grid, MapGrid) and len(grid) == 2 * 1 * 2 * 2
    assert grid.worlds == ("world", "null") and grid.seeds == (0, 1) and grid.models == ("CLIP",)
    r = grid[("world", "CLIP", "SAE", 1)]
    assert r.key == ("world", "CLIP", "SAE", 1) and r.fmap.n_features == 24
    # the MDS is the one of the map's train-split activations, in both forms
    a_i, a_t = r.activations("train")
    np.testing.assert_allclose(r.mds.scores, modality_dominance(a_i, a_t).scores, equal_nan=True)
    np.testing.assert_allclose(r.mds_aggregate.scores, modality_dominance(a_i, a_t, form="aggregate").scores,
                               equal_nan=True)
    assert r.categories.labels.shape == (24,) and r.categorise("fixed").rule.name != r.categories.rule.name
    assert r.activations("test")[0].shape == (16, 24)
    assert {x.seed for x in grid.select(world="null", map="SAE")} == {0, 1}
    table = grid.summary()
    assert len(table) == len(grid) and {"world", "model", "map", "seed", "mean", "share_extreme"} <= set(table)
    with pytest.raises(KeyError, match="no map result"):
        grid[("world", "CLIP", "NCL", 0)]
    with pytest.raises(TypeError, match="filters on"):
        grid.select(colour="red")
    with pytest.raises(ValueError, match="unknown world"):
        map_grid(small_tiny, worlds=("mars",))
    with pytest.raises(ValueError, match="unknown feature map"):
        map_grid(small_tiny, maps=("PCA",))
    # a second grid reuses the stored maps: the same bytes
    again = map_grid(small_tiny, worlds=("world",), models=("CLIP",), maps=("SAE",), seeds=(1,),
                     setups={"world": grid.setups["world"]})
    assert again[("world", "CLIP", "SAE", 1)].trained.key == r.trained.key


def test_paper_setup_embeds_the_real_corpus_as_train_split(artifact_root, tiny_clip, make_csv_corpus, monkeypatch):
    """The paper profile's code path, with a random tiny CLIP standing in for the real model (offline)."""
    import mmlib.pipeline as pipeline
    monkeypatch.setattr(pipeline, "load_open_clip", lambda name, pretrained, device="cpu": tiny_clip)
    profile = get_profile("paper", world=WorldConfig(n_train=0, n_val=0, n_test=8, image_size=32),
                          embed_batch_size=8, device="cpu", sae=SAEConfig(K=16, epochs=1, batch_size=8),
                          map_seeds=(0,))
    corpus = make_csv_corpus(n=12)
    s = setup(profile, pairs=corpus)
    name = profile.open_clip_model
    assert s.emb(name, "train").image.shape == (12, tiny_clip.embed_dim)
    assert s.emb(name, "train").image_tower is None  # the corpus is embedded without the towers
    assert s.emb(name, "test").image.shape[0] == 8
    raw = trained_maps(s, profile, model=name, names=("raw",))["raw"]
    assert raw.fmap.n_features == tiny_clip.embed_dim
    with pytest.raises(ValueError, match="set the notebook parameter pairs"):
        trained_maps(setup(profile), profile, model=name, names=("raw",))
    with pytest.raises(ValueError, match="pairs is for the paper profile"):
        setup(get_profile("tiny"), pairs=corpus)
    with pytest.raises(ValueError, match="tiny profile only"):
        map_grid(profile, worlds=("world", "null"))
    grid = map_grid(profile, worlds=("world",), maps=("SAE",), setups={"world": s})
    assert grid[("world", name, "SAE", 0)].mds.n_pairs == 12


@pytest.mark.slow
def test_map_grid_controls_on_the_tiny_profile(artifact_root, small_tiny):
    """random-init: untrained models; shuffled: the train captions permuted; swapped: the world's maps, scored with
    each pair's modalities exchanged at random.
    """
    from mmlib.analysis.controls import shuffle_pairs, swap_modalities
    from mmlib.pipeline import RANDOM_INIT_SEED, SHUFFLE_SEED

    grid = map_grid(small_tiny, worlds=("world", "random-init", "shuffled", "swapped"), models=("CLIP",),
                    maps=("SAE",), seeds=(0,))
    world, rand, shuf = (grid.setups[w] for w in ("world", "random-init", "shuffled"))
    assert grid.setups["swapped"] is world and not rand.trained and "CLIP" in world.trained
    assert rand.bundles["CLIP"].identity != world.bundles["CLIP"].identity
    assert rand.world.fingerprint == world.world.fingerprint  # the same data
    expected = shuffle_pairs(world.emb("CLIP", "train"), SHUFFLE_SEED)
    assert torch.equal(shuf.emb("CLIP", "train").text, expected.text)
    assert torch.equal(shuf.emb("CLIP", "test").text, world.emb("CLIP", "test").text)  # the test split keeps its pairs
    w, s, sw = (grid[(k, "CLIP", "SAE", 0)] for k in ("world", "shuffled", "swapped"))
    assert sw.trained.key == w.trained.key and s.trained.key != w.trained.key
    a_i, a_t = w.activations("train")
    np.testing.assert_allclose(sw.mds.scores, modality_dominance(*swap_modalities(a_i, a_t, seed=0)).scores,
                               equal_nan=True)
    assert set(grid.summary().world) == {"world", "random-init", "shuffled", "swapped"}
    again = setup(small_tiny, models=("CLIP",), control="random-init")  # deterministic: the same untrained model
    assert again.bundles["CLIP"].identity == rand.bundles["CLIP"].identity and RANDOM_INIT_SEED == 0
    with pytest.raises(ValueError, match="unknown control"):
        setup(small_tiny, control="swapped")
    with pytest.raises(ValueError, match="not on the null world"):
        setup(small_tiny, null=True, control="shuffled")


def test_paper_controls_load_random_weights(artifact_root, tiny_clip, make_csv_corpus, monkeypatch):
    """On the paper profile the random-init control asks open_clip for pretrained='random' explicitly."""
    import mmlib.pipeline as pipeline
    from mmlib.models.clip import RANDOM_WEIGHTS

    asked = []
    monkeypatch.setattr(pipeline, "load_open_clip",
                        lambda name, pretrained, device="cpu": asked.append(pretrained) or tiny_clip)
    profile = get_profile("paper", world=WorldConfig(n_train=0, n_val=0, n_test=8, image_size=32),
                          embed_batch_size=8, device="cpu", sae=SAEConfig(K=16, epochs=1, batch_size=8),
                          map_seeds=(0,))
    corpus = make_csv_corpus(n=12)
    grid = map_grid(profile, worlds=("world", "random-init", "shuffled", "swapped"), maps=("SAE",),
                    setups={"world": setup(profile, pairs=corpus),
                            "random-init": setup(profile, pairs=corpus, control="random-init"),
                            "shuffled": setup(profile, pairs=corpus, control="shuffled")})
    assert asked == [profile.pretrained, RANDOM_WEIGHTS, profile.pretrained]
    name = profile.open_clip_model
    assert {k[0] for k in grid} == {"world", "random-init", "shuffled", "swapped"}
    assert grid[("shuffled", name, "SAE", 0)].mds.n_pairs == 12


def test_baseline_control_and_setup_names_follow_the_profile():
    from mmlib.pipeline import baseline_control, setup_names

    tiny, paper = get_profile("tiny"), get_profile("paper")
    assert baseline_control(tiny) == "null" and baseline_control(paper) == "shuffled"
    assert setup_names(tiny)["world"] == "world" and setup_names(paper)["world"] == "corpus"
    assert setup_names(paper)["shuffled"] == "shuffled pairs"


@pytest.mark.slow
def test_quality_matched_profile_stops_the_world_models_at_their_null_twins_quality(artifact_root, small_tiny):
    from mmlib.pipeline import QUALITY_FACTORS, quality_matched_profile, training_quality

    profile = dataclasses.replace(small_tiny, clip_train=dataclasses.replace(small_tiny.clip_train, steps=20,
                                                                             stop_every=2))
    null = setup(profile, null=True)
    matched = quality_matched_profile(profile, null)
    for name, cfg in (("CLIP", matched.clip_train), ("DeCLIP-like", matched.declip_train)):
        history = null.trained[name].history
        assert cfg.stop_at == tuple((f, history[f"val_zs_{f}"][-1]) for f in QUALITY_FACTORS)
        assert dataclasses.replace(cfg, stop_at=()) == (profile.clip_train if name == "CLIP" else
                                                        profile.declip_train)
    world = setup(matched, models=("CLIP",))
    table = training_quality({"matched": world, "null": null})
    assert list(table.columns) == ["setup", "model", "steps", *QUALITY_FACTORS]
    assert list(table.model) == ["CLIP", "CLIP", "DeCLIP-like"]
    row = table.iloc[0]
    steps = world.trained["CLIP"].steps_run
    assert row.steps == steps <= 20 and (steps == 20 or steps % 2 == 0)
    if steps < 20:  # stopped: at least as good as the null twin on every factor
        assert all(row[f] >= t for f, t in matched.clip_train.stop_at)
    with pytest.raises(ValueError, match="is not the null world"):
        quality_matched_profile(profile, world)
    with pytest.raises(ValueError, match="tiny profile only"):
        quality_matched_profile(get_profile("paper"), null)
    with pytest.raises(ValueError, match="lacks the trained null twin"):
        quality_matched_profile(profile, setup(profile, null=True, models=("CLIP",)))
