"""Layer 0, the ground floor: where things live, how results are stored, and small shared statistics.

Modules: ``errors`` (the project's error types), ``validation`` (finite tensors, typed and ranged config fields),
``paths`` (locations resolved from the package), ``artifacts`` (the content-keyed artifact store: safetensors +
JSON, atomic writes, verified on load, stale temporaries cleaned; :func:`code_version` of producing code),
``imports`` (mmlib's static import graph, for code versions and the layer test),
``devices`` (device resolution, scoped torch threads),
``stats`` (bootstrap and t-intervals, Wilson intervals, reading interval tables).

Imports nothing from mmlib outside ``core``.
"""


from mmlib.core.artifacts import (
    code_version,
    ensure_artifact_root,
    load_artifact,
    load_or_compute,
    remove_stale_temporaries,
    save_artifact,
    stable_hash,
)
from mmlib.core.devices import effective_threads, resolve_device, torch_threads
from mmlib.core.errors import (
    ArtifactMismatchError,
    ArtifactRootError,
    ConfigError,
    CorruptArtifactError,
    InputError,
    MmlibError,
    NonFiniteError,
)
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
from mmlib.core.validation import check_finite, check_nonnegative, validate_config

__all__ = [
    "ArtifactMismatchError", "ArtifactRootError", "ConfigError", "CorruptArtifactError", "InputError",
    "MmlibError", "NonFiniteError", "check_finite", "check_nonnegative", "ensure_artifact_root",
    "remove_stale_temporaries", "validate_config", "REPO_ROOT", "across_seeds", "artifacts_dir", "bootstrap_ci",
    "ci_row", "code_version", "effective_threads", "finite_mean", "format_ci", "interval_side", "load_artifact",
    "load_or_compute", "mean_bootstrap_ci", "proportion_ci", "resolve_device", "save_artifact", "stable_hash",
    "torch_threads",
]
