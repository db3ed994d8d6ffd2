"""Claims: verdicts are validated, recorded atomically per chapter and gathered into one table."""

from __future__ import annotations

import pytest

from mmlib.reporting.claims import Verdict, combine_verdicts, judge, load_verdicts, record_verdicts


def _v(claim: str, verdict: str = "reproduced", chapter: str = "03_mds") -> Verdict:
    return Verdict(claim, "the paper says so", "we measured 0.5 [0.4, 0.6]", verdict, chapter)


def test_judge():
    assert judge(True, False) == "reproduced"
    assert judge(False, True) == "not reproduced"
    assert judge(False, False) == "inconclusive"
    with pytest.raises(ValueError):
        judge(True, True)


def test_bad_verdicts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="verdict must be one of"):
        _v("5.1", verdict="sort of")
    with pytest.raises(ValueError, match="no verdicts"):
        record_verdicts("03_mds", [], root=tmp_path)
    with pytest.raises(ValueError, match="must name it"):
        record_verdicts("04_categories", [_v("5.1")], root=tmp_path)


def test_record_and_load_roundtrip(tmp_path):
    assert load_verdicts(root=tmp_path).empty
    record_verdicts("03_mds", [_v("5.1b"), _v("5.1a", "not reproduced")], root=tmp_path)
    record_verdicts("05_removal", [_v("5.4", "inconclusive", "05_removal")], root=tmp_path)
    table = load_verdicts(root=tmp_path)
    assert list(table.claim) == ["5.1a", "5.1b", "5.4"]
    assert list(table.verdict) == ["not reproduced", "reproduced", "inconclusive"]
    # re-recording a chapter replaces its verdicts; other chapters and profiles are untouched
    record_verdicts("03_mds", [_v("5.1a")], root=tmp_path)
    assert list(load_verdicts(root=tmp_path).claim) == ["5.1a", "5.4"]
    assert load_verdicts("paper", root=tmp_path).empty
    assert not list((tmp_path / "claims" / "tiny").glob(".*tmp"))


def test_combine_verdicts():
    assert combine_verdicts(["reproduced", "reproduced"]) == "reproduced"
    assert combine_verdicts(["not reproduced", "inconclusive"]) == "not reproduced"
    assert combine_verdicts(["reproduced", "not reproduced"]) == "inconclusive"
    assert combine_verdicts(["inconclusive", "inconclusive"]) == "inconclusive"
    with pytest.raises(ValueError):
        combine_verdicts([])
    with pytest.raises(ValueError):
        combine_verdicts(["maybe"])
