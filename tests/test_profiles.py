"""Profiles: names, errors, and the fields each profile sets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmlib.data.world import WorldConfig, generate_world
from mmlib.models.clip import (
    TinyClipArch,
    UnknownModelError,
    WeightsUnavailableError,
    build_tiny_clip,
    load_open_clip,
    load_tiny_clip,
    save_tiny_clip,
)
from mmlib.models.training import (
    MASK_ID,
    TrainConfig,
    _augment,
    _mask_tokens,
    images_to_tensor,
    load_or_train,
    model_key,
    train_tiny_clip,
)
from mmlib.profiles import UnknownProfileError, get_profile


def test_unknown_profile():
    with pytest.raises(UnknownProfileError, match="tiny"):
        get_profile("tiney")
    assert get_profile("tiny").null_world.null
    assert get_profile("paper").open_clip_model == "ViT-B-32"
