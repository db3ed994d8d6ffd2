"""Layer 0, the ground floor: where things live, how results are stored, and small shared statistics.

Modules: ``paths`` (locations resolved from the package), ``artifacts`` (the content-keyed artifact store:
safetensors + JSON, atomic writes, verified on load; :func:`code_version` of producing code), ``imports`` (mmlib's
static import graph, for code versions and the layer test), ``devices`` (device resolution, scoped torch threads),
``stats`` (bootstrap and t-intervals, Wilson intervals, reading interval tables).

Imports nothing from mmlib outside ``core``.
"""


from mmlib.core.artifacts import (
    CorruptArtifactError,
    code_version,
    load_artifact,
    load_or_compute,
    save_artifact,
    stable_hash,
)
from mmlib.core.devices import effective_threads, resolve_device, torch_threads
from mmlib.core.paths import REPO_ROOT, artifacts_dir
from mmlib.core.stats import (
    across_seeds,
    bootstrap_ci,
    ci_row,
    finite_mean,
    format_ci,
    interval_side,
    mean_bootstrap_ci,
    proportion_ci,
)

__all__ = [
    "CorruptArtifactError", "REPO_ROOT", "across_seeds", "artifacts_dir", "bootstrap_ci", "ci_row",
    "code_version", "effective_threads", "finite_mean", "format_ci", "interval_side", "load_artifact",
    "load_or_compute", "mean_bootstrap_ci", "proportion_ci", "resolve_device", "save_artifact", "stable_hash",
    "torch_threads",
]
