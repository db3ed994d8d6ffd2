"""Fair verdict rules, written once: power preconditions, symmetric support and contradiction, and margins.

A claim's verdict is decided from a few *tests*, each an interval estimate compared with a threshold in the direction
the paper claims (:class:`IntervalTest`), and from *power preconditions*, each a statement that the instrument can see
an effect of the claimed kind (:class:`Precondition`: e.g. a positive control recovers a planted effect, or the model
reads the attribute at all). :func:`decide` applies one rule to every claim:

* a failed (or unevaluated) precondition makes the verdict ``"inconclusive"`` and the decision names it: without
  power, neither support nor contradiction is evidence;
* otherwise the claim is ``"reproduced"`` only if **every** test's interval lies wholly on the claimed side of its
  threshold (a conjunction: no rule that any one of several tests can satisfy), and ``"not reproduced"`` if **any**
  test's interval lies wholly on the other side. A control (e.g. the world minus the null world) is just another test,
  so it enters support and contradiction alike;
* anything else is ``"inconclusive"``, naming the tests whose interval contains the threshold.

Every test has a *margin*: the signed distance from its threshold to the nearest bound of its interval (positive: on
the claimed side; negative: on the other side; zero: the interval contains the threshold), and every decision the
margin of the test that decided it (:attr:`Decision.margin`). A decided verdict whose margin is below ``edge`` times
that interval's width is flagged :attr:`Decision.on_edge`, and :meth:`Decision.evidence` says so, so that a claim
decided on a threshold's edge is never reported as if it were clear.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from mmlib.reporting.claims import VERDICTS

#: The directions a test can claim: the effect lies above, or below, its threshold.
DIRECTIONS = ("above", "below")

#: Default edge tolerance: a margin below this fraction of the interval's width is "on the edge".
EDGE = 0.1


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class IntervalTest:
    """One comparison of an interval estimate with a threshold, in the claimed direction.

    Attributes
    ----------
    name : str
        What is estimated, e.g. ``"mean MDS - 0.5 (SAE)"``.
    estimate, low, high : float
        The point estimate and its interval (``low <= estimate <= high``). A non-finite bound means no interval
        could be computed: the test then neither supports nor contradicts the claim.
    threshold : float
        The value the claim must clear.
    direction : ``"above"`` or ``"below"``
        Which side of ``threshold`` the claim predicts.
    """

    name: str
    estimate: float
    low: float
    high: float
    threshold: float = 0.0
    direction: str = "above"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a test needs a name, got {self.name!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        _finite(f"the threshold of test {self.name!r}", self.threshold)
        values = [float(v) for v in (self.estimate, self.low, self.high)]
        if any(math.isinf(v) for v in values):
            raise ValueError(f"test {self.name!r}: infinite estimate or bound {values}; use NaN for 'no interval'")
        low, est, high = values[1], values[0], values[2]
        if not (math.isnan(low) or math.isnan(high)) and low > high:
            raise ValueError(f"test {self.name!r}: interval [{low}, {high}] has low > high")
        if not math.isnan(est):
            if (not math.isnan(low) and est < low - 1e-12) or (not math.isnan(high) and est > high + 1e-12):
                raise ValueError(f"test {self.name!r}: estimate {est} lies outside its interval [{low}, {high}]")

    @classmethod
    def from_ci(cls, name: str, row, threshold: float = 0.0, direction: str = "above") -> IntervalTest:
        """The test of an interval row (``mean``, ``ci_low``, ``ci_high``: e.g. of
        :func:`mmlib.core.stats.across_seeds`) against ``threshold``.
        """
        missing = [k for k in ("mean", "ci_low", "ci_high") if k not in row]
        if missing:
            raise KeyError(f"test {name!r}: the interval row lacks {missing}")
        return cls(name, float(row["mean"]), float(row["ci_low"]), float(row["ci_high"]), threshold, direction)

    @property
    def has_interval(self) -> bool:
        """Whether both bounds are finite."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def margin(self) -> float:
        """Signed distance from the threshold to the interval: positive when the whole interval lies on the claimed
        side (the distance of its nearest bound), negative when it lies wholly on the other side, 0 when it contains
        the threshold; NaN without an interval.
        """
        if not self.has_interval:
            return float("nan")
        sign = 1.0 if self.direction == "above" else -1.0
        near, far = sorted((sign * (self.low - self.threshold), sign * (self.high - self.threshold)))
        if near > 0:
            return near
        if far < 0:
            return far
        return 0.0

    @property
    def supports(self) -> bool:
        """The whole interval lies on the claimed side of the threshold."""
        return self.margin > 0

    @property
    def contradicts(self) -> bool:
        """The whole interval lies on the other side of the threshold."""
        return self.margin < 0

    @property
    def width(self) -> float:
        """The interval's width (NaN without one)."""
        return self.high - self.low if self.has_interval else float("nan")

    def text(self, digits: int = 3) -> str:
        """``"name = est [low, high] (claimed above thr; margin m)"``; "the interval contains it" for a margin of 0."""
        spec = f".{int(digits)}f"
        interval = f"[{self.low:{spec}}, {self.high:{spec}}]" if self.has_interval else "(no interval)"
        if not self.has_interval:
            where = "undecided"
        elif self.margin == 0:
            where = "the interval contains it"
        else:
            where = f"margin {self.margin:+{spec}}"
        return f"{self.name} = {self.estimate:{spec}} {interval} (claimed {self.direction} {self.threshold:g}; {where})"


