"""The generated world: determinism, planted probabilities, ideal MDS, null world, spurious knob, errors."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlib.core.errors import ConfigError, InputError
from mmlib.data.protocol import PairDataset
from mmlib.data.world import (
    Factor,
    UnknownFactorError,
    WorldConfig,
    compose_caption,
    default_factors,
    factor_table,
    generate_world,
    ideal_mds,
    prompt,
    render_images,
    sample_latents,
)

SMALL = WorldConfig(n_train=600, n_val=100, n_test=300, seed=3)


@pytest.fixture(scope="module")
def world():
    return generate_world(SMALL)


def test_ideal_mds_hand_computed():
    assert ideal_mds(1, 1) == 0.5
    assert ideal_mds(1, 0) == 1.0
    assert ideal_mds(0, 1) == 0.0
    assert ideal_mds(1, 0.5) == pytest.approx(0.75)          # (0.5 + 0.25) / 1
    assert ideal_mds(0.5, 1) == pytest.approx(0.25)          # 0.25 / 1
    assert ideal_mds(0.9, 0.2) == pytest.approx((0.72 + 0.09) / 0.92)
    assert math.isnan(ideal_mds(0, 0))


@given(st.floats(0, 1), st.floats(0, 1))
def test_ideal_mds_symmetry_and_range(pd_, pm):
    if pd_ + pm - pd_ * pm == 0:
        return
    value = ideal_mds(pd_, pm)
    assert 0 <= value <= 1
    assert value + ideal_mds(pm, pd_) == pytest.approx(1.0)  # swapping modalities maps MDS to 1 - MDS


def test_deterministic(world):
    again = generate_world(SMALL)
    assert np.array_equal(world.images, again.images)
    assert world.captions == again.captions
    other = generate_world(dataclasses.replace(SMALL, seed=4))
    assert not np.array_equal(world.images, other.images)
    assert world.fingerprint != other.fingerprint


def test_shapes_and_splits(world):
    assert world.images.shape == (1000, 32, 32, 3) and world.images.dtype == np.uint8
    assert [len(world.indices(s)) for s in ("train", "val", "test")] == [600, 100, 300]
    assert isinstance(world.subset("test"), PairDataset)
    assert world.subset("test").image(0).size == (32, 32)
    with pytest.raises(ValueError, match="unknown split"):
        world.indices("dev")


def test_planted_probabilities_within_tolerance():
    w = generate_world(WorldConfig(n_train=6000, n_val=0, n_test=0, seed=1))
    for f in w.factors:
        v = w.latents.values[f.name]
        for flags, planned in ((w.latents.depicted[f.name], f.p_depict), (w.latents.mentioned[f.name], f.p_mention)):
            expected = np.asarray(planned)[v].mean()
            assert abs(flags.mean() - expected) < 4 * math.sqrt(0.25 / len(v)) + 1e-9, f.name
        counts = np.bincount(v, minlength=len(f.values))
        assert counts.min() > 0.8 * len(v) / len(f.values)  # balanced values


def test_captions_mention_exactly_the_mentioned_factors(world):
    # owner names and mood/weather words are unique to their factor: present iff mentioned
    for name in ("owner", "mood", "weather", "texture"):
        f = world.factor(name)
        for i in range(200):
            words = f.synonyms[world.latents.values[name][i]]
            present = any(w in world.captions[i].split() for w in words)
            assert present == bool(world.latents.mentioned[name][i]), (name, world.captions[i])
    assert not world.latents.depicted["owner"].any() and world.latents.mentioned["owner"].all()
    assert world.factor("owner").ideal_mds == 0.0


def test_glyph_drawn_only_when_depicted(world):
    strip = world.images[:, 26:, :, :].astype(int)
    mood_slot = strip[:, :, 0:6].max(axis=(1, 2, 3))
    shown = world.latents.depicted["mood"]
    assert (mood_slot[shown] > 230).all()
    assert (mood_slot[~shown] < 160).all()


def test_colour_glyphs_fill_the_slot_with_the_value_colour(world):
    coloured = generate_world(dataclasses.replace(SMALL, glyph_style="colour"))
    # the same draws: the captions, the latents and every pixel above the glyph strip are those of the pattern world
    assert coloured.captions == world.captions
    assert np.array_equal(coloured.images[:, :26], world.images[:, :26])
    palette = np.array([(0, 230, 230), (242, 26, 230), (255, 140, 0), (255, 255, 255)])
    # mood's slot (the first of five 6.4-px slots; the 5-px block starts at column 1, rows 26-30), mean over the block
    block = coloured.images[:, 26:31, 1:6].reshape(len(world.images), -1, 3).mean(1)
    shown, value = coloured.latents.depicted["mood"], coloured.latents.values["mood"]
    assert shown.any() and (~shown).any()
    assert np.abs(block[shown] - palette[value[shown]]).max() < 12  # pixel noise sd 0.03 x 255, averaged over 25 px
    assert np.abs(block[~shown] - 0.35 * 255).max() < 12  # the strip's grey where mood is not drawn
    # every value is drawn, and the four value colours are far apart (the blocks tell the values apart)
    assert set(value[shown]) == {0, 1, 2, 3}
    means = np.array([block[shown & (value == v)].mean(0) for v in range(4)])
    assert min(np.linalg.norm(means[a] - means[b]) for a in range(4) for b in range(a + 1, 4)) > 100


def test_null_world_shows_and_says_everything():
    w = generate_world(dataclasses.replace(SMALL, null=True))
    for f in w.factors:
        assert w.latents.depicted[f.name].all() and w.latents.mentioned[f.name].all()
    assert (factor_table(w.config).ideal_mds == 0.5).all()


def test_spurious_knob_ties_background_to_shape():
    tied = generate_world(dataclasses.replace(SMALL, spurious=1.0))
    assert (tied.latents.values["background"] == tied.latents.values["shape"]).all()
    free = generate_world(dataclasses.replace(SMALL, spurious=0.0))
    assert (free.latents.values["background"] == free.latents.values["shape"]).mean() < 0.4


def test_factor_table_lists_ladders():
    table = factor_table(WorldConfig())
    ladder = table[table.role == "image-ladder"].set_index("factor")
    assert list(ladder.p_mention) == [0.5, 0.2, 0.05]
    text = table[table.role == "text-ladder"].set_index("factor")
    assert list(text.p_depict) == [0.5, 0.2, 0.05]
    gender = table[(table.factor == "gender") & (table.value != "(all)")].set_index("value")
    assert gender.loc["female", "ideal_mds"] > 0.8 > 0.2 > gender.loc["male", "ideal_mds"]


def test_prompts_and_captions():
    shape = default_factors()[0]
    assert prompt(shape, 0) == "a photo of a circle"
    caption = compose_caption({"colour": "red", "shape": "square", "owner": "bob"})
    assert caption == "a photo of a red square owned by bob"
    assert compose_caption({"size": "huge"}, prefix="") == "a huge object"


def test_bad_configs():
    with pytest.raises(ValueError, match="probabilities"):
        Factor("x", ("a", "b"), (1.2, 1), (1, 1), "glyph", "cross", (("a",), ("b",)))
    with pytest.raises(ValueError, match="always depicted"):
        dataclasses.replace(default_factors()[0], p_depict=(0.5,) * 4)
    with pytest.raises(ValueError, match="spurious"):
        WorldConfig(spurious=2.0)
    with pytest.raises(ValueError, match="image_size"):
        WorldConfig(image_size=8)
    with pytest.raises(ValueError, match="glyph factors .* do not fit"):
        WorldConfig(image_size=16)  # five 5-px glyphs in 16 px: the strip would be cut off
    with pytest.raises(KeyError, match="known factors"):
        generate_world(WorldConfig(n_train=10, n_val=0, n_test=0)).factor("smell")


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_pixels_valid_for_any_seed(seed):
    w = generate_world(WorldConfig(n_train=8, n_val=0, n_test=0, seed=seed, image_size=64))
    assert w.images.shape == (8, 64, 64, 3)
    assert len(set(w.captions)) >= 1 and all(c.strip() for c in w.captions)


def test_fingerprint_tracks_config_and_code(monkeypatch):
    import mmlib.data.world as world_module

    base = SMALL.fingerprint()
    assert dataclasses.replace(SMALL, noise=0.0).fingerprint() != base
    monkeypatch.setattr(world_module, "code_version", lambda module: "edited-rendering-code")
    assert SMALL.fingerprint() != base  # a change to the generator's code invalidates cached models


# ------------------------------------------------------------------------------------------ bad inputs

@pytest.mark.parametrize("kwargs, message", [
    (dict(n_train="10"), r"WorldConfig\.n_train must be an integer"),
    (dict(n_val=2.5), r"WorldConfig\.n_val must be an integer"),
    (dict(n_test=True), r"WorldConfig\.n_test must be an integer"),
    (dict(n_train=-1), r"WorldConfig\.n_train must be in \[0, inf\)"),
    (dict(n_train=0, n_val=0, n_test=0), r"WorldConfig\.n_train, n_val and n_test .* must not all be 0"),
    (dict(image_size=32.0), r"WorldConfig\.image_size must be an integer"),
    (dict(image_size="64"), r"WorldConfig\.image_size must be an integer"),
    (dict(seed=-1), r"WorldConfig\.seed must be in \[0, inf\)"),
    (dict(seed=0.5), r"WorldConfig\.seed must be an integer"),
    (dict(null="yes"), r"WorldConfig\.null must be True or False"),
    (dict(spurious=float("nan")), r"WorldConfig\.spurious must be a finite number"),
    (dict(noise=-0.1), r"WorldConfig\.noise must be in \[0, inf\), got -0\.1"),
    (dict(noise=float("nan")), r"WorldConfig\.noise must be a finite number"),
    (dict(noise=float("inf")), r"WorldConfig\.noise must be a finite number"),
    (dict(noise="0.1"), r"WorldConfig\.noise must be a number"),
    (dict(factors=default_factors()[:5]), r"needs a 'position' factor"),
    (dict(factors=(*default_factors(), "smell")), r"WorldConfig\.factors\[11\] must be a Factor"),
    (dict(factors=default_factors() + default_factors()[:1]), "factor names must be unique"),
    (dict(glyph_style="color"), r"WorldConfig\.glyph_style must be one of 'pattern', 'colour', got 'color'"),
    (dict(glyph_style=None), r"WorldConfig\.glyph_style must be a string, got None"),
])
def test_world_config_rejects_bad_fields(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        WorldConfig(**kwargs)


def _replace_factor(name, **changes):
    return tuple(dataclasses.replace(f, **changes) if f.name == name else f for f in default_factors())


def _factor_with_values(name, n):
    f = next(f for f in default_factors() if f.name == name)
    words = tuple(f"v{i}" for i in range(n))
    return dataclasses.replace(f, values=words, p_depict=(1.0,) * n, p_mention=(1.0,) * n,
                               synonyms=tuple((w,) for w in words))


def test_world_config_rejects_factors_the_renderer_cannot_draw():
    factors = tuple(_factor_with_values("colour", 5) if f.name == "colour" else f for f in default_factors())
    with pytest.raises(ConfigError, match=r"draws at most 4 values of 'colour', got 5"):
        WorldConfig(factors=factors)
    with pytest.raises(ConfigError, match=r"'shape' factor is drawn as part of the object.*got 'glyph'"):
        WorldConfig(factors=_replace_factor("shape", kind="glyph"))
    factors = tuple(_factor_with_values("background", 2) if f.name == "background" else f for f in default_factors())
    assert WorldConfig(factors=factors).spurious == 0.0  # two backgrounds are fine without the tie
    with pytest.raises(ConfigError, match=r"WorldConfig\.spurious=0\.5 ties the background to the shape"):
        WorldConfig(factors=factors, spurious=0.5)
    caption = Factor("caption", ("a", "b"), (0.5, 0.5), (1, 1), "glyph", "text-only", (("a",), ("b",)))
    with pytest.raises(ConfigError, match="may not be called 'caption'"):
        WorldConfig(factors=(*default_factors()[:-1], caption), image_size=64)


@pytest.mark.parametrize("args, message", [
    (("x", ("a",), (1,), (1,), "glyph", "cross", (("a",),)), r"Factor\.values must hold at least 2"),
    (("x", ("a", "a"), (1, 1), (1, 1), "glyph", "cross", (("a",), ("b",))), "distinct"),
    (("x", ("a", "b"), (1,), (1, 1), "glyph", "cross", (("a",), ("b",))), r"Factor\.p_depict must hold one entry"),
    (("x", ("a", "b"), (float("nan"), 1), (1, 1), "glyph", "cross", (("a",), ("b",))), r"Factor\.p_depict"),
    (("x", ("a", "b"), (1, 1), (-0.1, 1), "glyph", "cross", (("a",), ("b",))), r"Factor\.p_mention .*probabilities"),
    (("x", ("a", "b"), ("1", 1), (1, 1), "glyph", "cross", (("a",), ("b",))), r"Factor\.p_depict must be a tuple"),
    (("x", ("a", "b"), (1, 1), (1, 1), "sticker", "cross", (("a",), ("b",))), r"Factor\.kind must be one of"),
    (("", ("a", "b"), (1, 1), (1, 1), "glyph", "cross", (("a",), ("b",))), r"Factor\.name must be a non-empty"),
    ((3, ("a", "b"), (1, 1), (1, 1), "glyph", "cross", (("a",), ("b",))), r"Factor\.name must be a string"),
    (("x", ("a", "b"), (1, 1), (1, 1), "glyph", "cross", (("a",), ())), r"Factor\.synonyms of value 'b'"),
    (("x", ("a", "b"), (1, 1), (1, 1), "glyph", "cross", ("a", "b")), r"Factor\.synonyms must be a tuple"),
])
def test_factor_rejects_bad_fields(args, message):
    with pytest.raises(ConfigError, match=message):
        Factor(*args)


def test_factor_lists_are_stored_as_tuples():
    f = Factor("x", ["a", "b"], [1, 1], [0.5, 0.5], "glyph", "cross", [["a"], ["b", "bee"]])
    assert f.values == ("a", "b") and f.synonyms == (("a",), ("b", "bee")) and hash(f)


def test_bad_arguments_of_the_generator():
    with pytest.raises(InputError, match="config must be a WorldConfig"):
        generate_world({"n_train": 10})
    with pytest.raises(InputError, match="n must be an integer >= 0"):
        sample_latents(SMALL, -1, np.random.default_rng(0))
    small = WorldConfig(n_train=4, n_val=0, n_test=0)
    latents = sample_latents(small, 4, np.random.default_rng(0))
    with pytest.raises(InputError, match="batch must be an integer >= 1"):
        render_images(small, latents, np.random.default_rng(0), batch=0)
    w = generate_world(small)
    with pytest.raises(InputError, match="unknown split 'dev'"):
        w.indices("dev")
    with pytest.raises(UnknownFactorError, match="known factors") as err:
        w.factor("smell")
    assert isinstance(err.value, KeyError) and str(err.value).startswith("unknown factor 'smell'")
