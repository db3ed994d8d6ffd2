"""TextSpan, head properties and their scores (mmlib.companions.clip_interpret.textspan)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmlib.companions.clip_interpret import decompose_images
from mmlib.companions.clip_interpret.textspan import (
    TextPool,
    TextSpanResult,
    head_properties,
    head_property_scores,
    property_heads,
    random_assignment_baseline,
    textspan,
    textspan_heads,
    upper_tail_p,
    world_descriptions,
)


def test_textspan_picks_the_planted_text_first():
    g = torch.Generator().manual_seed(0)
    texts = F.normalize(torch.randn(12, 16, generator=g), dim=1)
    coef = torch.randn(300, generator=g)
    outputs = 5.0 + coef[:, None] * texts[7] + 0.01 * torch.randn(300, 16, generator=g)  # a head writing text 7
    picked, explained = textspan(outputs, texts, k=3)
    assert picked[0] == 7 and explained[0] > 0.99 and explained == sorted(explained)
    # two planted directions: both come first, in the order of their variance
    outputs = 3.0 * coef[:, None] * texts[2] + torch.randn(300, generator=g)[:, None] * texts[9]
    picked, explained = textspan(outputs, texts, k=4, rank=2)
    assert picked[:2] == [2, 9] and explained[1] > 0.999 and len(picked) <= 4


def test_textspan_heads_and_property_metrics(tiny_clip, tiny_arch, random_images):
    dec = decompose_images(tiny_clip, random_images(20, tiny_arch.image_size))
    pool = world_descriptions()
    assert len(pool) == len(set(pool.texts)) and "a photo of a crimson object" in pool.texts
    text_emb = torch.randn(len(pool), tiny_arch.embed_dim, generator=torch.Generator().manual_seed(0))
    results = textspan_heads(dec, text_emb, pool, k=3)
    assert [(r.layer, r.head) for r in results] == [(0, 0), (0, 1)]
    assert all(len(r.texts) == 3 and r.texts[0] == pool.texts[r.indices[0]] for r in results)
    table = head_properties(results, pool)
    assert list(table.columns) == ["layer", "head", "property", "consistency", "explained", "texts"]
    with pytest.raises(ValueError, match="text embeddings"):
        textspan_heads(dec, text_emb[:5], pool)


def test_property_consistency_and_entanglement_hand_computed():
    pool = TextPool(texts=tuple("abcdefgh"), values=(0,) * 8,
                    properties=("colour", "colour", "colour", "shape", "shape", "size", None, "shape"))
    results = [TextSpanResult(0, 0, (0, 1, 2), ("a", "b", "c"), (0.5, 0.6, 0.7)),   # colour 3/3
               TextSpanResult(0, 1, (3, 4, 0), ("d", "e", "a"), (0.5, 0.6, 0.7)),   # shape 2/3
               TextSpanResult(1, 0, (5, 6, 7), ("f", "g", "h"), (0.5, 0.6, 0.8)),   # tie size/shape -> size 1/3
               TextSpanResult(1, 1, (1, 3, 2), ("b", "d", "c"), (0.5, 0.6, 0.9))]   # colour 2/3
    table = head_properties(results, pool)
    assert list(table["property"]) == ["colour", "shape", "size", "colour"]
    assert np.allclose(table["consistency"], [1.0, 2 / 3, 1 / 3, 2 / 3])
    scores = head_property_scores(table)
    assert scores["association"] == pytest.approx(2.667 / 4, abs=1e-3)
    assert scores["entanglement"] == pytest.approx(0.5)  # the two colour heads share their property
    assert scores["disentanglement"] == pytest.approx(0.5) and scores["distinct_properties"] == 3
    strict = head_properties(results, pool, min_consistency=0.5)
    assert strict["property"].isna().sum() == 1
    assert property_heads(table, "colour") == [(0, 0), (1, 1)]


def test_random_assignment_baseline_and_its_p_value():
    pool = TextPool(texts=tuple("abcdef"), values=(0,) * 6,
                    properties=("colour", "colour", "colour", "shape", "shape", "shape"))
    results = [TextSpanResult(0, h, (0, 1), ("a", "b"), (0.5, 0.6)) for h in range(3)]
    null = random_assignment_baseline(results, pool, n_draws=200, seed=1)
    assert len(null) == 200 and {"association", "disentanglement", "heads"} <= set(null.columns)
    assert (null["heads"] == 3).all() and null["association"].between(0.5, 1.0).all()
    # two texts out of three colour and three shape texts name one property with chance 2/5: mean 0.5 + 0.5 * 0.4
    assert null["association"].mean() == pytest.approx(0.7, abs=0.03)
    assert random_assignment_baseline(results, pool, n_draws=5, seed=1).equals(null.iloc[:5])
    assert upper_tail_p([0.1, 0.2, 0.3], 0.25) == pytest.approx(2 / 4)
    assert upper_tail_p(np.zeros(99), 1.0) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="n_draws"):
        random_assignment_baseline(results, pool, n_draws=0)
