"""``benchmarks/null_twin_quality.py`` trains the world model once and the null twin at each length it names."""

from __future__ import annotations

import dataclasses

import pytest

from mmlib.profiles import get_profile


def small_profile():
    profile = get_profile("tiny")
    return dataclasses.replace(
        profile, world=dataclasses.replace(profile.world, n_train=200, n_val=40, n_test=20),
        clip_train=dataclasses.replace(profile.clip_train, steps=2, warmup=1, batch_size=16))


def test_quality_by_length_rows(load_benchmark):
    bench = load_benchmark("null_twin_quality")
    table = bench.quality_by_length(small_profile(), "CLIP", multiples=(1, 3))
    assert list(table["world"]) == ["world", "null", "null"]
    assert list(table["steps"]) == [2, 2, 6]  # the null twin at 1x and 3x the profile's steps
    for factor in bench.QUALITY_FACTORS:
        assert table[factor].between(0, 1).all()
    assert (table["seconds"] > 0).all()


@pytest.mark.parametrize("kwargs, match", [(dict(model="SigLIP"), "model"), (dict(multiples=()), "multiples"),
                                           (dict(multiples=(0,)), "multiples"), (dict(multiples=(1.5,)), "multiples")])
def test_quality_by_length_rejects_bad_input(load_benchmark, kwargs, match):
    bench = load_benchmark("null_twin_quality")
    with pytest.raises(ValueError, match=match):
        bench.quality_by_length(small_profile(), **kwargs)
