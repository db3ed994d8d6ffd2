#!/usr/bin/env python3
"""Build the book from clean: execute the notebooks, then render them with Jupyter Book.

1. Every notebook listed in ``_toc.yml`` as ``notebooks/_executed/<name>`` is executed with papermill, in toc
   order, from its source ``notebooks/<name>.ipynb`` (kernel ``python3``, parameter ``profile``, default
   ``"tiny"``), into ``notebooks/_executed/<name>.ipynb`` (git-ignored). The kernel runs in the repository root
   (papermill uses the caller's working directory; notebooks resolve paths through ``mmlib.core.paths``). The first
   failure stops the build with the notebook's name and the failing cell's error. In each executed copy the
   notebook's own ``parameters`` cell is tagged ``remove-cell``: the page shows the parameters once, in the cell
   papermill injected (``# Parameters``), i.e. the profile the page was actually built with.
   The prose is then checked (:func:`check_prose`): no measured number
   typed by hand into a Markdown cell, and every glue key used is glued (``mmlib/reporting/prose.py``).
   The quick variants of the fair benchmarks (``benchmarks/report.py --quick``) then write the Performance page's
   measured content into ``book/_generated/performance/`` (git-ignored; ``book/performance.md`` includes it).
2. ``jupyter-book build`` renders the book into ``_build/html`` with warnings as errors (``-W -n``).
3. The output is checked: every toc page exists, pages with formulas load the local MathJax, and no page
   loads anything from the network.

Everything runs with the interpreter that runs this script (``sys.executable``), so the script works from
the Makefile's ``.venv`` and from any other environment with the ``book`` extra installed.

Usage (from anywhere; ``make book`` is the usual entry point)::

    python book/build.py                 # execute (profile "tiny") + build, from clean
    python book/build.py --no-execute    # re-render the existing executed copies only
    python book/build.py --profile paper # on a GPU machine with network (see book/colab.md)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import NoReturn

import yaml

REPO = Path(__file__).resolve().parent.parent
TOC = REPO / "_toc.yml"
BUILD = REPO / "_build"
SOURCE_DIR = "notebooks"
EXECUTED_DIR = "notebooks/_executed"
KERNEL = "python3"
#: The claims table's notebook (its name starts so): executed after every chapter, whose verdicts it reads.
CLAIMS_PREFIX = "99_"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

#: The environment variable naming one run of the book (mmlib.reporting.claims.RUN_ENV).
RUN_ENV = "MMLIB_RUN_ID"
#: The claims table of the last build, without timestamps or run ids: two builds are compared on this file.
CLAIMS_FILE = BUILD / "claims.json"


def say(msg: str = "") -> None:
    print(msg, flush=True)


def fail(msg: str) -> NoReturn:
    say()
    say("BOOK BUILD FAILED: " + msg)
    sys.exit(1)


# --------------------------------------------------------------------------- the toc
def toc_files(toc_path: Path = TOC) -> list[str]:
    """Every ``file:`` of the toc (and its root), in reading order."""
    toc = yaml.safe_load(toc_path.read_text(encoding="utf8"))
    files: list[str] = [toc["root"]]

    def walk(items) -> None:
        for item in items or []:
            if "file" in item:
                files.append(item["file"])
            walk(item.get("sections"))
            walk(item.get("chapters"))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    walk(toc.get("sections"))
    return [f.removesuffix(".ipynb").removesuffix(".md") for f in files]


def toc_notebooks() -> list[str]:
    """Names (``NN_topic``) of the chapters, in toc order."""
    prefix = EXECUTED_DIR + "/"
    return [f[len(prefix):] for f in toc_files() if f.startswith(prefix)]


# --------------------------------------------------------------------------- environment
def kernel_env(profile: str) -> None:
    """Environment inherited by the kernels (set in this process, before any kernel starts)."""
    bindir = str(Path(sys.executable).parent)  # not resolved: a venv's bin/, so the venv's tools come first
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    if profile == "tiny":
        # A stray `pretrained=` must fail at once instead of retrying for ~47 s (see ENV.md).
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    # One id per build: every chapter records it with its verdicts, and the claims table refuses any other.
    os.environ.setdefault(RUN_ENV, f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
    os.environ.pop("MPLBACKEND", None)  # ipykernel's inline backend, so that figures land in the notebook
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # debugpy's "frozen modules" note
    os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")  # jupyter_core's path-migration note


def check_kernel() -> None:
    """The ``python3`` kernel must run this interpreter (jupyter_client maps argv[0] 'python' to it)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        fail(f"no Jupyter kernel named {KERNEL!r}: install ipykernel in {sys.prefix}")
    exe = spec.argv[0]
    if exe not in {"python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}", sys.executable}:
        fail(
            f"the {KERNEL!r} kernelspec in {spec.resource_dir} runs {exe!r}, not this environment's "
            f"{sys.executable!r}. Remove that kernelspec or run this script with that interpreter."
        )


