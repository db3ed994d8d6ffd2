"""The paper's claims as data, and the verdicts the chapters record against them.

:data:`CLAIMS` is the one registry of the claims the book tests: for each, its id, the paper's statement, the
chapter that tests it, the rule that decides the verdict (in words) and the section of the book's Method page that
states it. Each chapter ends with claim checks; besides asserting what was measured, it records one
:class:`Verdict` per claim it tests with :func:`record_verdicts`, which refuses a claim that is not in the registry
or that belongs to another chapter. The claims-table chapter reads the registry and the recorded verdicts back
with :func:`claims_table`: nothing in the table is typed by hand; every verdict is written by the notebook that
measured it, in the same run.

Verdicts are stored as JSON under ``<artifacts>/claims/<profile>/<chapter>.json`` (atomic writes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from mmlib.core.artifacts import to_jsonable
from mmlib.core.paths import artifacts_dir

#: The environment variable that names one run of the book (set by ``book/build.py`` for every chapter it
#: executes); verdicts record it, so the claims table can refuse a verdict left over from another run.
RUN_ENV = "MMLIB_RUN_ID"

#: The three verdicts a claim can get.
VERDICTS = ("reproduced", "not reproduced", "inconclusive")

#: The shared rule of :mod:`mmlib.reporting.verdict_rules` (quoted by the claims decided with it).
SHARED = ("Shared rule: reproduced if every test of every map lies on the claimed side, not reproduced if any lies on "
          "the other side (controls included), inconclusive otherwise; inconclusive, naming it, if a power "
          "precondition fails.")

#: How per-map verdicts combine into one (the words of :func:`combine_verdicts`), quoted by the rules below.
COMBINED = ("reproduced if every map supports it, not reproduced if at least one map contradicts it and none supports "
            "it, inconclusive otherwise")


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim of the paper that the book tests.

    Attributes
    ----------
    id : str
        Short id, e.g. ``"5.1a"``: the paper's experiment (Method page, section "The paper's experiments"), then a
        letter when one experiment makes several claims. ``6.x`` are the companion systems.
    statement : str
        The paper's claim, in words.
    chapter : str
        The notebook that tests it (e.g. ``"03_mds"``).
    rule : str
        How the chapter decides the verdict, fixed before reading the numbers.
    section : str
        The label of the claim on the book's Method page (``book/method.md``).
    """

    id: str
    statement: str
    chapter: str
    rule: str

    @property
    def section(self) -> str:
        """The claim's target label on the book's Method page, e.g. ``"claim-5-1a"``."""
        return "claim-" + self.id.replace(".", "-")