@dataclasses.dataclass(frozen=True)
class Precondition:
    """A power precondition of a claim: a statement that the instrument can see an effect of the claimed kind.

    Attributes
    ----------
    name : str
        What must hold, e.g. ``"the model recognises the attribute"``.
    met : bool or None
        Whether it holds; ``None`` when it could not be evaluated (counts as not met).
    evidence : str
        What was measured to decide it.
    """

    name: str
    met: bool | None
    evidence: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a precondition needs a name, got {self.name!r}")
        if self.met is not None and not isinstance(self.met, bool):
            raise TypeError(f"precondition {self.name!r}: met must be True, False or None, got {self.met!r}")
        if not isinstance(self.evidence, str) or not self.evidence:
            raise ValueError(f"precondition {self.name!r} needs its evidence")

    @property
    def status(self) -> str:
        """``"met"``, ``"failed"`` or ``"not evaluated"``."""
        return "met" if self.met else "failed" if self.met is False else "not evaluated"


@dataclasses.dataclass(frozen=True)
class Decision:
    """The verdict :func:`decide` reached, with everything it was decided from.

    Attributes
    ----------
    verdict : str
        One of :data:`mmlib.reporting.claims.VERDICTS`.
    reason : str
        Why, in one sentence (names the failed preconditions or the undecided tests).
    tests, preconditions : tuples
        What it was decided from.
    margin : float
        How far a decided verdict is from changing: for ``"reproduced"`` the smallest margin of the tests (> 0), for
        ``"not reproduced"`` the most negative margin of the contradicting tests; 0 for an inconclusive verdict with
        an interval that contains its threshold, NaN for one decided by a precondition or without intervals.
    on_edge : bool
        Whether a decided verdict's margin is below the edge tolerance times that test's interval width.
    """

    verdict: str
    reason: str
    tests: tuple[IntervalTest, ...]
    preconditions: tuple[Precondition, ...]
    margin: float
    on_edge: bool

    @property
    def failed_preconditions(self) -> tuple[str, ...]:
        """Names of the preconditions that are not met (failed or not evaluated)."""
        return tuple(p.name for p in self.preconditions if not p.met)

    @property
    def precondition_status(self) -> str:
        """One line for the claims table: ``"met (a; b)"``, ``"failed: a"`` or ``"none stated"``."""
        if not self.preconditions:
            return "none stated"
        failed = self.failed_preconditions
        if failed:
            return "failed: " + "; ".join(failed)
        return "met (" + "; ".join(p.name for p in self.preconditions) + ")"

    def evidence(self, digits: int = 3) -> str:
        """The tests, the preconditions and the reason, as the claims table's evidence text."""
        parts = [t.text(digits) for t in self.tests]
        parts += [f"precondition '{p.name}' {p.status} ({p.evidence})" for p in self.preconditions]
        text = "; ".join(parts) + f". {self.reason}"
        if self.on_edge:
            text += f" On the edge: the margin {self.margin:+.{int(digits)}f} is small against the interval."
        return text


