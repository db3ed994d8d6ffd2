"""The evidence of claim 6.2b: the association's excess over the random baseline with its interval, and the planted
head control (a head that writes one property must be labelled with it; texts that cannot tell properties apart fail).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmlib.companions.clip_interpret.decomposition import decompose_images, world_images
from mmlib.companions.clip_interpret.evidence import association_excess, head_specialisation, planted_head_recovery
from mmlib.companions.clip_interpret.textspan import (
    TextPool,
    head_properties,
    random_assignment_baseline,
    textspan_heads,
    world_descriptions,
)
from mmlib.core.errors import InputError
from mmlib.data.world import WorldConfig, generate_world
from mmlib.models.clip import TinyClipArch, build_tiny_clip, tiny_bundle
from mmlib.models.prompts import encode_texts


def test_association_excess_is_observed_minus_baseline_with_both_spreads():
    null = np.random.default_rng(0).normal(0.35, 0.03, 1000)
    strong = association_excess(np.array([0.8, 0.8, 0.6, 1.0, 0.8, 0.6, 0.8, 1.0]), null)
    assert strong["mean"] == pytest.approx(0.8 - null.mean()) and strong["baseline"] == pytest.approx(null.mean())
    assert strong["ci_low"] > 0.3 and strong["ci_low"] <= strong["mean"] <= strong["ci_high"]
    # heads as consistent as random texts: the interval contains 0
    chance = association_excess(np.array([0.4, 0.2, 0.4, 0.4, 0.2, 0.6, 0.4, 0.2]), null)
    assert chance["ci_low"] < 0 < chance["ci_high"]
    # the baseline's spread alone widens the interval when every head is alike
    flat = association_excess(np.full(8, 0.4), null)
    assert flat["ci_high"] - flat["ci_low"] == pytest.approx(np.subtract(*np.quantile(null, [0.975, 0.025])),
                                                             abs=0.01)
    with pytest.raises(InputError, match="two heads"):
        association_excess(np.array([0.5]), null)
    with pytest.raises(InputError, match="random-assignment draws"):
        association_excess(np.full(4, 0.5), null[:1])


def _pool(n_props: int = 3, values: int = 3, synonyms: int = 2) -> TextPool:
    texts, props, vals = [], [], []
    for p in range(n_props):
        for v in range(values):
            for s in range(synonyms):
                texts.append(f"p{p} v{v} s{s}")
                props.append(f"prop{p}")
                vals.append(v)
    return TextPool(tuple(texts), tuple(props), tuple(vals))


def test_planted_heads_are_recovered_when_texts_tell_properties_apart():
    pool = _pool()
    g = torch.Generator().manual_seed(0)
    directions = F.normalize(torch.randn(len(pool), 32, generator=g), dim=1)  # near-orthogonal texts
    table = planted_head_recovery(directions, pool, k=4, n_images=300, noise=0.2, seed=0)
    assert list(table["planted"]) == ["prop0", "prop1", "prop2"]
    assert (table["recovered"] == table["planted"]).all() and (table["consistency"] >= 0.75).all()


def test_planted_heads_are_not_recovered_when_texts_do_not_tell_properties_apart():
    pool = _pool()
    g = torch.Generator().manual_seed(1)
    # every text of a value is the same direction whatever its property: the property cannot be read
    base = F.normalize(torch.randn(3, 32, generator=g), dim=1)
    texts = base[torch.tensor(pool.values)] + 1e-3 * torch.randn(len(pool), 32, generator=g)
    table = planted_head_recovery(texts, pool, k=4, n_images=300, noise=0.2, seed=0)
    assert table["recovered"].nunique() == 1  # every planted head gets one label: the labelling cannot tell them apart
    assert (table["recovered"] == table["planted"]).sum() <= 1
    with pytest.raises(InputError, match="one per text"):
        planted_head_recovery(texts[:5], pool)
    with pytest.raises(InputError, match="nothing to plant"):
        planted_head_recovery(texts, pool, k=50)


def test_head_specialisation_is_the_chapters_measurement_on_one_model():
    arch = TinyClipArch(embed_dim=16, vision_width=32, vision_layers=2, vision_head_width=16, text_width=32,
                        text_layers=1, text_heads=2, stem_channels=())
    bundle = tiny_bundle(build_tiny_clip(arch, seed=0), arch)
    world = generate_world(WorldConfig(n_train=0, n_val=0, n_test=60, seed=1))
    idx = world.indices("test")[:40]
    spec = head_specialisation(bundle, world, idx, k=3, n_draws=50, planted_noise=0.5, seed=0, arch=arch)
    # the same steps by hand, as chapter 10 takes them for its main model
    dec = decompose_images(bundle, world_images(bundle, world, idx, arch=arch))
    pool = world_descriptions(world.factors)
    text_emb = F.normalize(encode_texts(bundle, list(pool.texts)).float(), dim=-1)
    spans = textspan_heads(dec, text_emb, pool, k=3)
    heads = head_properties(spans, pool)
    null = random_assignment_baseline(spans, pool, n_draws=50, seed=0)["association"].to_numpy()
    assert len(spec.heads) == 2 * 2 and spec.heads.equals(heads)
    np.testing.assert_allclose(spec.null_association, null)
    assert spec.excess == pytest.approx(association_excess(heads["consistency"].to_numpy(), null, seed=0))
    planted = planted_head_recovery(text_emb, pool, k=3, noise=0.5, seed=0)
    assert spec.planted.equals(planted)
    assert spec.recovered == pytest.approx((planted["planted"] == planted["recovered"]).mean())
