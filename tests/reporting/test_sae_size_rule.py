from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from mmlib.core.errors import ConfigError, InputError
from mmlib.data.embeddings import Embeddings
from mmlib.data.planted import PlantedConfig, generate_planted
from mmlib.feature_maps.raw import RawDims
from mmlib.feature_maps.sae import SAEConfig
from mmlib.feature_maps.store import TrainedFeatureMap, load_or_train_feature_map
from mmlib.reporting import sae_size_rule
from mmlib.reporting.sae_size_rule import (
    SizeRule,
    chosen_setting,
    regime_table,
    size_rule_table,
    size_rule_variants,
)


def test_candidates_in_rule_order():
    rule = SizeRule(k_multiples=(8, 2), l1_coefs=(0.1, 0.03))
    assert rule.candidates(64) == [(512, 0.1), (512, 0.03), (128, 0.1), (128, 0.03)]


@pytest.mark.parametrize("kwargs", [dict(k_multiples=()), dict(l1_coefs=(0.1, 0.1)), dict(k_multiples=(0,)),
                                    dict(max_dead=1.5), dict(max_fvu=-0.1), dict(l1_coefs=(-1.0,))])
def test_bad_rules_are_refused(kwargs):
    with pytest.raises((ConfigError, InputError)):
        SizeRule(**kwargs)


@pytest.mark.parametrize("d", [0, -3, 2.5, "64"])
def test_bad_dimension_is_refused(d):
    with pytest.raises(InputError, match="positive integer"):
        SizeRule().candidates(d)


def test_variants_keep_the_schedule_and_set_k_and_lambda():
    base = SAEConfig(K=7, l1_coef=0.7, epochs=3, seed=5)
    variants = size_rule_variants(base, 4, SizeRule(k_multiples=(2, 1), l1_coefs=(0.1,)))
    assert [v[1] for v in variants] == ["K=8 (2d), λ=0.1", "K=4 (1d), λ=0.1"]
    assert [(v[2].K, v[2].l1_coef, v[2].epochs, v[2].seed) for v in variants] == [(8, 0.1, 3, 5), (4, 0.1, 3, 5)]
    with pytest.raises(InputError, match="ReLU"):
        size_rule_variants(SAEConfig(K=8, kind="topk", k=2), 4)


def _fake_sweep(dead: dict[str, list[float]], fvu: dict[str, list[float]]):
    """A stand-in for sae_sweep: per model (told apart by the train split's key), hand-set dead shares and FVUs."""
    def sweep(variants, train, test, device="cpu", progress=False):
        return pd.DataFrame({"kind": [v[0] for v in variants], "setting": [v[1] for v in variants],
                             "l0": 1.0, "fvu": fvu[train.key], "dead_both": dead[train.key], "train_seconds": 0.0})
    return sweep


def _emb(key: str, d: int = 4) -> Embeddings:
    return Embeddings(image=torch.zeros(3, d), text=torch.zeros(3, d), key=key, meta={})


def test_the_first_candidate_that_meets_the_rule_for_every_model_is_chosen(monkeypatch):
    # candidates (rule order): (8, 0.1), (8, 0.03), (4, 0.1), (4, 0.03)
    dead = {"a": [0.5, 0.1, 0.1, 0.0], "b": [0.1, 0.3, 0.2, 0.0]}
    fvu = {"a": [0.01, 0.01, 0.01, 0.01], "b": [0.01, 0.01, 0.01, 0.01]}
    monkeypatch.setattr(sae_size_rule, "sae_sweep", _fake_sweep(dead, fvu))
    rule = SizeRule(k_multiples=(2, 1), l1_coefs=(0.1, 0.03), max_dead=0.2, max_fvu=0.05)
    table = size_rule_table(SAEConfig(K=8), {"A": (_emb("a"), _emb("a")), "B": (_emb("b"), _emb("b"))}, rule)
    assert list(table.meets_all[table.model == "A"]) == [False, False, True, True]  # 0.2 itself meets the rule
    assert chosen_setting(table) == (4, 0.1)
    assert table.chosen.sum() == 2 and set(table[table.chosen].model) == {"A", "B"}
    assert list(table.order) == [0, 0, 1, 1, 2, 2, 3, 3] and list(table.k_over_d.unique()) == [2, 1]


def test_fvu_alone_can_fail_a_candidate_and_nothing_may_be_chosen(monkeypatch):
    dead = {"a": [0.0, 0.0]}
    monkeypatch.setattr(sae_size_rule, "sae_sweep", _fake_sweep(dead, {"a": [0.2, 0.04]}))
    rule = SizeRule(k_multiples=(1,), l1_coefs=(0.1, 0.03), max_fvu=0.05)
    table = size_rule_table(SAEConfig(K=8), {"A": (_emb("a"), _emb("a"))}, rule)
    assert chosen_setting(table) == (4, 0.03)
    monkeypatch.setattr(sae_size_rule, "sae_sweep", _fake_sweep({"a": [0.9, 0.9]}, {"a": [0.0, 0.0]}))
    table = size_rule_table(SAEConfig(K=8), {"A": (_emb("a"), _emb("a"))}, rule)
    assert chosen_setting(table) is None and not table.chosen.any()


def test_models_of_different_dimensions_or_none_are_refused():
    with pytest.raises(InputError, match="one dimension"):
        size_rule_table(SAEConfig(K=8), {"A": (_emb("a", 4), _emb("a", 4)), "B": (_emb("b", 6), _emb("b", 6))})
    with pytest.raises(InputError, match="at least one model"):
        size_rule_table(SAEConfig(K=8), {})


def test_real_sweep_on_a_planted_dictionary(artifact_root):
    planted = generate_planted(PlantedConfig(d=8, n_shared=4, n_image=2, n_text=2, sparsity=1.0), 256)
    emb = planted.as_embeddings()
    rule = SizeRule(k_multiples=(4, 1), l1_coefs=(0.3,), max_dead=1.0, max_fvu=1e9)
    table = size_rule_table(SAEConfig(K=8, epochs=2, batch_size=64), {"planted": (emb, emb)}, rule)
    assert list(table.K) == [32, 8] and chosen_setting(table) == (32, 0.3)  # everything meets a rule of no limits
    assert table.dead_both.between(0, 1).all() and (table.fvu > 0).all() and (table.l0 >= 0).all()


def test_regime_table_reads_each_sae_and_refuses_other_maps(artifact_root):
    planted = generate_planted(PlantedConfig(d=8, n_shared=4, n_image=2, n_text=2, sparsity=1.0), 256)
    emb = planted.as_embeddings()
    trained = load_or_train_feature_map("sae", SAEConfig(K=16, l1_coef=0.3, epochs=2, batch_size=64), emb,
                                        progress=False)
    table = regime_table({"planted": (trained, emb)})
    row = table.loc["planted"]
    assert (row.d, row.K, row.k_over_d, row.l1_coef, row.epochs, row.n_pairs) == (8, 16, 2.0, 0.3, 2, 256)
    assert row.steps == trained.history["step"][-1] and 0 <= row.dead_both <= 1 and row.fvu > 0
    raw = TrainedFeatureMap(RawDims(8), {}, 0.0, "k", Path("raw"))
    with pytest.raises(InputError, match="compares SAEs"):
        regime_table({"raw": (raw, emb)})