def decide(tests: Sequence[IntervalTest], preconditions: Sequence[Precondition] = (), *,
           edge: float = EDGE) -> Decision:
    """The verdict on a claim from its tests and power preconditions (the rule in the module's docstring).

    Parameters
    ----------
    tests : sequence of IntervalTest
        Every test the claim must pass (at least one), controls included.
    preconditions : sequence of Precondition
        What must hold for the instrument to see the effect; any not met makes the verdict inconclusive.
    edge : float
        Edge tolerance in (0, 1): a smallest margin below ``edge`` x that test's interval width is flagged.

    Raises
    ------
    ValueError
        for no tests, a test or precondition of the wrong type, two tests of one name, or an edge outside (0, 1).
    """
    tests, preconditions = tuple(tests), tuple(preconditions)
    if not tests:
        raise ValueError("a claim is decided by at least one test")
    if not all(isinstance(t, IntervalTest) for t in tests):
        raise TypeError(f"tests must be IntervalTest, got {[type(t).__name__ for t in tests]}")
    if not all(isinstance(p, Precondition) for p in preconditions):
        raise TypeError(f"preconditions must be Precondition, got {[type(p).__name__ for p in preconditions]}")
    names = [t.name for t in tests]
    if len(set(names)) != len(names):
        raise ValueError(f"two tests share a name: {names}")
    if not 0 < _finite("edge", edge) < 1:
        raise ValueError(f"edge must lie in (0, 1), got {edge}")

    failed = [p.name for p in preconditions if not p.met]
    contradicting = [t for t in tests if t.contradicts]
    deciding: IntervalTest | None = None
    if failed:
        verdict, reason = "inconclusive", "Inconclusive: precondition(s) not met: " + "; ".join(failed) + "."
    elif contradicting:
        verdict = "not reproduced"
        reason = "Not reproduced: " + "; ".join(t.name for t in contradicting) + " on the other side."
        deciding = min(contradicting, key=lambda t: t.margin)  # the last to stop contradicting
    elif all(t.supports for t in tests):
        verdict, reason = "reproduced", "Reproduced: every test clears its threshold on the claimed side."
        deciding = min(tests, key=lambda t: t.margin)  # the first to stop supporting
    else:
        undecided = [t.name + ("" if t.has_interval else " (no interval)") for t in tests if not t.supports]
        verdict = "inconclusive"
        reason = "Inconclusive: the interval of " + "; ".join(undecided) + " contains the threshold."
    assert verdict in VERDICTS
    if deciding is not None:
        margin = deciding.margin
        on_edge = abs(margin) < edge * max(deciding.width, 1e-12)
    else:
        margin = 0.0 if any(t.has_interval for t in tests) and not failed else float("nan")
        on_edge = False
    return Decision(verdict, reason, tests, preconditions, margin, bool(on_edge))


def combine(decisions: Sequence[Decision], *, edge: float = EDGE) -> Decision:
    """One decision from several (e.g. one per feature map): the verdict is that of :func:`decide` over all their
    tests and preconditions together, so every map must support the claim, and one map's contradiction (with its
    preconditions met) is enough to contradict it.

    A map whose precondition failed makes the combined verdict inconclusive, naming it: a verdict never rests on a
    map that could not have seen the effect. Tests must be named apart across the decisions (e.g. carry the map's
    name), as in :func:`decide`.
    """
    decisions = tuple(decisions)
    if not decisions or not all(isinstance(d, Decision) for d in decisions):
        raise ValueError(f"combine needs a non-empty sequence of Decision, got {decisions!r}")
    tests = tuple(t for d in decisions for t in d.tests)
    preconditions = tuple(dict.fromkeys(p for d in decisions for p in d.preconditions))  # one shared, said once
    return decide(tests, preconditions, edge=edge)


def combine_powered(decisions: Mapping[str, Decision], *, edge: float = EDGE) -> Decision:
    """One decision from alternative instruments for one measurement (e.g. the same audit run on each tiny model),
    each with its own power preconditions.

    The verdict is :func:`combine`'s over the instruments whose preconditions all hold: every powered instrument must
    support the claim, and one powered contradiction is enough to contradict it (no instrument can carry the claim
    alone while another powered one disagrees). An instrument whose precondition failed is left out, and the reason
    names it with its failed preconditions: it could not have seen the effect either way. With none powered, the
    verdict is inconclusive and names every failed precondition. Use :func:`combine` instead when the decisions are
    parts of one measurement that must all be powered (one per feature map of a claim about every map).

    Parameters
    ----------
    decisions : mapping
        ``{instrument name: Decision}``, at least one; tests must be named apart across the decisions.
    """
    if not isinstance(decisions, Mapping) or not decisions or not all(
            isinstance(k, str) and k and isinstance(d, Decision) for k, d in decisions.items()):
        raise ValueError(f"combine_powered needs a non-empty mapping of instrument names to Decision, got "
                         f"{decisions!r}")
    powered = {name: d for name, d in decisions.items() if not d.failed_preconditions}
    if not powered:
        return combine(list(decisions.values()), edge=edge)
    result = combine(list(powered.values()), edge=edge)
    left_out = [f"{name} ({'; '.join(d.failed_preconditions)})" for name, d in decisions.items() if name not in powered]
    if left_out:
        result = dataclasses.replace(result, reason=result.reason + " Left out for want of power: "
                                     + ", ".join(left_out) + ".")
    return result
