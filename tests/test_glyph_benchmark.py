"""The worlds of ``benchmarks/glyph_suppression.py`` change exactly what the benchmark says they change."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from mmlib.data.world import WorldConfig, generate_world
from mmlib.profiles import get_profile


def test_condition_worlds(load_benchmark):
    bench = load_benchmark("glyph_suppression")
    config = WorldConfig(n_train=200, n_val=50, n_test=50)
    always = bench.condition_world(config, 1.0, mood_only_captions=False)
    assert always.latents.depicted["mood"].all()
    reference = generate_world(config)
    # only mood's depiction changed: the other factors keep their planted depiction rates
    for name in ("weather", "gender"):
        assert abs(always.latents.depicted[name].mean() - reference.latents.depicted[name].mean()) < 0.1
    mood_only = bench.condition_world(config, 0.5, mood_only_captions=True)
    words = np.array(bench.MOOD_WORDS)[mood_only.latents.values["mood"]]
    assert all(c == f"a photo that looks {w}" for c, w in zip(mood_only.captions, words))
    assert 0.35 < mood_only.latents.depicted["mood"].mean() < 0.65


def test_style_readability_trains_on_the_styled_world(load_benchmark, artifact_root):
    bench = load_benchmark("glyph_suppression")
    profile = get_profile("tiny")
    profile = dataclasses.replace(
        profile, world=dataclasses.replace(profile.world, n_train=300, n_val=60, n_test=200),
        clip_train=dataclasses.replace(profile.clip_train, steps=2, warmup=1, batch_size=16))
    zero_shot, table = bench.style_readability(profile, "colour", "CLIP", n_boot=10)
    assert list(zero_shot) == list(bench.STYLE_ZERO_SHOT)
    assert all(0 <= a <= 1 for a in zero_shot.values())
    assert list(table["factor"]) == [f.name for f in profile.world.factors]
    # the model was trained (and stored) on the colour world, not on the profile's pattern world
    stored = [json.loads(p.read_text())["world"] for p in artifact_root.glob("tiny_clip/*/meta.json")]
    colour_world = generate_world(dataclasses.replace(profile.world, glyph_style="colour"))
    assert stored == [colour_world.fingerprint]


def test_styled_profile_replaces_only_width_and_seed(load_benchmark):
    bench = load_benchmark("glyph_suppression")
    profile = get_profile("tiny")
    assert bench.styled_profile(profile) == profile
    wide = bench.styled_profile(profile, embed_dim=128, seed=3)
    assert wide.arch == dataclasses.replace(profile.arch, embed_dim=128)
    assert wide.clip_train == dataclasses.replace(profile.clip_train, seed=3)
    assert wide.declip_train == dataclasses.replace(profile.declip_train, seed=3)
    assert wide.world == profile.world
