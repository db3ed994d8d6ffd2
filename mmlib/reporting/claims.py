"""The paper's claims and the book's verdicts, recorded by the chapters and gathered by the claims table.

Each chapter ends with claim checks. Besides asserting what was measured, it records one :class:`Verdict`
per paper claim it tests (PAPER.md §5–6) with :func:`record_verdicts`; the claims-table chapter reads them
all back with :func:`load_verdicts`. Nothing in the table is typed by hand: every row is written by the
notebook that measured it, in the same run.

Verdicts are stored as JSON under ``<artifacts>/claims/<profile>/<chapter>.json`` (atomic writes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from mmlib.core.artifacts import to_jsonable
from mmlib.core.paths import artifacts_dir

#: The three verdicts a claim can get.
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The book's verdict on one paper claim.

    Attributes
    ----------
    claim : str
        Short id, e.g. ``"5.1a"`` (PAPER.md §5 item 1, first claim).
    statement : str
        The paper's claim, in words.
    evidence : str
        What was measured (numbers with CIs), in one or two sentences.
    verdict : str
        One of :data:`VERDICTS`.
    chapter : str
        The notebook that measured it (e.g. ``"03_mds"``).
    """

    claim: str
    statement: str
    evidence: str
    verdict: str
    chapter: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if not self.claim or not self.statement or not self.evidence:
            raise ValueError("a verdict needs a claim id, the paper's statement and the evidence")


def judge(supported: bool, contradicted: bool) -> str:
    """``"reproduced"`` if the evidence supports the claim, ``"not reproduced"`` if it contradicts it
    (e.g. a confidence interval excludes the claimed effect), else ``"inconclusive"``."""
    if supported and contradicted:
        raise ValueError("evidence cannot both support and contradict a claim")
    return "reproduced" if supported else "not reproduced" if contradicted else "inconclusive"


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """One verdict from several (e.g. one per feature map): all reproduced -> ``"reproduced"``; some
    not reproduced and none reproduced -> ``"not reproduced"``; anything else -> ``"inconclusive"``."""
    verdicts = list(verdicts)
    if not verdicts or any(v not in VERDICTS for v in verdicts):
        raise ValueError(f"expected a non-empty list of verdicts from {VERDICTS}, got {verdicts}")
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if "not reproduced" in verdicts and "reproduced" not in verdicts:
        return "not reproduced"
    return "inconclusive"


def claims_dir(profile: str, root: Path | None = None) -> Path:
    """Folder of the recorded verdicts of ``profile``."""
    return Path(root or artifacts_dir()) / "claims" / profile


def record_verdicts(chapter: str, verdicts: Sequence[Verdict], profile: str = "tiny",
                    root: Path | None = None) -> Path:
    """Write a chapter's verdicts (replacing its previous ones) and return the file."""
    if not verdicts:
        raise ValueError(f"chapter {chapter!r} records no verdicts")
    if any(v.chapter != chapter for v in verdicts):
        raise ValueError(f"every verdict recorded by {chapter!r} must name it as its chapter")
    folder = claims_dir(profile, root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{chapter}.json"
    tmp = folder / f".{chapter}.{uuid.uuid4().hex}.tmp"
    payload = {"chapter": chapter, "profile": profile, "written": datetime.now(timezone.utc).isoformat(),
               "verdicts": [to_jsonable(v) for v in verdicts]}
    try:
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_verdicts(profile: str = "tiny", root: Path | None = None) -> pd.DataFrame:
    """All recorded verdicts of ``profile``, one row per claim, sorted by claim id.

    Columns: claim, statement, evidence, verdict, chapter, written. Empty (with those columns) if no chapter
    has recorded anything yet.
    """
    rows = []
    for path in sorted(claims_dir(profile, root).glob("*.json")):
        payload = json.loads(path.read_text())
        for v in payload["verdicts"]:
            rows.append({**Verdict(**v).__dict__, "written": payload["written"]})
    columns = ["claim", "statement", "evidence", "verdict", "chapter", "written"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["claim", "chapter"], ignore_index=True)
