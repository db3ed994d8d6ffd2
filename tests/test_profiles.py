"""Profiles: names, errors, and the fields each profile sets."""

from __future__ import annotations

import pytest

from mmlib.profiles import UnknownProfileError, get_profile


def test_unknown_profile():
    with pytest.raises(UnknownProfileError, match="tiny"):
        get_profile("tiney")
    assert get_profile("tiny").null_world.null
    assert get_profile("paper").open_clip_model == "ViT-B-32"


# ------------------------------------------------------------------------------- bad inputs (issue 15)

import dataclasses  # noqa: E402

from mmlib.core.errors import ConfigError, InputError  # noqa: E402
from mmlib.data.world import WorldConfig  # noqa: E402


def test_unknown_profile_is_an_input_error():
    assert issubclass(UnknownProfileError, InputError)
    with pytest.raises(UnknownProfileError, match="unknown profile None"):
        get_profile(None)


@pytest.mark.parametrize("name, overrides, message", [
    ("tiny", dict(embed_batch_size=0), r"Profile\.embed_batch_size must be in \[1"),
    ("tiny", dict(embed_batch_size=2.0), "embed_batch_size must be an integer"),
    ("tiny", dict(map_seeds=()), "map_seeds must be one or more distinct"),
    ("tiny", dict(map_seeds=(0, 0)), "map_seeds must be one or more distinct"),
    ("tiny", dict(map_seeds=(0, -1)), "map_seeds"), ("tiny", dict(map_seeds=(0, "1")), "map_seeds"),
    ("tiny", dict(device="gpu"), "Profile.device must be 'auto' or a torch device"),
    ("tiny", dict(arch=None), r"Profile\.arch must be set for the 'tiny' profile"),
    ("tiny", dict(world=WorldConfig(image_size=64)), r"arch\.image_size \(32\) must equal"),
    ("tiny", dict(clip_train={"steps": 3}), "Profile.clip_train must be a TrainConfig or None"),
    ("tiny", dict(world=None), "Profile.world must be a WorldConfig"),
    ("tiny", dict(pairs="  "), "Profile.pairs must be None or a non-empty string"),
    ("paper", dict(open_clip_model="ViT-B-33"), r"Profile\.open_clip_model: unknown open_clip model 'ViT-B-33'"),
    ("paper", dict(open_clip_model=None), "must be set for the 'paper' profile"),
    ("tiny", dict(embed_batchsize=8), r"unknown Profile field\(s\) \['embed_batchsize'\].*'embed_batch_size'"),
])
def test_profile_rejects_bad_overrides(name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        get_profile(name, **overrides)


def test_valid_overrides_still_work():
    profile = get_profile("tiny", device="cpu", map_seeds=(0, 1), embed_batch_size=16)
    assert profile.device == "cpu" and dataclasses.replace(profile, device="auto").device == "auto"
    with pytest.raises(ConfigError, match="Profile.name must be one of 'tiny', 'paper'"):
        dataclasses.replace(profile, name="huge")


# ------------------------------------------------------------------------------------------------ run settings
def test_settings_override_fields_and_nested_configs(tmp_path):
    import json

    from mmlib.profiles import apply_settings

    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"pretrained": "random", "pairs": "x.csv", "embed_batch_size": 8,
                                "map_seeds": [0], "sae": {"K": 64, "epochs": 1}, "world": {"n_test": 40}}))
    paper = get_profile("paper")
    P = apply_settings(paper, path)
    assert (P.pretrained, P.pairs, P.embed_batch_size, P.map_seeds) == ("random", "x.csv", 8, (0,))
    assert (P.sae.K, P.sae.epochs, P.sae.lr) == (64, 1, paper.sae.lr) and P.world.n_test == 40
    assert apply_settings(paper, None) is paper and apply_settings(paper, {}) == paper


@pytest.mark.parametrize("settings, error, message", [
    ({"pretrainned": "random"}, ConfigError, "did you mean 'pretrained'"),
    ({"sae": {"KK": 3}}, ConfigError, r"unknown field\(s\) \['KK'\] in setting 'sae'"),
    ({"pairs": {"a": 1}}, ConfigError, "takes a value, not a mapping"),
    ({"sae": {"K": 0}}, ConfigError, "K"),
    ({"embed_batch_size": "big"}, ConfigError, "embed_batch_size"),
    (["pretrained"], ConfigError, "mapping of Profile fields"),
])
def test_bad_settings_are_refused_by_name(settings, error, message):
    from mmlib.profiles import apply_settings

    with pytest.raises(error, match=message):
        apply_settings(get_profile("paper"), settings)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"), (b"{not json", "not valid UTF-8 JSON"), (b"\xff\xfe", "not valid UTF-8 JSON"),
    (b"[1, 2]", "holds a JSON list"),
])
def test_bad_settings_files_are_refused(tmp_path, content, message):
    from mmlib.profiles import apply_settings

    path = tmp_path / "s.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        apply_settings(get_profile("paper"), path)


def test_embed_dim_of_each_profile():
    assert get_profile("tiny").embed_dim == get_profile("tiny").arch.embed_dim == 64
    assert get_profile("paper").embed_dim == 512  # ViT-B-32, read from open_clip's config
    assert get_profile("paper", open_clip_model="ViT-L-14").embed_dim == 768


def test_tiny_sae_is_sized_by_the_rule_not_the_papers_8d():
    tiny = get_profile("tiny")
    assert (tiny.sae.K, tiny.sae.l1_coef) == (2 * tiny.embed_dim, 0.05)  # chapter 02, check 9, re-derives it
    assert get_profile("paper").sae.K == 8 * get_profile("paper").embed_dim
