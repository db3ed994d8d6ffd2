"""Chapter set-up: profile, offline mode on tiny only, glue texts, verdict recording."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmlib.reporting.chapter import Chapter, format_value, start_chapter


def test_format_value():
    assert format_value(np.float64(0.7654), ".2f") == "0.77"
    assert format_value(torch.tensor(3), "d") == "3"
    assert format_value(float("nan"), ".3f") == "n/a" and format_value(None) == "n/a"
    assert format_value("0.5 [0.4, 0.6]", ".2f") == "0.5 [0.4, 0.6]"
    assert format_value(1234, ",") == "1,234"
    with pytest.raises(TypeError, match="one-element"):
        format_value(torch.zeros(2))


def test_start_chapter_sets_up_and_glues(monkeypatch, artifact_root, capsys):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    ch = start_chapter("03_mds", "paper")
    import os
    assert "HF_HUB_OFFLINE" not in os.environ  # the paper profile may download
    ch = start_chapter("03_mds", "tiny", map_seeds=(0,))
    assert os.environ["HF_HUB_OFFLINE"] == "1" and ch.profile.map_seeds == (0,)
    assert "profile tiny" in capsys.readouterr().out
    assert ch.glue("rho", 0.12345, ".2f") == "0.12" and ch.glued == {"rho": "0.12"}
    assert ch.glue_ci("kappa", {"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75}, digits=2) == "0.50 [0.25, 0.75]"
    with pytest.raises(ValueError, match="already glued"):
        ch.glue("rho", 1)
    with pytest.raises(ValueError, match="letters, digits"):
        ch.glue("a-b", 1)
    path = ch.record([ch.verdict("5.1a", "inconclusive", "x"), ch.verdict("5.1b", "reproduced", "y")])
    assert path.parent.name == "tiny" and path.stem == "03_mds"
    assert ch.elapsed() >= 0 and not math.isnan(ch.elapsed())
    with pytest.raises(ValueError, match="NN_topic"):
        start_chapter("mds")
    assert isinstance(start_chapter("00_world_and_models", ch.profile), Chapter)


def test_start_chapter_applies_the_run_settings(artifact_root, capsys):
    ch = start_chapter("03_mds", "paper", settings={"pretrained": "random", "map_seeds": [1, 2]})
    assert ch.profile.pretrained == "random" and ch.profile.map_seeds == (1, 2)
    assert "profile paper · weights random" in capsys.readouterr().out
    assert start_chapter("03_mds", "tiny", settings=None).profile.map_seeds == (0, 1, 2)


def test_checks_raise_on_tiny_and_are_reported_on_paper(artifact_root, capsys):
    from mmlib.reporting.chapter import ClaimCheckError

    tiny = start_chapter("00_world_and_models", "tiny")
    assert tiny.check("1. shape read", True, "0.95 >= 0.9") is True
    with pytest.raises(ClaimCheckError, match="claim check failed in chapter 00_world_and_models: 2. colour: 0.4"):
        tiny.check("2. colour", False, "0.4 >= 0.9")
    with pytest.raises(AssertionError):  # world-only checks run on tiny, too
        tiny.check("3. planted shares", False, world_only=True)
    paper = start_chapter("00_world_and_models", "paper")
    capsys.readouterr()
    assert paper.check("2. colour", False, "0.4 >= 0.9") is False
    assert paper.check("3. planted shares", False, world_only=True) is False
    assert paper.check("4. ok", True) is True
    out = capsys.readouterr().out
    assert "2. colour: 0.4 >= 0.9: MISSED" in out and "3. planted shares: skipped on the paper profile" in out
    assert paper.missed() == ["2. colour"] and [o for _, o in paper.checks] == ["MISSED", "skipped", "OK"]
    with pytest.raises(ValueError):
        paper.check("", True)


def test_decided_turns_a_decision_into_a_verdict(artifact_root, capsys):
    from mmlib.reporting.verdict_rules import IntervalTest, Precondition, decide

    ch = start_chapter("03_mds")
    decision = decide([IntervalTest("mean MDS - 0.5", -0.1, -0.2, -0.05)], [Precondition("power", True, "ok")])
    verdict = ch.decided("5.1a", decision, note="SAE and NCL.")
    assert verdict.verdict == "not reproduced" and verdict.chapter == "03_mds"
    assert verdict.evidence.startswith("SAE and NCL. mean MDS - 0.5 = -0.100 [-0.200, -0.050]")
    assert verdict.precondition == "met (power)" and verdict.margin == pytest.approx(-0.05)
    with pytest.raises(TypeError, match="Decision"):
        ch.decided("5.1a", "reproduced")  # type: ignore[arg-type]
