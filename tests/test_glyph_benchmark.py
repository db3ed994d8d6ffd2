"""The worlds of ``benchmarks/glyph_suppression.py`` change exactly what the benchmark says they change."""

from __future__ import annotations

import numpy as np

from mmlib.data.world import WorldConfig, generate_world


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
