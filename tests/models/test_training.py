"""Tiny CLIP / DeCLIP-like training: it learns, it is cached, it reloads identically."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmlib.data.world import WorldConfig, generate_world
from mmlib.models.clip import (
    TinyClipArch,
)
from mmlib.models.training import (
    MASK_ID,
    TrainConfig,
    _augment,
    _mask_tokens,
    load_or_train,
    model_key,
    train_tiny_clip,
)

ARCH = TinyClipArch(embed_dim=32, image_size=32, patch_size=8, vision_width=32, vision_layers=1,
                    vision_head_width=16, text_width=32, text_layers=1, text_heads=2, context_length=32)
WORLD = WorldConfig(n_train=512, n_val=128, n_test=128, seed=0)


def test_augment_and_mask_shapes():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    y = _augment(x, 2, gen)
    assert y.shape == x.shape and not torch.equal(x, y)
    tokens = torch.tensor([[49406, 320, 1929, 49407, 0, 0]] * 50)
    masked, mask = _mask_tokens(tokens, 0.5, gen)
    assert mask[:, 0].sum() == 0 and mask[:, 3:].sum() == 0 and mask.any()
    assert (masked[mask] == MASK_ID).all() and torch.equal(masked[~mask], tokens[~mask])


@pytest.mark.slow
def test_training_learns_colour_and_is_cached(artifact_root):
    world = generate_world(WORLD)
    cfg = TrainConfig(steps=250, batch_size=64, lr=3e-3, warmup=10)
    first = load_or_train(world, ARCH, cfg, progress=False)
    # chance is 0.25 with sd 0.038 on 128 validation images: > 0.37 is more than 3 sd above chance
    assert first.history["val_zs_colour"][-1] > 0.37
    assert first.history["loss"][-1] < first.history["loss"][0]
    # cached: the second call reloads the same weights without training
    second = load_or_train(world, ARCH, cfg, progress=False)
    assert second.bundle.identity == first.bundle.identity
    assert second.path == first.path
    # another config -> another key
    assert model_key(world, ARCH, dataclasses.replace(cfg, seed=1)) != model_key(world, ARCH, cfg)


@pytest.mark.slow
def test_declip_like_training_runs_its_extra_terms(artifact_root):
    world = generate_world(WORLD)
    trained = load_or_train(world, ARCH, TrainConfig(steps=20, batch_size=32, declip=True, warmup=5),
                            progress=False)
    assert np.all(np.isfinite(trained.history["ssl_loss"])) and min(trained.history["ssl_loss"]) > 0
    assert min(trained.history["mlm_loss"]) > 0


def test_declip_like_step_takes_half_the_pairs_in_two_views(artifact_root):
    # the DeCLIP-like batch counts images: batch_size / 2 pairs, each in two augmented views
    with pytest.raises(ValueError, match="two views per pair"):
        TrainConfig(batch_size=31, declip=True)
    with pytest.raises(ValueError, match="two views per pair"):
        TrainConfig(batch_size=2, declip=True)
    TrainConfig(batch_size=31)  # plain CLIP: any batch of at least 2 pairs
    world = generate_world(dataclasses.replace(WORLD, n_train=24))
    with pytest.raises(ValueError, match="fewer than one batch"):
        load_or_train(world, ARCH, TrainConfig(steps=2, batch_size=32), progress=False)
    # 24 pairs suffice for 16 pairs x 2 views (one step, no reshuffle)
    model, history = train_tiny_clip(world, ARCH, TrainConfig(steps=1, batch_size=32, declip=True, warmup=1),
                                     progress=False, eval_every=10)
    assert len(history["clip_loss"]) == 1 and history["ssl_loss"][0] > 0


def test_training_rejects_mismatched_image_size(artifact_root):
    world = generate_world(dataclasses.replace(WORLD, image_size=64, n_train=64))
    with pytest.raises(ValueError, match="image_size"):
        load_or_train(world, ARCH, TrainConfig(steps=2, batch_size=8), progress=False)


# ------------------------------------------------------------------------------- bad inputs (issue 15)

from mmlib.core.errors import ConfigError, InputError  # noqa: E402


@pytest.mark.parametrize("changes, message", [
    (dict(steps=0), r"TrainConfig\.steps must be in \[1"), (dict(batch_size=1), "batch_size"),
    (dict(lr=0.0), r"TrainConfig\.lr must be in \(0"), (dict(lr=float("nan")), "lr must be a finite"),
    (dict(weight_decay=-0.1), "weight_decay"), (dict(warmup=-1), "warmup"), (dict(seed=-3), "seed"),
    (dict(image_ssl_weight=-1.0), "image_ssl_weight"), (dict(mask_prob=1.0), "mask_prob"),
    (dict(mask_prob=0.0), "mask_prob"), (dict(shift=-1), "shift"), (dict(ssl_temperature=0.0), "ssl_temperature"),
    (dict(threads=0), "threads"), (dict(threads=2.0), "threads must be an integer or None"),
    (dict(declip="yes"), "declip must be True or False"), (dict(steps="600"), "steps must be an integer"),
    (dict(stop_at=(("shape",),)), "pairs"), (dict(stop_at=(("shape", 1.5),)), r"accuracy in \(0, 1\]"),
    (dict(stop_at=(("shape", 0.0),)), "accuracy in"), (dict(stop_at=(("shape", float("nan")),)), "accuracy in"),
    (dict(stop_at=(("shape", True),)), "accuracy in"), (dict(stop_at=(("", 0.5),)), "factor name"),
    (dict(stop_at=(("shape", 0.5), ("shape", 0.6))), "twice"), (dict(stop_at="shape"), "must be a tuple"),
    (dict(stop_every=0), "stop_every"),
])
def test_train_config_rejects_bad_fields(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_train_inputs_are_checked_before_training(artifact_root):
    world = generate_world(dataclasses.replace(WORLD, n_train=32, n_val=8, n_test=8))
    cfg = TrainConfig(steps=1, batch_size=8, warmup=1)
    with pytest.raises(InputError, match=r"unknown factor\(s\) \['shapes'\]"):
        train_tiny_clip(world, ARCH, cfg, progress=False, eval_factors=("shapes",))
    with pytest.raises(InputError, match="eval_every must be a positive"):
        train_tiny_clip(world, ARCH, cfg, progress=False, eval_every=0)
    with pytest.raises(InputError, match="cfg must be a TrainConfig"):
        load_or_train(world, ARCH, {"steps": 1}, progress=False)
    with pytest.raises(InputError, match="world must be"):
        load_or_train("world", ARCH, cfg, progress=False)
    assert not artifact_root.exists() or not any(artifact_root.rglob("*.safetensors"))


def test_stop_at_stops_at_the_first_check_that_meets_the_target(artifact_root):
    world = generate_world(dataclasses.replace(WORLD, n_train=64, n_val=32, n_test=8))
    cfg = TrainConfig(steps=40, batch_size=16, warmup=2)
    _, full = train_tiny_clip(world, ARCH, cfg, progress=False, eval_every=100)
    assert len(full["step"]) == 40 and full["eval_step"] == [40]
    # any accuracy above 0 is met at the first check: colour has 4 values, so a model scores > 0 at once
    easy = dataclasses.replace(cfg, stop_at=(("colour", 1e-9),), stop_every=5)
    _, stopped = train_tiny_clip(world, ARCH, easy, progress=False, eval_every=100)
    assert len(stopped["step"]) == 5 and len(stopped["loss"]) == 5
    assert stopped["eval_step"] == [5] and stopped["val_zs_colour"][-1] > 0  # evaluated where it stopped
    assert stopped["loss"] == full["loss"][:5]  # the same run up to the stop
    never = dataclasses.replace(cfg, stop_at=(("colour", 1.0), ("shape", 1.0)), stop_every=5)
    _, through = train_tiny_clip(world, ARCH, never, progress=False, eval_every=100)
    assert len(through["step"]) == 40  # a target no check meets: all steps
    assert model_key(world, ARCH, easy) != model_key(world, ARCH, cfg)
    with pytest.raises(InputError, match="unknown factor"):
        train_tiny_clip(world, ARCH, dataclasses.replace(cfg, stop_at=(("shapes", 0.5),)), progress=False)
    with pytest.raises(InputError, match="never depicted"):
        train_tiny_clip(world, ARCH, dataclasses.replace(cfg, stop_at=(("owner", 0.5),)), progress=False)