def has_parameters_cell(path: Path) -> bool:
    nb = json.loads(path.read_text(encoding="utf8"))
    return any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.get("cells", []))


def hide_duplicate_parameters(path: Path) -> bool:
    """Tag the notebook's own ``parameters`` cell of an executed copy ``remove-cell`` (in place).

    papermill inserts its ``injected-parameters`` cell (``# Parameters``, the values this run used) after the
    notebook's ``parameters`` cell, and Jupyter Book would render both. Only when an injected cell exists is the
    original hidden, so a page always shows its parameters once. Returns whether the file was changed.
    """
    nb = json.loads(path.read_text(encoding="utf8"))
    cells = nb.get("cells", [])
    tags_of = [c.setdefault("metadata", {}).get("tags", []) for c in cells]
    if not any("injected-parameters" in tags for tags in tags_of):
        return False
    changed = False
    for cell, tags in zip(cells, tags_of):
        if "parameters" in tags and "injected-parameters" not in tags and "remove-cell" not in tags:
            cell["metadata"]["tags"] = [*tags, "remove-cell"]
            changed = True
    if changed:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf8")
    return changed


# --------------------------------------------------------------------------- step 1: papermill
def execute(names: list[str], profile: str, log_output: bool, cell_timeout: int | None,
            jobs: int = 2) -> dict[str, float]:
    """Execute the chapters, ``jobs`` at a time, then the claims table (``99_*``), which reads every chapter's
    verdicts; returns seconds per notebook, in toc order. The first failure stops the build.
    """
    logging.basicConfig(level=logging.INFO if log_output else logging.WARNING, format="%(message)s")
    missing = [n for n in names if not (REPO / SOURCE_DIR / f"{n}.ipynb").is_file()]
    if missing:
        fail("source notebooks listed in _toc.yml do not exist: "
             + ", ".join(f"{SOURCE_DIR}/{n}.ipynb" for n in missing))
    no_params = [n for n in names if not has_parameters_cell(REPO / SOURCE_DIR / f"{n}.ipynb")]
    if no_params:
        fail("notebooks without a cell tagged 'parameters' (the profile is set there): " + ", ".join(no_params))

    out_dir = REPO / EXECUTED_DIR
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    times: dict[str, float] = {}
    say(f"==> Executing {len(names)} notebook(s) with papermill (kernel {KERNEL}, profile={profile!r}, cwd {REPO}, "
        f"{jobs} at a time; the claims table last)")
    first = [n for n in names if not n.startswith(CLAIMS_PREFIX)]
    last = [n for n in names if n.startswith(CLAIMS_PREFIX)]
    for group in (first, last):
        if not group:
            continue
        if jobs == 1 or len(group) == 1:
            results = (_execute_one(name, profile, log_output, cell_timeout) for name in group)
            _collect(results, times, len(names))
            continue
        # Chapters that need the same model wait for each other through the artifact store's per-key locks.
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_execute_one, name, profile, log_output, cell_timeout) for name in group]
            try:
                _collect((f.result() for f in concurrent.futures.as_completed(futures)), times, len(names))
            except SystemExit:  # fail fast: do not wait for the notebooks still running
                for proc in list(getattr(pool, "_processes", {}).values()):
                    proc.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    return {n: times[n] for n in names}