#: Every claim the book tests, in the paper's order.
CLAIMS: tuple[Claim, ...] = (
    Claim("5.1a", "The MDS mass of the feature maps leans to the image side.", "03_mds",
          "Per trainable map (SAE, NCL) of the first model, across map seeds: the interval of mean MDS - 0.5 and the "
          "interval of the world - baseline difference of the mean, each above 0; on tiny also the quality-matched "
          "world (models trained only as far as their null twins) - null difference of the mean, above 0. "
          f"{SHARED} Precondition: the pipeline recovers the classes of a planted dictionary."),
    Claim("5.1b", "DeCLIP separates the modalities more than CLIP (more modality-specific features).", "03_mds",
          "Separation = share of alive features with MDS < 0.1 or > 0.9. Per trainable map: the interval of "
          "DeCLIP-like - CLIP and the interval of that difference minus the same difference in the baseline (on tiny "
          "also with the quality-matched world's models), each above 0. "
          f"{SHARED} Preconditions: two models to compare; the pipeline recovers planted classes."),
    Claim("5.2", "ImgD/TextD/CrossD align with intuition: ImgD ≈ visual attributes, TextD ≈ linguistic content, "
                 "CrossD ≈ shared concepts.", "04_categories",
          "Features matched to a planted factor value; the factor's role gives the expected class. Tests per trainable "
          "map: the interval of Cohen's kappa (category vs expected class, mu+-sigma rule) above 0.2, and the interval "
          f"of kappa(world) - kappa(baseline world) above 0. {SHARED} Preconditions: the category alignment can be "
          "detected (the DeCLIP-like model's SAE kappa interval above 0.2; not evaluated without a second model); per "
          "map, kappa can differ from 0 (the matched features expect at least two classes). The decision under every "
          "rule of the grid is reported."),
    Claim("5.3", "SAE and NCL features are more monosemantic than raw CLIP dimensions (EmbSim / WinRate).",
          "04_categories",
          "Tests per trainable map and side (image, text): the interval of WinRate (b) against raw dimensions (all "
          f"pairs) above 0.5. {SHARED} Preconditions: raw dimensions leave room to improve (their ground-truth purity "
          "below 0.95 on both sides); EmbSim tells coherent top sets from random ones (WinRate (a) intervals above "
          "0.5 for every map and side)."),
    Claim("5.4", "Removing CrossD features hurts downstream accuracy least (vs activity-matched random removal).",
          "05_removal",
          "Per map and seed, a group's excess drop (its drop minus the mean drop of random removals matched on "
          "support and activation mass) is averaged over the tasks; d = excess(CrossD) - the smallest excess of the "
          "other non-empty groups. Tests per map: d below 0, and d minus the null world's and the swapped control's d "
          "(paired by seed) below 0. Power precondition: each class's activity-matched removals lower the tasks by at "
          f"least 0.01 on average (the removals compared are visible). {SHARED}"),
    Claim("5.5", "Female recognition relies mostly on ImgD features; male recognition is hurt most by removing "
                 "TextD features.", "06_gender_bias",
          "The margin of a value = excess drop (drop minus the mean drop of activity-matched random removals) of its "
          "expected class (ImgD for female, TextD for male) minus the "
          "largest excess drop of the other classes. Tests per map: both margins' intervals over the seeds above 0, "
          "and margin(world) - margin(null world) per value, paired by seed, above 0 where it has an interval. "
          f"{SHARED} Preconditions: the model recognises the attribute (balanced accuracy interval above 0.5); per "
          "map, the positive control recovers the planted asymmetry (planted embeddings: both margins above 0; "
          "planted null: not)."),
    Claim("5.6a", "Alignment training on TextD features gives the best adversarial defence (v1), compared with ImgD "
                  "and CrossD.", "07_adversarial",
          "Per map: robust accuracy of the TextD-aligned model minus that of the ImgD-aligned one, and minus that of "
          "the CrossD-aligned one, each with a paired bootstrap interval over test images, above 0. "
          f"{SHARED} Preconditions: the attack lowers the undefended model's accuracy (clean - robust above 0.05); "
          "per map, aligning all alive features raises robust accuracy above no defence."),
    Claim("5.6b", "Cross-modal adversarial examples can be generated by perturbing one category of features (v3).",
          "07_adversarial",
          "The category tested is CrossD (the cross-modal features; the paper names none). Per map: CrossD's i2t "
          "target gain minus that of a random set of as many alive features, and minus the +-eps noise control's "
          "(both paired over images), and CrossD's selectivity, each with a bootstrap interval above 0. "
          f"{SHARED} Preconditions: the noise control's gain lies inside +-0.05; per map, steering every alive "
          "feature moves the target caption (positive control)."),
    Claim("5.7a", "Larger interventions on TextD features give stronger control of high-level semantics.",
          "08_text_to_image",
          "Delta = control(TextD, alpha = 1) - control(alpha = 0), and Delta minus the same gain for an "
          "activity-matched random set, over references with bootstrap intervals, each above 0. "
          f"{SHARED} Preconditions: the edit can move the generated image's colour (positive control: the CrossD "
          "edit's control gain has a lower bound above 0.05); TextD carries at least 5 % of the prompts' SAE "
          "activation."),
    Claim("5.7b", "ImgD interventions keep more of the reference image's visual detail.", "08_text_to_image",
          "At alpha = 1, preservation(ImgD) - preservation(TextD), - preservation(CrossD) and - preservation of a "
          "activity-matched random set, over references with bootstrap intervals, each above 0. "
          f"{SHARED} Preconditions: the decoder reproduces at least one preserved factor (preservation can be "
          "measured); the ImgD class is non-empty and its edit moves the embedding (mean 1 - cos at alpha = 1 at "
          "least 0.001)."),
    Claim("6.1a", "SpLiCE decompositions are sparse and faithful: high cosine to the dense embedding and retained "
                  "zero-shot accuracy at low L0.", "09_splice",
          "At the smallest penalty of the sweep with mean L0 <= 10 (chosen without looking at accuracy), with "
          "bootstrap intervals over test images: mean L0 below 10, mean cosine to the dense embedding above 0.8, and "
          f"per task (shape, colour) sparse - dense zero-shot accuracy (paired) above -0.05. {SHARED} "
          "Preconditions: some penalty is that sparse; the dense model reads each task (Wilson lower bound >= 0.6); "
          "planted 5-concept embeddings are recovered at that penalty (mean cosine >= 0.9, mean L0 <= 10)."),
    Claim("6.1b", "SpLiCE detects a spurious correlation in a dataset (concepts over-represented in a class).",
          "09_splice",
          "Per tiny model, the tied background's mean lift over the shape classes in the spurious world minus that in "
          f"the control world, bootstrap interval (images resampled per world) above 0. {SHARED} Precondition, per "
          "model: it reads backgrounds (Wilson lower bound of the dense zero-shot background accuracy on the control "
          "world >= 0.35). The verdict is that of the models with power (verdict_rules.combine_powered): every one "
          "must show the lift, one contradiction is enough, and a model without power is left out and named."),
    Claim("6.2b", "Some heads specialise in a property: TextSpan descriptions of a head name a consistent property "
                  "(above a random-assignment baseline).", "10_clip_interpret",
          "The association (mean TextSpan consistency over heads) minus the random-assignment baseline's mean, with a "
          f"percentile interval resampling heads and baseline draws together, above 0. {SHARED} Precondition: "
          "synthetic heads planted per property are labelled with their own property for at least half of the "
          "properties. Measured per tiny model; the verdict is that of the models with power "
          "(verdict_rules.combine_powered). (That the embedding is a sum of per-head terms, once claim 6.2a, is an "
          "identity: unit-tested.)"),
)

