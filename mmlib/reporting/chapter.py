"""A chapter's set-up and its bindings to the prose: one call at the top, one object for the rest of the notebook.

:func:`start_chapter` does what every chapter needs before its first result: it resolves the profile, keeps the
``tiny`` profile offline (a stray download then fails at once instead of retrying), silences the progress-bar
warning that would print an absolute path, limits BLAS to one thread (the small matrices of the tiny profile run
faster so, and the results do not depend on the machine's core count), seeds torch, and starts the chapter's clock.

The returned :class:`Chapter` binds measured numbers to the prose with :meth:`Chapter.glue` (myst-nb ``glue``: the
Markdown then says ``{glue:text}`key```), records the chapter's verdicts against the claims registry with
:meth:`Chapter.record`, and reports the chapter's run time.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import TqdmWarning

from mmlib.core.stats import format_ci
from mmlib.profiles import Profile, apply_settings, get_profile
from mmlib.reporting.claims import Verdict, record_verdicts
from mmlib.reporting.verdict_rules import Decision

#: Environment variables that make Hugging Face libraries fail at once instead of trying the network.
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class ClaimCheckError(AssertionError):
    """A claim check of a chapter failed on the ``tiny`` profile (the build stops: the result drifted)."""


def format_value(value: Any, fmt: str | None = None) -> str:
    """The text a number is shown as in the prose: ``format(value, fmt)``; ``"n/a"`` for NaN / None; plain
    ``str`` for strings and for values without ``fmt`` (numpy scalars are converted to Python numbers first).
    """
    if value is None:
        return "n/a"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"can only show a one-element tensor in the prose, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, str) or fmt is None:
        return str(value)
    return format(value, fmt)


def _emit_glue(name: str, text: str) -> None:
    """Store ``text`` under ``name`` in the notebook's outputs the way myst-nb's ``glue`` does (not displayed)."""
    try:
        from myst_nb import glue
    except ImportError:  # no book tooling (e.g. a bare Colab runtime): nothing renders the glue anyway
        return
    glue(name, text, display=False)


@dataclasses.dataclass
class Chapter:
    """A running chapter: its name, profile, clock and the values glued into its prose.

    Attributes
    ----------
    name : str
        The notebook's stem, e.g. ``"03_mds"`` (the chapter that records verdicts).
    profile : Profile
    started : float
        ``time.perf_counter()`` at :func:`start_chapter`.
    glued : dict
        name -> the text glued under it (what the prose shows).
    checks : list of (str, str)
        ``(label, outcome)`` of every :meth:`check`, ``outcome`` one of ``"OK"``, ``"MISSED"``, ``"skipped"``.
    """

    name: str
    profile: Profile
    started: float = dataclasses.field(default_factory=time.perf_counter)
    glued: dict[str, str] = dataclasses.field(default_factory=dict)
    checks: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def glue(self, name: str, value: Any, fmt: str | None = None) -> str:
        """Bind ``value`` (formatted with ``fmt``, see :func:`format_value`) to ``{glue:text}`name``` in the prose;
        return the text. A name can be glued once per chapter (a second glue would silently win in the book).
        """
        if not name.replace("_", "").isalnum():
            raise ValueError(f"glue names are letters, digits and underscores; got {name!r}")
        if name in self.glued:
            raise ValueError(f"{name!r} is already glued in chapter {self.name} (to {self.glued[name]!r})")
        text = format_value(value, fmt)
        self.glued[name] = text
        _emit_glue(name, text)
        return text

    def glue_ci(self, name: str, row: Mapping[str, float], digits: int = 3, signed: bool = False) -> str:
        """Glue ``"mean [ci_low, ci_high]"`` of an interval row (:func:`mmlib.core.stats.format_ci`)."""
        return self.glue(name, format_ci(row, digits=digits, signed=signed))

    def glue_many(self, values: Mapping[str, Any], fmt: str | None = None) -> dict[str, str]:
        """Glue several values with one format; return name -> text."""
        return {k: self.glue(k, v, fmt) for k, v in values.items()}

    def check(self, label: str, passed: bool, detail: str = "", *, world_only: bool = False) -> bool:
        """A claim check that knows its profile; returns whether it ran and passed.

        On ``tiny`` a failed check raises :class:`ClaimCheckError` (an ``AssertionError``): a result that drifts
        fails the build. On ``paper`` nothing is raised, so that the chapter goes on and records its verdicts with
        their evidence: a check of a property of the generated world (``world_only``) is skipped, saying so, and
        any other is printed ``OK`` or ``MISSED`` and kept in :attr:`checks` (:meth:`missed` lists them).
        """
        if not isinstance(label, str) or not label:
            raise ValueError(f"a check needs a label, got {label!r}")
        text = f"{label}: {detail}" if detail else label
        if world_only and not self.profile.is_tiny:
            self.checks.append((label, "skipped"))
            print(f"{label}: skipped on the {self.profile.name} profile (a property of the generated world)")
            return False
        passed = bool(passed)
        self.checks.append((label, "OK" if passed else "MISSED"))
        if not passed and self.profile.is_tiny:
            raise ClaimCheckError(f"claim check failed in chapter {self.name}: {text}")
        outcome = "OK" if passed else f"MISSED (reported, not raised, on the {self.profile.name} profile)"
        print(f"{text}: {outcome}")
        return passed

    def missed(self) -> list[str]:
        """Labels of the checks that ran and did not pass (only possible off the ``tiny`` profile)."""
        return [label for label, outcome in self.checks if outcome == "MISSED"]

    def record(self, verdicts: Sequence[Verdict], root: Path | None = None) -> Path:
        """Record this chapter's verdicts for the claims table (:func:`mmlib.reporting.claims.record_verdicts`)."""
        return record_verdicts(self.name, verdicts, profile=self.profile.name, root=root)

    def verdict(self, claim: str, verdict: str, evidence: str) -> Verdict:
        """A :class:`~mmlib.reporting.claims.Verdict` of this chapter."""
        return Verdict(claim, verdict, evidence, self.name)

    def decided(self, claim: str, decision: Decision, note: str = "") -> Verdict:
        """The :class:`~mmlib.reporting.claims.Verdict` of a :func:`mmlib.reporting.verdict_rules.decide` decision:
        its verdict, its evidence (tests, preconditions, reason; ``note`` first when given), its precondition status
        and its margin.
        """
        if not isinstance(decision, Decision):
            raise TypeError(f"decided() takes a verdict_rules.Decision, got {type(decision).__name__}")
        evidence = (note.rstrip() + " " if note else "") + decision.evidence()
        return Verdict(claim, decision.verdict, evidence, self.name, precondition=decision.precondition_status,
                       margin=decision.margin)

    def elapsed(self) -> float:
        """Seconds since the chapter started."""
        return time.perf_counter() - self.started


