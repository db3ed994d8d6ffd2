"""Tests of mmlib.reporting.verdict_rules: margins by hand, the symmetric rule, preconditions, edges and combining."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmlib.reporting.verdict_rules import Decision, IntervalTest, Precondition, combine, combine_powered, decide


def t(name="effect", est=0.5, low=0.4, high=0.6, threshold=0.0, direction="above"):
    return IntervalTest(name, est, low, high, threshold, direction)


MET = Precondition("positive control recovered", True, "planted effect 0.30 [0.25, 0.35]")
FAILED = Precondition("model reads the attribute", False, "balanced accuracy 0.50 [0.47, 0.53]")


# ----------------------------------------------------------------------------------------------------- margins


@pytest.mark.parametrize("low, high, threshold, direction, margin", [
    (0.4, 0.6, 0.0, "above", 0.4),      # wholly above: distance of the low bound
    (-0.6, -0.4, 0.0, "above", -0.4),   # wholly below: minus the distance of the high bound
    (-0.1, 0.3, 0.0, "above", 0.0),     # contains the threshold
    (0.1, 0.3, 0.2, "above", 0.0),
    (0.1, 0.3, 0.5, "below", 0.2),      # claimed below 0.5: high bound 0.3 is 0.2 below
    (0.6, 0.9, 0.5, "below", -0.1),     # on the other side by the low bound's 0.1
])
def test_margin_by_hand(low, high, threshold, direction, margin):
    test = t(est=(low + high) / 2, low=low, high=high, threshold=threshold, direction=direction)
    assert test.margin == pytest.approx(margin)
    assert test.supports == (margin > 0)
    assert test.contradicts == (margin < 0)


def test_from_ci_reads_an_interval_row():
    import pandas as pd

    test = IntervalTest.from_ci("lean", pd.Series({"mean": -0.1, "ci_low": -0.2, "ci_high": -0.05}), 0.0, "above")
    assert (test.estimate, test.low, test.high) == (-0.1, -0.2, -0.05) and test.contradicts
    with pytest.raises(KeyError, match="ci_low"):
        IntervalTest.from_ci("lean", {"mean": 0.1})


def test_no_interval_neither_supports_nor_contradicts():
    test = t(low=float("nan"), high=float("nan"))
    assert math.isnan(test.margin) and not test.supports and not test.contradicts
    assert "(no interval)" in test.text()


@pytest.mark.parametrize("kwargs, match", [
    (dict(low=0.7, high=0.6), "low > high"),
    (dict(est=0.9), "outside its interval"),
    (dict(direction="up"), "direction"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(high=float("inf")), "infinite"),
    (dict(name=""), "name"),
])
def test_bad_tests_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        t(**kwargs)


def test_bad_preconditions_are_refused():
    with pytest.raises(TypeError, match="met"):
        Precondition("x", "yes", "e")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="evidence"):
        Precondition("x", True, "")


# ------------------------------------------------------------------------------------------------------- decide


def test_all_tests_must_support():
    assert decide([t("a"), t("b")]).verdict == "reproduced"
    decision = decide([t("a"), t("b", low=-0.1)])
    assert decision.verdict == "inconclusive"
    assert decision.reason == "Inconclusive: the interval of b contains the threshold."


def test_one_contradiction_is_enough_and_controls_count_both_ways():
    """The effect is clear but the world - null difference lies below 0: the claim is contradicted, not left open
    (the asymmetric rule the book used before would call this inconclusive).
    """
    effect = t("mean MDS - 0.5")
    control = t("world - null", est=-0.2, low=-0.3, high=-0.1)
    decision = decide([effect, control])
    assert decision.verdict == "not reproduced"
    assert "world - null" in decision.reason
    assert decision.margin == pytest.approx(-0.1)


def test_failed_precondition_makes_it_inconclusive_and_is_named():
    decision = decide([t(est=-0.5, low=-0.6, high=-0.4)], [MET, FAILED])
    assert decision.verdict == "inconclusive"
    assert decision.failed_preconditions == ("model reads the attribute",)
    assert "model reads the attribute" in decision.reason
    assert decision.precondition_status == "failed: model reads the attribute"
    assert decide([t()], [MET]).precondition_status == "met (positive control recovered)"
    assert decide([t()]).precondition_status == "none stated"


def test_unevaluated_precondition_counts_as_not_met():
    decision = decide([t()], [Precondition("positive control", None, "no planted effect in this world")])
    assert decision.verdict == "inconclusive"
    assert "not evaluated" in decision.evidence()


def test_edge_is_flagged_with_its_margin():
    clear = decide([t(est=0.5, low=0.4, high=0.6)])
    edge = decide([t(est=0.21, low=0.005, high=0.4)])  # margin 0.005 < 0.1 x width 0.395
    assert not clear.on_edge
    assert edge.verdict == "reproduced" and edge.on_edge
    assert "On the edge" in edge.evidence() and "+0.005" in edge.evidence()
    straddle = decide([t(low=-0.1, est=0.1, high=0.3)])
    assert straddle.verdict == "inconclusive" and not straddle.on_edge and straddle.margin == 0.0
    assert "(claimed above 0; the interval contains it)" in straddle.evidence()


def test_decide_refuses_bad_calls():
    with pytest.raises(ValueError, match="at least one test"):
        decide([])
    with pytest.raises(ValueError, match="share a name"):
        decide([t("a"), t("a")])
    with pytest.raises(TypeError):
        decide([("a", 0.5, 0.4, 0.6)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="edge"):
        decide([t()], edge=1.5)


def test_evidence_lists_every_test_and_precondition():
    text = decide([t("a"), t("b", est=0.3, low=0.2, high=0.4)], [MET]).evidence()
    assert "a = 0.500 [0.400, 0.600]" in text and "b = 0.300" in text
    assert "precondition 'positive control recovered' met" in text
    assert text.rstrip().endswith("threshold on the claimed side.")


def test_combine_needs_every_map_and_respects_preconditions():
    sae = decide([t("SAE: effect")])
    ncl_contra = decide([t("NCL: effect", est=-0.5, low=-0.6, high=-0.4)])
    ncl_blind = decide([t("NCL: effect", est=-0.5, low=-0.6, high=-0.4)], [FAILED])
    assert combine([sae, decide([t("NCL: effect")])]).verdict == "reproduced"
    assert combine([sae, ncl_contra]).verdict == "not reproduced"
    assert combine([sae, ncl_blind]).verdict == "inconclusive"
    with pytest.raises(ValueError):
        combine([])
    shared = combine([decide([t("SAE: effect")], [MET]), decide([t("NCL: effect")], [MET])])
    assert shared.preconditions == (MET,) and shared.evidence().count("positive control recovered") == 1


def test_combine_powered_leaves_out_only_the_instruments_without_power():
    blind_a = Precondition("A reads backgrounds", False, "zero-shot 0.25 [0.23, 0.27]")
    sees_b = Precondition("B reads backgrounds", True, "zero-shot 0.71 [0.69, 0.73]")
    sees_c = Precondition("C reads backgrounds", True, "zero-shot 0.80 [0.78, 0.82]")
    a_blind = decide([t("A: lift", est=-0.5, low=-0.6, high=-0.4)], [blind_a])
    b_supports = decide([t("B: lift")], [sees_b])
    # the blind instrument's contradiction does not count; the powered one decides, and the reason names the other
    one = combine_powered({"A": a_blind, "B": b_supports})
    assert one.verdict == "reproduced" and one.margin == pytest.approx(0.4)
    assert "Left out for want of power: A (A reads backgrounds)." in one.reason
    assert one.precondition_status == "met (B reads backgrounds)"
    # every powered instrument must support, and one powered contradiction contradicts
    c_contradicts = decide([t("C: lift", est=-0.5, low=-0.6, high=-0.4)], [sees_c])
    c_undecided = decide([t("C: lift", est=0.1, low=-0.1, high=0.3)], [sees_c])
    assert combine_powered({"B": b_supports, "C": c_contradicts}).verdict == "not reproduced"
    assert combine_powered({"B": b_supports, "C": c_undecided}).verdict == "inconclusive"
    # none powered: inconclusive, naming every failed precondition
    b_blind = decide([t("B: lift")], [Precondition("B reads backgrounds", False, "zero-shot 0.26 [0.24, 0.28]")])
    none = combine_powered({"A": a_blind, "B": b_blind})
    assert none.verdict == "inconclusive"
    assert none.failed_preconditions == ("A reads backgrounds", "B reads backgrounds")
    for bad in ({}, [b_supports], {"B": "reproduced"}, {"": b_supports}):
        with pytest.raises(ValueError, match="combine_powered needs"):
            combine_powered(bad)


# ------------------------------------------------------------------------------------------ properties of the rule

bounds = st.floats(-10, 10, allow_nan=False, allow_subnormal=False)


@st.composite
def interval_tests(draw, name="x"):
    a, b = sorted((draw(bounds), draw(bounds)))
    est = draw(st.floats(a, b)) if a < b else a
    return IntervalTest(name, est, a, b, draw(bounds), draw(st.sampled_from(["above", "below"])))


@given(interval_tests())
def test_a_test_never_supports_and_contradicts(test):
    assert not (test.supports and test.contradicts)


@given(interval_tests())
def test_flipping_the_direction_flips_the_verdict(test):
    flipped = IntervalTest(test.name, test.estimate, test.low, test.high, test.threshold,
                           "below" if test.direction == "above" else "above")
    v, w = decide([test]).verdict, decide([flipped]).verdict
    swap = {"reproduced": "not reproduced", "not reproduced": "reproduced", "inconclusive": "inconclusive"}
    assert w == swap[v]


@given(st.lists(interval_tests(), min_size=1, max_size=4))
def test_adding_a_failed_precondition_always_gives_inconclusive(ts):
    ts = [IntervalTest(f"t{i}", x.estimate, x.low, x.high, x.threshold, x.direction) for i, x in enumerate(ts)]
    assert decide(ts, [FAILED]).verdict == "inconclusive"
    decision = decide(ts)
    assert isinstance(decision, Decision)
    if decision.verdict == "reproduced":
        assert all(x.supports for x in ts) and decision.margin > 0
    if decision.verdict == "not reproduced":
        assert any(x.contradicts for x in ts) and decision.margin == min(x.margin for x in ts) < 0
