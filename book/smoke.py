"""The ``paper`` profile's smoke run: every chapter on the real architecture at random weights and a small corpus in the
real formats, offline, on a CPU.

The ``paper`` profile's code paths (open_clip ``ViT-B-32``, CSV and webdataset corpora, CelebA's layout, a user's
word list) cannot run here with the real weights and data, so this run checks that they *run*: nothing stops with a
``NotImplementedError``, a tiny-world assumption or a missing parameter. It

1. writes a small generated corpus in the real formats (``mmlib smoke-data``: :mod:`mmlib.data.smoke`) and a settings
   file of profile overrides (``pretrained = "random"``: :data:`mmlib.models.clip.RANDOM_WEIGHTS`, small sizes), and
   a tiny random unCLIP pipeline for chapter 08 (:func:`mmlib.case_studies.t2i.unclip.save_tiny_random_unclip`);
2. executes every chapter of ``_toc.yml`` with papermill, ``profile="paper"``, ``settings=<that file>`` and the data
   parameters each chapter declares (``pairs``, ``celeba_root``, ``vocabulary_file``, ...), into
   ``_build/smoke/executed/`` with its own artifact root ``_build/smoke/artifacts/``;
3. prints a table (chapter, status, seconds, the error's last line) and writes it to ``_build/smoke/summary.md``.

The verdicts of a random-weight model mean nothing and are recorded under ``claims/paper`` of the smoke artifact root
only. Exit status 1 if any chapter failed.

Usage: ``python book/smoke.py [--only 00_world_and_models ...] [--keep-going] [--cell-timeout S]``; with
``--prepare DIR`` it only writes the data and the parameterised chapters into ``DIR`` for nbval (``make test`` runs
them that way, two at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build  # noqa: E402  (book/build.py: the toc, the kernel's environment and check)

REPO = build.REPO
OUT = REPO / "_build" / "smoke"

#: Profile overrides of the smoke run: random weights and every expensive size small (see mmlib.profiles).
SMOKE_SETTINGS = {
    "pretrained": "random",
    "device": "cpu",
    "embed_batch_size": 16,
    "map_seeds": [0, 1, 2],
    "world": {"n_test": 48, "image_size": 64},
    "sae": {"K": 256, "epochs": 2},
    "ncl": {"K": 256, "epochs": 2},
}


#: The chapters' size parameters in the smoke run (each must be declared by some chapter's parameters cell: a name
#: no chapter declares would be dropped silently, so tests/test_smoke_parameters.py checks them).
SMOKE_SIZES = {"celeba_limit": 24, "n_eval": 6, "pgd_steps": 2, "n_random": 20, "defence_steps": 1, "defence_batch": 2,
               "n_def_train": 16, "n_xm": 6, "xm_steps": 2, "n_audit": 32, "n_ref": 4, "sampling_steps": 2,
               "n_images": 16,
               "unclip_clip": "ViT-B-32/random"}


def prepare(folder: Path, n: int) -> dict[str, str]:
    """Write the smoke data and settings under ``folder``; returns the chapter parameters they provide."""
    from mmlib.case_studies.t2i.unclip import save_tiny_random_unclip
    from mmlib.data.smoke import SmokeConfig, write_smoke_data

    data = write_smoke_data(folder / "data", SmokeConfig(n=n, image_size=64, shard_size=16))
    # conditioned on ViT-B-32's 512-d embeddings; 16 px images, the resolution chapter 08's probes read
    unclip = save_tiny_random_unclip(folder / "unclip", embed_dim=512, image_size=16)
    settings = {**SMOKE_SETTINGS, "pairs": data.shards}
    (folder / "settings.json").write_text(json.dumps(settings, indent=1), encoding="utf-8")
    return {"profile": "paper", "settings": str(folder / "settings.json"), "pairs": str(data.csv),
            "celeba_root": str(data.celeba_root), "vocabulary_file": str(data.vocabulary_file),
            "unclip": str(unclip), **SMOKE_SIZES}


def run_chapter(name: str, parameters: dict, cell_timeout: int | None) -> tuple[str, float, str]:
    """Execute one chapter with the parameters it declares; returns ``(status, seconds, last error line)``."""
    import papermill as pm

    src = REPO / build.SOURCE_DIR / f"{name}.ipynb"
    declared = set(pm.inspect_notebook(str(src)))
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(src), str(OUT / "executed" / f"{name}.ipynb"),
                            parameters={k: v for k, v in parameters.items() if k in declared},
                            kernel_name=build.KERNEL, cwd=str(REPO), progress_bar=False, log_output=False,
                            execution_timeout=cell_timeout, extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except Exception as err:  # noqa: BLE001 - the table reports every failure, the run goes on with --keep-going
        evalue = getattr(err, "evalue", None) or str(err)
        line = f"{getattr(err, 'ename', type(err).__name__)}: {evalue}".strip().splitlines()[0]
        return "failed", time.perf_counter() - t0, line[:300]
    return "ok", time.perf_counter() - t0, ""


def prepare_notebooks(folder: Path, names: list[str], parameters: dict) -> list[Path]:
    """Write each chapter with its smoke parameters injected (papermill ``prepare_only``: nothing is executed) into
    ``folder``, for ``pytest --nbval-lax`` to execute (``make test``); returns the written paths.
    """
    import papermill as pm

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        src, dst = REPO / build.SOURCE_DIR / f"{name}.ipynb", folder / f"{name}.ipynb"
        declared = set(pm.inspect_notebook(str(src)))
        pm.execute_notebook(str(src), str(dst), parameters={k: v for k, v in parameters.items() if k in declared},
                            prepare_only=True, kernel_name=build.KERNEL, progress_bar=False)
        written.append(dst)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="chapters to run (default: every chapter of _toc.yml)")
    parser.add_argument("--keep-going", action="store_true", help="run every chapter even after a failure")
    parser.add_argument("--cell-timeout", type=int, default=None, help="papermill per-cell timeout in seconds")
    parser.add_argument("--pairs", type=int, default=64, help="pairs of the smoke corpus (default 64)")
    parser.add_argument("--prepare", metavar="DIR", type=Path, default=None,
                        help="only write the smoke data and the chapters with their parameters injected into DIR "
                             "(DIR/notebooks/), for nbval to execute with MMLIB_ARTIFACTS=DIR/artifacts")
    args = parser.parse_args(argv)
    names = args.only or build.toc_notebooks()
    if args.prepare is not None:
        folder = args.prepare.resolve()
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        written = prepare_notebooks(folder / "notebooks", names, prepare(folder, args.pairs))
        build.say(f"==> {len(written)} chapters with the smoke parameters in {folder / 'notebooks'}; run them with "
                  f"MMLIB_ARTIFACTS={folder / 'artifacts'} pytest --nbval-lax --nbval-current-env "
                  f"{folder / 'notebooks'}/*.ipynb")
        return 0
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "executed").mkdir(parents=True)
    os.environ["MMLIB_ARTIFACTS"] = str(OUT / "artifacts")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # random weights need no download: fail fast on one
        os.environ[var] = "1"
    build.kernel_env("paper")
    build.check_kernel()
    parameters = prepare(OUT, args.pairs)
    rows, started = [], time.perf_counter()
    for i, name in enumerate(names, 1):
        build.say(f"--> [{i}/{len(names)}] {name} (profile paper, random weights)")
        status, seconds, error = run_chapter(name, parameters, args.cell_timeout)
        rows.append((name, status, seconds, error))
        build.say(f"    {status} in {seconds:.1f} s" + (f": {error}" if error else ""))
        if status != "ok" and not args.keep_going:
            break
    table = ["| chapter | status | seconds | error |", "|---|---|---|---|"]
    table += [f"| {n} | {s} | {t:.1f} | {e.replace('|', '/')} |" for n, s, t, e in rows]
    table.append(f"\nTotal {time.perf_counter() - started:.0f} s; {sum(r[1] == 'ok' for r in rows)} of "
                 f"{len(names)} chapters ran on the paper profile at random weights.")
    (OUT / "summary.md").write_text("\n".join(table) + "\n", encoding="utf-8")
    build.say("\n".join(table))
    return 0 if all(r[1] == "ok" for r in rows) and len(rows) == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