def start_chapter(name: str, profile: str | Profile = "tiny", seed: int = 0, blas_threads: int | None = 1,
                  settings: Mapping[str, Any] | str | os.PathLike | None = None, **overrides: Any) -> Chapter:
    """Set up a chapter and return it.

    Parameters
    ----------
    name : str
        The notebook's stem (``"NN_topic"``).
    profile : str or Profile
        ``"tiny"`` or ``"paper"`` (the notebook's papermill parameter), or a profile already built.
    seed : int
        torch's global seed.
    blas_threads : int or None
        BLAS threads for numpy / scikit-learn (``None``: leave them).
    settings : mapping, path or None
        The notebook's ``settings`` parameter: profile overrides for this run (a mapping, or a JSON file of one, e.g.
        the smoke run's from ``mmlib smoke-data``; :func:`mmlib.profiles.apply_settings`), applied after
        ``overrides``.
    **overrides
        Profile fields to override (:func:`mmlib.profiles.get_profile`).
    """
    if not (len(name) > 3 and name[:2].isdigit() and name[2] == "_"):
        raise ValueError(f"a chapter is named after its notebook, 'NN_topic'; got {name!r}")
    P = profile if isinstance(profile, Profile) else get_profile(profile, **overrides)
    if isinstance(profile, Profile) and overrides:
        P = dataclasses.replace(P, **overrides)
    P = apply_settings(P, settings)
    if P.is_tiny:
        for var in OFFLINE_ENV:
            os.environ.setdefault(var, "1")
    # (mmlib/__init__.py filters it on import; again here in case the kernel's filters were reset since)
    warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
    if blas_threads is not None:
        threadpool_limits(blas_threads)
    torch.manual_seed(seed)
    print(f"chapter {name} · profile {P.name}" + (f" · weights {P.pretrained}" if not P.is_tiny else ""))
    return Chapter(name=name, profile=P)
