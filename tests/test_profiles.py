"""Profiles: names, errors, and the fields each profile sets."""

from __future__ import annotations

import pytest

from mmlib.profiles import UnknownProfileError, get_profile


def test_unknown_profile():
    with pytest.raises(UnknownProfileError, match="tiny"):
        get_profile("tiney")
    assert get_profile("tiny").null_world.null
    assert get_profile("paper").open_clip_model == "ViT-B-32"
