"""Claims: the registry, verdicts validated against it, recorded atomically per chapter and gathered into one table."""

from __future__ import annotations

import pytest

from mmlib.reporting.claims import (
    CLAIMS,
    VERDICTS,
    Verdict,
    claim,
    claims_of,
    claims_table,
    combine_verdicts,
    judge,
    load_verdicts,
    record_verdicts,
)


def _v(claim_id: str, verdict: str = "reproduced", chapter: str = "03_mds") -> Verdict:
    return Verdict(claim_id, verdict, "we measured 0.5 [0.4, 0.6]", chapter)


def test_registry_is_complete_and_consistent():
    ids = [c.id for c in CLAIMS]
    assert len(ids) == len(set(ids)) == 13
    assert all(c.statement and c.rule and c.chapter for c in CLAIMS)
    assert claim("5.4").chapter == "05_removal" and claim("5.1a").section == "claim-5-1a"
    assert [c.id for c in claims_of("03_mds")] == ["5.1a", "5.1b"]
    assert [c.id for c in claims_of("10_clip_interpret")] == ["6.2b"]  # 6.2a, an identity, is a unit test
    with pytest.raises(KeyError, match="known"):
        claim("9.9")


def test_judge():
    assert judge(True, False) == "reproduced"
    assert judge(False, True) == "not reproduced"
    assert judge(False, False) == "inconclusive"
    with pytest.raises(ValueError):
        judge(True, True)


def test_bad_verdicts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="verdict must be one of"):
        _v("5.1a", verdict="sort of")
    with pytest.raises(KeyError, match="no claim"):
        _v("5.1")
    with pytest.raises(ValueError, match="tested by chapter '04_categories'"):
        _v("5.2", chapter="03_mds")
    with pytest.raises(ValueError, match="needs its evidence"):
        Verdict("5.1a", "reproduced", "", "03_mds")
    with pytest.raises(ValueError, match="no verdicts"):
        record_verdicts("03_mds", [], root=tmp_path)
    with pytest.raises(ValueError, match="must name it"):
        record_verdicts("04_categories", [_v("5.1a"), _v("5.1b")], root=tmp_path)
    with pytest.raises(ValueError, match="records no verdict for them"):
        record_verdicts("03_mds", [_v("5.1a")], root=tmp_path)
    with pytest.raises(ValueError, match="twice"):
        record_verdicts("03_mds", [_v("5.1a"), _v("5.1a"), _v("5.1b")], root=tmp_path)


def test_record_and_load_roundtrip(tmp_path):
    assert load_verdicts(root=tmp_path).empty
    record_verdicts("03_mds", [_v("5.1b"), _v("5.1a", "not reproduced")], root=tmp_path)
    record_verdicts("05_removal", [_v("5.4", "inconclusive", "05_removal")], root=tmp_path)
    table = load_verdicts(root=tmp_path)
    assert list(table.claim) == ["5.1a", "5.1b", "5.4"]
    assert list(table.verdict) == ["not reproduced", "reproduced", "inconclusive"]
    assert table.statement[0] == claim("5.1a").statement  # the statement comes from the registry
    # re-recording a chapter replaces its verdicts; other chapters and profiles are untouched
    record_verdicts("03_mds", [_v("5.1a"), _v("5.1b", "inconclusive")], root=tmp_path)
    assert list(load_verdicts(root=tmp_path).verdict) == ["reproduced", "inconclusive", "inconclusive"]
    assert load_verdicts("paper", root=tmp_path).empty
    assert not list((tmp_path / "claims" / "tiny").glob(".*tmp"))
    full = claims_table(root=tmp_path)
    assert list(full.claim) == [c.id for c in CLAIMS]
    assert (full.set_index("claim").verdict["5.2"]) == "not recorded"
    assert set(full.verdict) <= {*VERDICTS, "not recorded"}


