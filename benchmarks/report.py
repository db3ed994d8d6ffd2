"""Run the four fair comparisons (:mod:`fair`) and write the Performance page's generated content.

Usage::

    python benchmarks/report.py --quick --out book/_generated/performance   # what book/build.py runs (<= 2 min)
    python benchmarks/report.py --out _build/bench                           # the full variants (make bench)

Writes into ``--out``: ``results.md`` (MyST Markdown included by ``book/performance.md``: the ratio table, other
measurements, the scaling tables and their figures), one PNG per scaling table and ``results.json`` (every number).
Every number on the page comes from this run; none is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_embed  # noqa: E402
import bench_mds  # noqa: E402
import bench_sae  # noqa: E402
import bench_splice  # noqa: E402

#: The benchmark modules, in the order of the ratio table.
MODULES = {"extraction": bench_embed, "sae": bench_sae, "mds": bench_mds, "splice": bench_splice}


def run_all(quick: bool, sizes: dict[str, Any] | None = None, log: Callable[[str], None] = print
            ) -> dict[str, Any]:
    """Every benchmark's ``run`` (``sizes[name]`` overrides the quick / full sizes); their rows merged."""
    ratios, tables, other, seconds = [], {}, [], {}
    for name, module in MODULES.items():
        chosen = (sizes or {}).get(name) or (module.Sizes.quick() if quick else module.Sizes())
        started = time.perf_counter()
        out = module.run(chosen, log=log)
        seconds[name] = time.perf_counter() - started
        ratios += out["ratios"]
        tables.update(out["tables"])
        other += out["other"]
    for row in ratios:
        if "fvu_ours" in row:
            other.append({"measurement": "SAE FVU ours / overcomplete",
                          "value": f"{row['fvu_ours']:.4f} / {row['fvu_reference']:.4f}",
                          "detail": f"L0 {row['l0_ours']:.1f} / {row['l0_reference']:.1f}; ours within "
                                    f"{bench_sae.FVU_TOLERANCE} (or better): {'yes' if row['fvu_ok'] else 'no'}"})
        if "sklearn_tol" in row:
            other.append({"measurement": f"{row['comparison']}: scikit-learn's fair tol",
                          "value": f"{row['sklearn_tol']:g}",
                          "detail": f"objective within {row['sklearn_gap']:.1e} of tol={bench_splice.TIGHT:g} "
                                    f"(limit {bench_splice.OBJECTIVE_TOLERANCE:g}); our solver's gap "
                                    f"{row['admm_gap']:.1e}; speed-up (median) {row['speedup_median']:.1f}x"})
        if "peak_extra_MiB" in row:
            other.append({"measurement": "MDS: peak extra memory of one pass", "value":
                          f"{row['peak_extra_MiB']:.0f} MiB", "detail": row["anchor"]})
    return {"ratios": ratios, "tables": tables, "other": other, "seconds": seconds, "quick": quick,
            "machine": {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                        "python": platform.python_version(), "platform": platform.platform()}}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    """A Markdown table of ``rows`` with ``columns`` (key -> header)."""
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k in columns) + " |" for r in rows]
    return "\n".join(lines)


def figure(name: str, table: dict[str, Any], out: Path) -> str:
    """A PNG of one scaling table (one panel per y column, log-log); returns its file name."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ys = table["y"]
    groups = [[y] for y in ys] if any(y.endswith("MiB") for y in ys) else [ys]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.2), squeeze=False)
    xs = [r[table["x"]] for r in table["rows"]]
    for ax, group in zip(axes[0], groups):
        for y in group:
            ax.plot(xs, [r[y] for r in table["rows"]], marker="o", label=y)
        ax.set_xscale("log")
        if not any(y.endswith("MiB") for y in group):
            ax.set_yscale("log")
        ax.set_xlabel(table["x"])
        ax.set_ylabel("MiB" if group[0].endswith("MiB") else table.get("ylabel", "seconds"))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


RATIO_COLUMNS = {"comparison": "comparison", "goal": "goal (median ≤)", "anchor": "anchor / reference",
                 "ours": "ours", "ratio_min": "min", "ratio_median": "median", "ratio_max": "max",
                 "ours_median_s": "ours (s, median)", "reference_median_s": "reference (s, median)",
                 "pairs": "pairs", "met": "met?"}


def write(results: dict[str, Any], out: Path, total_s: float) -> Path:
    """Write ``results.md``, the figures and ``results.json`` into ``out``; returns the Markdown file."""
    out.mkdir(parents=True, exist_ok=True)
    machine = results["machine"]
    variant = "quick" if results["quick"] else "full"
    parts = [
        "## Ratios ours / reference",
        "",
        f"The {variant} variant, measured while this page was built: {machine['cpus']} CPUs, load average "
        f"{_fmt(machine['load_1min'])} at the end of the run, generation took {total_s:.0f} s. The ratio is "
        "ours / reference per interleaved pair; the goal is met when its median is at most the goal.",
        "",
        markdown_table(results["ratios"], RATIO_COLUMNS),
        "",
        "## Other measurements",
        "",
        markdown_table(results["other"], {"measurement": "measurement", "value": "value", "detail": "detail"}),
        "",
        "## Scaling",
    ]
    for name, table in results["tables"].items():
        columns = {table["x"]: table["x"], **{y: y for y in table["y"]}}
        columns.update({k: k for k in table["rows"][0] if k not in columns})
        png = figure(name, table, out)
        parts += ["", f"### {table['title']}", "", markdown_table(table["rows"], columns), "",
                  f"![{table['title']}]({png})", ""]
    md = out / "results.md"
    md.write_text("\n".join(parts) + "\n", encoding="utf8")
    (out / "results.json").write_text(json.dumps({**results, "total_s": total_s}, indent=2, default=str) + "\n",
                                      encoding="utf8")
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the book's quick variants (<= 2 min on 2 cores)")
    parser.add_argument("--out", type=Path, default=Path("_build/bench"), help="output folder")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = run_all(args.quick)
    total = time.perf_counter() - started
    md = write(results, args.out, total)
    print(f"==> {len(results['ratios'])} comparisons in {total:.1f} s "
          f"({', '.join(f'{k} {v:.1f} s' for k, v in results['seconds'].items())}); wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