def _collect(results, times: dict[str, float], total: int) -> None:
    """Record each ``(name, seconds, error)``; the first error stops the build (:func:`fail`)."""
    for name, seconds, error in results:
        if error:
            fail(error)
        times[name] = seconds
        hide_duplicate_parameters(REPO / EXECUTED_DIR / f"{name}.ipynb")
        say(f"    [{len(times)}/{total}] {name}: {seconds:.1f} s")


def _execute_one(name: str, profile: str, log_output: bool, cell_timeout: int | None) -> tuple[str, float, str]:
    """Execute ``notebooks/<name>.ipynb`` into the executed copy; returns ``(name, seconds, error or "")``."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    logging.basicConfig(level=logging.INFO if log_output else logging.WARNING, format="%(message)s")
    src = REPO / SOURCE_DIR / f"{name}.ipynb"
    dst = REPO / EXECUTED_DIR / f"{name}.ipynb"
    say(f"--> {SOURCE_DIR}/{name}.ipynb")
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(src),
            str(dst),
            parameters={"profile": profile},
            kernel_name=KERNEL,
            cwd=str(REPO),
            progress_bar=False,
            log_output=log_output,
            execution_timeout=cell_timeout,
            # ipykernel 7 logs "Kernel is running over TCP without encryption" at every start (the kernel
            # is local and short-lived); its own log level only, cell outputs and errors are unaffected.
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except PapermillExecutionError as e:
        elapsed = time.perf_counter() - t0
        tb = ANSI.sub("", "\n".join(e.traceback or []))
        return name, elapsed, (
            f"notebook {SOURCE_DIR}/{name}.ipynb failed after {elapsed:.1f} s\n"
            f"  in cell In [{e.exec_count}] (cell index {e.cell_index} of the executed copy): "
            f"{e.ename}: {e.evalue}\n"
            f"  --- cell source ---\n{textwrap.indent(e.source or '', '  | ')}\n"
            f"  --- traceback ---\n{textwrap.indent(tb, '  ')}\n"
            f"  The executed copy with the error is {dst.relative_to(REPO)}"
        )
    except Exception as e:  # kernel death, timeout, bad JSON, ...
        elapsed = time.perf_counter() - t0
        return name, elapsed, (f"notebook {SOURCE_DIR}/{name}.ipynb failed after {elapsed:.1f} s: "
                               f"{type(e).__name__}: {e}")
    return name, time.perf_counter() - t0, ""


# --------------------------------------------------------------------------- prose check
def check_prose(names: list[str], profile: str = "tiny") -> None:
    """No hand-typed measured number in the sources' Markdown, consistent glue in the executed copies.

    ``mmlib.reporting.prose.check_notebook`` runs on ``notebooks/<name>.ipynb`` (design constants: the notebook's
    declared constants and the ``profile``'s fields) and ``check_glue`` on ``notebooks/_executed/<name>.ipynb`` where it
    exists. Any problem fails the build with the full list.
    """
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # mmlib from this checkout, also when it is not installed
    from mmlib.reporting.prose import check_glue, check_notebook, format_report

    violations, glue = [], []
    for name in names:
        violations += check_notebook(REPO / SOURCE_DIR / f"{name}.ipynb", profile=profile)
        executed = REPO / EXECUTED_DIR / f"{name}.ipynb"
        if executed.is_file():
            glue += check_glue(executed)
    if violations or glue:
        fail("the chapters' prose holds hand-typed measured numbers or inconsistent glue:\n"
             + format_report(violations, glue, notebooks=[f"{REPO / SOURCE_DIR / n}.ipynb" for n in names]))
    say(f"==> Prose of {len(names)} chapter(s): no hand-typed measured number, glue consistent")


# --------------------------------------------------------------------------- step 1b: the Performance page
#: Where the quick benchmarks write the Performance page's generated content (git-ignored; book/performance.md
#: includes results.md from there).
PERFORMANCE_DIR = REPO / "book" / "_generated" / "performance"
GPU_BUDGET_DIR = REPO / "book" / "_generated" / "gpu_budget"


def _generate(args: list[str], out_dir: Path, expected: str, what: str) -> float:
    """Run ``python <args> --out out_dir`` from a clean ``out_dir``; it must write ``expected`` there. Returns the
    seconds it took; a failure stops the build, naming ``what`` the output is for.
    """
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [sys.executable, *args, "--out", str(out_dir)]
    say(f"==> {what}: " + " ".join(["python", *cmd[1:]]))
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=REPO).returncode
    if rc != 0 or not (out_dir / expected).is_file():
        fail(f"python {' '.join(args)} exited with status {rc} ({what})")
    return time.perf_counter() - t0


def generate_performance() -> float:
    """Run the quick variants of the fair benchmarks (``benchmarks/report.py --quick``) into :data:`PERFORMANCE_DIR`.

    Returns the seconds it took (budget: 2 min on 2 cores). A failure stops the build.
    """
    return _generate([str(REPO / "benchmarks" / "report.py"), "--quick"], PERFORMANCE_DIR, "results.md",
                     "the Performance page's content")


def generate_gpu_budget() -> float:
    """Write the Colab page's per-chapter GPU-time table (:mod:`mmlib.reporting.gpu_budget`) into
    :data:`GPU_BUDGET_DIR`: FLOPs counted on the real architectures at random weights, decoding timed here. Returns
    the seconds it took; a failure stops the build.
    """
    return _generate(["-m", "mmlib.reporting.gpu_budget"], GPU_BUDGET_DIR, "gpu_budget.md",
                     "the Colab page's GPU-time table")


# --------------------------------------------------------------------------- step 2: jupyter-book
# `jupyter-book` without an entry-point script (this interpreter's environment, wherever it is). Unlike
# sphinx-build, Jupyter Book colours its log even when it goes to a file: turn that off unless on a terminal.
JB = (
    "import sys; from sphinx.util.console import color_terminal, nocolor\n"
    "if not color_terminal(): nocolor()\n"
    "from jupyter_book.cli.main import main; sys.argv[0] = 'jupyter-book'; main()"
)


def build_html(nitpicky: bool) -> None:
    cmd = [sys.executable, "-c", JB, "build", str(REPO), "--all", "-W", "--keep-going"]
    if nitpicky:
        cmd.append("-n")
    say("==> " + " ".join(["jupyter-book", *cmd[3:]]))
    rc = subprocess.run(cmd, cwd=REPO).returncode
    if rc != 0:
        fail(f"jupyter-book build exited with status {rc} (warnings are errors: see the messages above)")


# --------------------------------------------------------------------------- step 3: checks
EXTERNAL = re.compile(
    r"<(?:script[^>]*\ssrc|link[^>]*\shref|img[^>]*\ssrc|iframe[^>]*\ssrc)\s*=\s*[\"']((?:https?:)?//[^\"']+)",
    re.IGNORECASE,
)


def check_html() -> None:
    html = BUILD / "html"
    problems: list[str] = []
    for doc in toc_files():
        if not (html / f"{doc}.html").is_file():
            problems.append(f"missing page {doc}.html")
    for page in sorted(html.rglob("*.html")):
        text = page.read_text(encoding="utf8", errors="replace")
        rel = page.relative_to(html)
        for m in EXTERNAL.finditer(text):
            tag = m.group(0)
            loads = re.search(r"rel=[\"'](?:stylesheet|preload|modulepreload|icon)", tag)
            if tag.lower().startswith("<link") and not loads:
                continue  # ordinary hyperlinks in <link rel="next"> etc. load nothing
            problems.append(f"{rel}: loads {m.group(1)} from the network")
        if 'class="math' in text and "_static/mathjax/tex-mml-chtml.js" not in text:
            problems.append(f"{rel}: has formulas but does not load the local MathJax")
    if problems:
        fail("checks of _build/html:\n  " + "\n  ".join(problems))
    say("==> Checks of _build/html passed (all toc pages present, local MathJax, no network loads)")


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="tiny", help='papermill parameter `profile` (default "tiny")')
    p.add_argument("--no-execute", action="store_true", help="render the existing executed copies only")
    p.add_argument("--keep-build", action="store_true", help="do not remove _build/ first")
    p.add_argument("--no-nitpicky", action="store_true", help="build without -n")
    p.add_argument("--log-output", action="store_true", help="stream the notebooks' outputs while executing")
    p.add_argument("--cell-timeout", type=int, default=None, help="papermill per-cell timeout in seconds")
    p.add_argument("--jobs", type=int, default=2, help="notebooks executed at a time (default 2, one per core here)")
    p.add_argument("--compare-claims", metavar="JSON", default=None,
                   help="fail unless this run's claims table equals this earlier _build/claims.json")
    args = p.parse_args(argv)

    os.chdir(REPO)
    t_start = time.perf_counter()
    kernel_env(args.profile)
    names = toc_notebooks()
    say(f"==> Book at {REPO}; python {sys.executable}; chapters: {', '.join(names) or '(none)'}")

    times: dict[str, float] = {}
    if args.no_execute:
        missing = [n for n in names if not (REPO / EXECUTED_DIR / f"{n}.ipynb").is_file()]
        if missing:
            fail("--no-execute, but no executed copy of: " + ", ".join(missing))
        for n in names:
            hide_duplicate_parameters(REPO / EXECUTED_DIR / f"{n}.ipynb")
    else:
        check_kernel()
        times = execute(names, args.profile, args.log_output, args.cell_timeout, jobs=args.jobs)
    t_exec = time.perf_counter() - t_start
    check_prose(names)

    if not args.keep_build:
        shutil.rmtree(BUILD, ignore_errors=True)
    t_perf = generate_performance()
    t_gpu = generate_gpu_budget()
    t0 = time.perf_counter()
    build_html(nitpicky=not args.no_nitpicky)
    t_build = time.perf_counter() - t0
    check_html()

    total = time.perf_counter() - t_start
    say()
    say("==> Timings")
    for name, t in times.items():
        say(f"    {name:<40} {t:8.1f} s")
    say(f"    {'notebook execution (all)':<40} {t_exec:8.1f} s")
    say(f"    {'performance benchmarks (quick)':<40} {t_perf:8.1f} s")
    say(f"    {'GPU-time table (Colab page)':<40} {t_gpu:8.1f} s")
    say(f"    {'jupyter-book build':<40} {t_build:8.1f} s")
    say(f"    {'total':<40} {total:8.1f} s")
    (BUILD / "timings.json").write_text(
        json.dumps(
            {"profile": args.profile, "notebooks_s": times, "execute_s": t_exec, "performance_s": t_perf,
             "gpu_budget_s": t_gpu, "build_s": t_build, "total_s": total},
            indent=2,
        )
    )
    if not args.no_execute:
        write_claims(args.profile)
        if args.compare_claims:
            compare_claims(Path(args.compare_claims))
    say(f"==> Book built: {(BUILD / 'html' / 'index.html').relative_to(REPO)}")
    return 0


# --------------------------------------------------------------------------- the claims of this run
def write_claims(profile: str) -> None:
    """Write this run's claims table (claim, chapter, verdict, evidence) to :data:`CLAIMS_FILE`."""
    sys.path.insert(0, str(REPO))
    from mmlib.reporting.claims import claims_table

    table = claims_table(profile)[["claim", "chapter", "verdict", "evidence"]]
    CLAIMS_FILE.write_text(json.dumps({"profile": profile, "claims": table.to_dict(orient="records")}, indent=2,
                                      ensure_ascii=False) + "\n")
    say(f"==> Claims table of this run: {CLAIMS_FILE.relative_to(REPO)}")


def compare_claims(other: Path) -> None:
    """Fail unless this run's claims table equals ``other`` (a :data:`CLAIMS_FILE` of an earlier run)."""
    if not other.is_file():
        fail(f"--compare-claims {other}: no such file (copy _build/claims.json of an earlier build there)")
    mine, theirs = json.loads(CLAIMS_FILE.read_text()), json.loads(other.read_text())
    diffs = [f"  {a['claim']}: {a['verdict']!r} / {a['evidence']!r}\n   vs {b['verdict']!r} / {b['evidence']!r}"
             for a, b in zip(mine["claims"], theirs["claims"]) if a != b]
    if len(mine["claims"]) != len(theirs["claims"]) or diffs:
        fail(f"the claims table differs from {other}:\n" + "\n".join(diffs))
    say(f"==> Claims table identical to {other} ({len(mine['claims'])} claims)")


if __name__ == "__main__":
    sys.exit(main())