def test_combine_verdicts():
    assert combine_verdicts(["reproduced", "reproduced"]) == "reproduced"
    assert combine_verdicts(["not reproduced", "inconclusive"]) == "not reproduced"
    assert combine_verdicts(["reproduced", "not reproduced"]) == "inconclusive"
    assert combine_verdicts(["inconclusive", "inconclusive"]) == "inconclusive"
    with pytest.raises(ValueError):
        combine_verdicts([])
    with pytest.raises(ValueError):
        combine_verdicts(["maybe"])


def test_table_problems_and_markdown(tmp_path, monkeypatch):
    from datetime import datetime, timedelta, timezone

    from mmlib.reporting.claims import RUN_ENV, claims_markdown, table_problems

    monkeypatch.setenv(RUN_ENV, "run-1")
    record_verdicts("03_mds", [_v("5.1a"), _v("5.1b", "inconclusive")], root=tmp_path)
    table = claims_table(root=tmp_path)
    problems = table_problems(table, run="run-1")
    assert len(problems) == len(CLAIMS) - 2 and all("no verdict recorded" in p for p in problems)
    assert any("another run" in p for p in table_problems(table, run="run-2"))
    later = datetime.now(timezone.utc) + timedelta(hours=7)
    assert any("ago" in p for p in table_problems(table, now=later))
    done = table[table.claim.isin(["5.1a", "5.1b"])]
    assert table_problems(done, run="run-1") == [] and table_problems(done) == []
    text = claims_markdown(done)
    assert text.count("\n|") == 3 and "**reproduced**" in text
    assert "1 reproduced, 0 not reproduced, 1 inconclusive (of 2 claims)" in text


def test_verdicts_carry_preconditions_and_margins_through_the_table(tmp_path):
    """A verdict decided with the shared rules keeps its precondition status and margin on disk and in the table; the
    tally counts the claims left inconclusive by a failed precondition.
    """
    from mmlib.reporting.claims import claims_markdown
    from mmlib.reporting.verdict_rules import IntervalTest, Precondition, decide

    blind = decide([IntervalTest("effect", 0.3, 0.2, 0.4)], [Precondition("model reads the attribute", False, "0.50")])
    clear = decide([IntervalTest("effect", 0.3, 0.2, 0.4)], [Precondition("positive control", True, "0.9")])
    record_verdicts("03_mds", [
        Verdict("5.1a", blind.verdict, blind.evidence(), "03_mds", blind.precondition_status, blind.margin),
        Verdict("5.1b", clear.verdict, clear.evidence(), "03_mds", clear.precondition_status, clear.margin),
    ], root=tmp_path)
    table = load_verdicts(root=tmp_path).set_index("claim")
    assert table.precondition["5.1a"] == "failed: model reads the attribute"
    assert table.precondition["5.1b"] == "met (positive control)" and table.margin["5.1b"] == pytest.approx(0.2)
    assert table.margin["5.1a"] != table.margin["5.1a"]  # NaN: decided by the precondition, no margin
    full = claims_table(root=tmp_path)
    text = claims_markdown(full[full.claim.isin(["5.1a", "5.1b"])])
    assert "| **inconclusive** | n/a | failed: model reads the attribute |" in text
    assert "| **reproduced** | +0.200 | met (positive control) |" in text
    assert "1 inconclusive for a failed power precondition; 2 of 2 claims decided with stated preconditions" in text
    # a verdict recorded without the rules says so
    record_verdicts("05_removal", [_v("5.4", chapter="05_removal")], root=tmp_path)
    assert load_verdicts(root=tmp_path).set_index("claim").precondition["5.4"] == "not stated"


@pytest.mark.parametrize("kwargs, error", [(dict(precondition=""), ValueError), (dict(margin="0.1"), TypeError),
                                           (dict(margin=True), TypeError)])
def test_bad_precondition_or_margin_is_refused(kwargs, error):
    with pytest.raises(error):
        Verdict("5.1a", "reproduced", "e", "03_mds", **kwargs)
