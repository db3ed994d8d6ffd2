"""The tests and preconditions of claims 5.6a and 5.6b: paired differences, the conjunction of tests per map, and
preconditions that fail when the instrument has no power (an attack that does nothing, a noise control that moves).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmlib.case_studies.adversarial.evaluation import robust_gaps
from mmlib.case_studies.adversarial.verdicts import (
    defence_preconditions,
    defence_tests,
    paired_mean_difference,
    steering_preconditions,
    steering_tests,
)
from mmlib.core.errors import InputError
from mmlib.reporting.verdict_rules import IntervalTest, Precondition, decide


def _decide(tests: pd.DataFrame, preconditions: list[dict]):
    return decide([IntervalTest.from_ci(r.test, r) for _, r in tests.iterrows()],
                  [Precondition(**p) for p in preconditions])


def test_paired_mean_difference_is_the_mean_of_the_differences():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 0.1, 400)
    b = a - 0.5 + rng.normal(0, 0.01, 400)  # paired: the difference is tight although a and b are spread
    row = paired_mean_difference(a, b)
    assert row["mean"] == pytest.approx(float((a - b).mean()))
    assert row.ci_low < row["mean"] < row.ci_high and row.ci_high - row.ci_low < 0.01
    with_nan = paired_mean_difference(np.r_[a, np.nan], np.r_[b, 3.0])
    assert with_nan["mean"] == pytest.approx(row["mean"])
    assert np.isnan(paired_mean_difference(a[:1], b[:1]).ci_low)
    with pytest.raises(InputError, match="one length"):
        paired_mean_difference(a, b[:3])


def _correct(n: int, p: dict[str, float], seed: int = 0) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """Per-image robust correctness with planted accuracies; clean accuracy 0.95 everywhere."""
    rng = np.random.default_rng(seed)
    clean = rng.random(n) < 0.95
    return {("-", "none") if s == "none" else ("SAE", s): (clean, rng.random(n) < acc) for s, acc in p.items()}


def test_defence_conjunction_and_preconditions_from_planted_accuracies():
    n = 2000
    planted = {"none": 0.3, "ImgD": 0.5, "TextD": 0.8, "CrossD": 0.6, "all": 0.7, "random": 0.5}
    correct = _correct(n, planted)
    gaps = robust_gaps({s: correct[("-", "none") if s == "none" else ("SAE", s)][1] for s in planted})
    tests = defence_tests(gaps.assign(map="SAE"), "SAE")
    assert list(tests.test) == ["SAE: robust accuracy TextD − ImgD", "SAE: robust accuracy TextD − CrossD"]
    assert tests["mean"].to_numpy() == pytest.approx([0.3, 0.2], abs=0.05)
    pre = defence_preconditions(correct, "SAE")
    assert [p["met"] for p in pre] == [True, True]
    assert _decide(tests, pre).verdict == "reproduced"
    # TextD beats ImgD but loses to CrossD: one test on the other side is enough to contradict (no any-of rule)
    worse = {**planted, "CrossD": 0.95}
    c2 = _correct(n, worse)
    g2 = robust_gaps({s: c2[("-", "none") if s == "none" else ("SAE", s)][1] for s in worse}).assign(map="SAE")
    assert _decide(defence_tests(g2, "SAE"), defence_preconditions(c2, "SAE")).verdict == "not reproduced"
    with pytest.raises(KeyError, match="no comparison"):
        defence_tests(gaps.assign(map="NCL"), "SAE")


def test_defence_preconditions_fail_without_an_attack_or_a_defence():
    no_attack = _correct(1000, {"none": 0.95, "all": 0.95})
    pre = defence_preconditions(no_attack, "SAE")
    assert pre[0]["met"] is False and "required above 0.05" in pre[0]["evidence"]
    no_defence = _correct(1000, {"none": 0.3, "all": 0.3})
    pre = defence_preconditions(no_defence, "SAE")
    assert pre[0]["met"] is True and pre[1]["met"] is False
    tests = pd.DataFrame([dict(test="SAE: robust accuracy TextD − ImgD", mean=0.2, ci_low=0.1, ci_high=0.3)])
    decision = _decide(tests, pre)
    assert decision.verdict == "inconclusive" and "aligning all features" in decision.reason


def _steering(n: int, gains: dict[str, float], noise: float = 0.0, selectivity: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = {("SAE", s): {"i2t_target_gain": g + rng.normal(0, 0.05, n), "selectivity": selectivity
                        + rng.normal(0, 0.1, n)} for s, g in gains.items()}
    out[("-", "noise")] = {"i2t_target_gain": noise + rng.normal(0, 0.01, n), "selectivity": np.full(n, np.nan)}
    return out


def test_steering_tests_need_the_category_to_beat_random_and_noise():
    per_image = _steering(300, {"CrossD": 0.2, "random:CrossD": 0.05, "all": 0.3})
    tests = steering_tests(per_image, "SAE", "CrossD", "random:CrossD")
    assert len(tests) == 3 and tests["mean"].to_numpy() == pytest.approx([0.15, 0.2, 1.0], abs=0.03)
    pre = steering_preconditions(per_image, "SAE")
    assert [p["met"] for p in pre] == [True, True]
    assert _decide(tests, pre).verdict == "reproduced"
    # as good as a random set of its size: the category is not what makes the example, not reproduced
    same = _steering(300, {"CrossD": 0.2, "random:CrossD": 0.3, "all": 0.3})
    assert _decide(steering_tests(same, "SAE", "CrossD", "random:CrossD"),
                   steering_preconditions(same, "SAE")).verdict == "not reproduced"


def test_steering_preconditions_fail_for_a_moving_noise_control_or_a_powerless_attack():
    moving = _steering(300, {"CrossD": 0.2, "random:CrossD": 0.05, "all": 0.3}, noise=0.1)
    pre = steering_preconditions(moving, "SAE")
    assert pre[0]["met"] is False and pre[0]["name"] == "the ±ε noise control shows no gain"
    powerless = _steering(300, {"CrossD": 0.0, "random:CrossD": 0.0, "all": 0.0})
    pre = steering_preconditions(powerless, "SAE")
    assert pre[0]["met"] is True and pre[1]["met"] is False
    decision = _decide(steering_tests(powerless, "SAE", "CrossD", "random:CrossD"), pre)
    assert decision.verdict == "inconclusive" and "SAE: steering all features" in decision.reason