_BY_ID = {c.id: c for c in CLAIMS}


def claim(claim_id: str) -> Claim:
    """The registered claim ``claim_id`` (KeyError listing the ids otherwise)."""
    try:
        return _BY_ID[claim_id]
    except KeyError:
        raise KeyError(f"no claim {claim_id!r} in the registry; known: {sorted(_BY_ID)}") from None


def claims_of(chapter: str) -> tuple[Claim, ...]:
    """The registered claims that ``chapter`` tests."""
    return tuple(c for c in CLAIMS if c.chapter == chapter)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The book's verdict on one registered claim, as a chapter measured it.

    Attributes
    ----------
    claim : str
        The claim's id in :data:`CLAIMS`.
    verdict : str
        One of :data:`VERDICTS`.
    evidence : str
        What was measured (numbers with intervals), in one or two sentences.
    chapter : str
        The notebook that measured it; must be the claim's registered chapter.
    precondition : str
        The status of the claim's power preconditions (:attr:`mmlib.reporting.verdict_rules.Decision.
        precondition_status`: ``"met (...)"``, ``"failed: ..."``), or ``"not stated"`` for a verdict decided without
        the shared rules of :mod:`mmlib.reporting.verdict_rules`.
    margin : float
        How far the verdict is from changing (:attr:`mmlib.reporting.verdict_rules.Decision.margin`); NaN when not
        stated.
    """

    claim: str
    verdict: str
    evidence: str
    chapter: str
    precondition: str = "not stated"
    margin: float = float("nan")

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if not self.evidence:
            raise ValueError(f"the verdict on claim {self.claim!r} needs its evidence")
        if not isinstance(self.precondition, str) or not self.precondition:
            raise ValueError(f"the verdict on claim {self.claim!r} needs a precondition status (or 'not stated')")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)):
            raise TypeError(f"the margin of claim {self.claim!r} must be a number (NaN: not stated), got "
                            f"{self.margin!r}")
        registered = claim(self.claim)
        if registered.chapter != self.chapter:
            raise ValueError(f"claim {self.claim} is tested by chapter {registered.chapter!r} (mmlib.reporting.claims."
                             f"CLAIMS), not by {self.chapter!r}")

    @property
    def statement(self) -> str:
        """The paper's statement, from the registry."""
        return claim(self.claim).statement


def judge(supported: bool, contradicted: bool) -> str:
    """``"reproduced"`` if the evidence supports the claim, ``"not reproduced"`` if it contradicts it
    (e.g. a confidence interval excludes the claimed effect), else ``"inconclusive"``.
    """
    if supported and contradicted:
        raise ValueError("evidence cannot both support and contradict a claim")
    return "reproduced" if supported else "not reproduced" if contradicted else "inconclusive"


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """One verdict from several (e.g. one per feature map): all reproduced -> ``"reproduced"``; some
    not reproduced and none reproduced -> ``"not reproduced"``; anything else -> ``"inconclusive"``.
    """
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
    """Write a chapter's verdicts (replacing its previous ones) and return the file.

    Raises
    ------
    ValueError
        for no verdicts, a verdict of another chapter, a claim recorded twice, or a registered claim of this
        chapter left without a verdict.
    """
    if not verdicts:
        raise ValueError(f"chapter {chapter!r} records no verdicts")
    if any(v.chapter != chapter for v in verdicts):
        raise ValueError(f"every verdict recorded by {chapter!r} must name it as its chapter")
    ids = [v.claim for v in verdicts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"chapter {chapter!r} records a claim twice: {ids}")
    missing = [c.id for c in claims_of(chapter) if c.id not in ids]
    if missing:
        raise ValueError(f"chapter {chapter!r} tests claims {missing} (mmlib.reporting.claims.CLAIMS) but records "
                         "no verdict for them")
    folder = claims_dir(profile, root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{chapter}.json"
    tmp = folder / f".{chapter}.{uuid.uuid4().hex}.tmp"
    payload = {"chapter": chapter, "profile": profile, "written": datetime.now(timezone.utc).isoformat(),
               "run": os.environ.get(RUN_ENV), "verdicts": [to_jsonable(v) for v in verdicts]}
    try:
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_verdicts(profile: str = "tiny", root: Path | None = None) -> pd.DataFrame:
    """All recorded verdicts of ``profile``, one row per claim, sorted by claim id.

    Columns: claim, statement, verdict, evidence, chapter, profile, written, run (the book run that wrote it, or
    None outside a book build). Empty (with those columns) if no
    chapter has recorded anything yet. A recorded claim that is no longer in the registry is an error (a stale
    file: rerun the chapter).
    """
    rows = []
    for path in sorted(claims_dir(profile, root).glob("*.json")):
        payload = json.loads(path.read_text())
        for v in payload["verdicts"]:
            v = Verdict(**{k: v[k] for k in ("claim", "verdict", "evidence", "chapter")},
                        precondition=v.get("precondition", "not stated"),
                        margin=float("nan") if v.get("margin") is None else float(v["margin"]))
            rows.append({**dataclasses.asdict(v), "statement": v.statement, "profile": payload["profile"],
                         "written": payload["written"], "run": payload.get("run")})
    columns = ["claim", "statement", "verdict", "evidence", "chapter", "precondition", "margin", "profile", "written",
               "run"]
    return pd.DataFrame(rows, columns=columns).sort_values(["claim", "chapter"], ignore_index=True)


def claims_table(profile: str = "tiny", root: Path | None = None) -> pd.DataFrame:
    """The registry joined with the recorded verdicts of ``profile``: one row per registered claim, in the
    registry's order, with ``rule`` and ``section``; ``verdict`` is ``"not recorded"`` where no chapter has
    recorded one.
    """
    recorded = load_verdicts(profile, root).set_index("claim")
    rows = []
    for c in CLAIMS:
        r = recorded.loc[c.id] if c.id in recorded.index else None
        rows.append(dict(claim=c.id, statement=c.statement, chapter=c.chapter, rule=c.rule, section=c.section,
                         verdict=r["verdict"] if r is not None else "not recorded",
                         evidence=r["evidence"] if r is not None else "",
                         precondition=r["precondition"] if r is not None else "",
                         margin=r["margin"] if r is not None else float("nan"),
                         profile=profile, written=r["written"] if r is not None else None,
                         run=r["run"] if r is not None else None))
    return pd.DataFrame(rows)


def table_problems(table: pd.DataFrame, run: str | None = None, max_age: timedelta = timedelta(hours=6),
                   now: datetime | None = None) -> list[str]:
    """Why a :func:`claims_table` cannot be shown as this run's result (empty list: it can).

    A claim without a verdict is a problem; so is a verdict from another book run (when ``run`` is given, e.g. the
    value of :data:`RUN_ENV` in a book build) or, outside a build, one older than ``max_age``.
    """
    now = now or datetime.now(timezone.utc)
    problems = []
    for r in table.itertuples():
        if r.verdict == "not recorded":
            problems.append(f"claim {r.claim}: no verdict recorded; run chapter {r.chapter}")
        elif run is not None and r.run != run:
            problems.append(f"claim {r.claim}: recorded by another run of the book ({r.run!r}, this run is {run!r}); "
                            f"rerun chapter {r.chapter}")
        elif run is None and now - datetime.fromisoformat(r.written) > max_age:
            problems.append(f"claim {r.claim}: recorded {now - datetime.fromisoformat(r.written)} ago (more than "
                            f"{max_age}); rerun chapter {r.chapter}")
    return problems


def claims_markdown(table: pd.DataFrame) -> str:
    """The claims table as a Markdown table (claim, the paper's claim, verdict, margin, power preconditions, evidence,
    chapter) and its tally.
    """
    def cell(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    def margin(value: object) -> str:
        return f"{value:+.3f}" if isinstance(value, float) and value == value else "n/a"

    lines = ["| claim | paper's claim | verdict | margin | power preconditions | evidence | chapter |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {cell(r.claim)} | {cell(r.statement)} | **{cell(r.verdict)}** | {margin(getattr(r, 'margin', None))} "
              f"| {cell(getattr(r, 'precondition', '') or 'not stated')} | {cell(r.evidence)} | {cell(r.chapter)} |"
              for r in table.itertuples()]
    tally = table.verdict.value_counts().reindex([*VERDICTS, "not recorded"], fill_value=0)
    counts = ", ".join(f"{n} {v}" for v, n in tally.items() if n or v in VERDICTS)
    preconditions = table.get("precondition", pd.Series("", index=table.index)).fillna("").astype(str)
    blind = int(((table.verdict == "inconclusive") & preconditions.str.startswith("failed")).sum())
    stated = int((preconditions.str.startswith("met") | preconditions.str.startswith("failed")).sum())
    return ("\n".join(lines) + f"\n\n**Tally:** {counts} (of {len(table)} claims); {blind} inconclusive for a failed "
            f"power precondition; {stated} of {len(table)} claims decided with stated preconditions.")
