"""The feature-map store: load a saved map by its recorded kind, and train-or-load maps through the artifact store.

:data:`KINDS` is the registry of the three kinds (``raw``, ``sae``, ``ncl``): the map class, its config class and
its training function, as plain imports. :func:`load_feature_map` reads a map written by
:meth:`~mmlib.feature_maps.base.FeatureMap.save` (one safetensors file) or an artifact folder and dispatches on
the recorded kind; :func:`load_or_train_feature_map` keys a trained map on everything that determines its bytes
(kind, config, training data, the code that trains it, the torch thread count and the device type).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open

from mmlib.core.artifacts import (
    META_FILE,
    TENSORS_FILE,
    CorruptArtifactError,
    code_version,
    load_artifact,
    load_or_compute,
    read_tensors,
    stable_hash,
)
from mmlib.core.devices import effective_threads, resolve_device
from mmlib.core.errors import InputError
from mmlib.feature_maps.base import (
    CHECKSUM_KEY,
    FORMAT,
    ArgumentTypeError,
    FeatureMap,
    FeatureMapNotFoundError,
    Source,
    as_path,
    check_pairs,
    feature_map_checksum,
    source_of,
)
from mmlib.feature_maps.ncl import NCLConfig, NCLMap, train_ncl
from mmlib.feature_maps.raw import RawConfig, RawDims
from mmlib.feature_maps.sae import SAEConfig, SAEMap, train_sae

ARTIFACT_KIND = "feature_maps"


class Kind(NamedTuple):
    """One kind of feature map: its class, its config class and its trainer (``None``: needs no training)."""

    map_class: type[FeatureMap]
    config_class: type
    train: Callable[..., tuple[FeatureMap, dict[str, list[float]]]] | None


#: kind -> its classes and trainer.
KINDS: dict[str, Kind] = {
    "raw": Kind(RawDims, RawConfig, None),
    "sae": Kind(SAEMap, SAEConfig, train_sae),
    "ncl": Kind(NCLMap, NCLConfig, train_ncl),
}


def kind_of(kind: str) -> Kind:
    """The registry entry of ``kind`` (:class:`InputError` naming the known kinds otherwise)."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise InputError(f"unknown feature map kind {kind!r}: expected one of {sorted(KINDS)}")
    return KINDS[kind]


def _check_format(config: Any, origin: str) -> str:
    """The kind recorded in ``config``; :class:`InputError` if it is not a feature map's config or of unknown kind."""
    if not isinstance(config, Mapping) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, Mapping) else None
        raise InputError(f"{origin} is not a feature map written by mmlib.feature_maps (format {found!r}, expected "
                         f"{FORMAT!r}): pass a file written by FeatureMap.save or a folder of "
                         "load_or_train_feature_map")
    kind = config.get("kind")
    if kind not in KINDS:
        raise InputError(f"{origin} holds a feature map of unknown kind {kind!r} (known: {sorted(KINDS)}): it was "
                         "written by another version of mmlib; retrain it with this one")
    return kind


def _map_from_parts(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], origin: str) -> FeatureMap:
    kind = _check_format(config, origin)
    try:
        fmap = KINDS[kind].map_class.from_state(tensors, config)
        fmap.hparams = dict(config.get("hparams", {}))
        fmap.source = Source(**config.get("source", {}))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # ConfigError / InputError are ValueErrors
        raise CorruptArtifactError(f"{origin} records a {kind} feature map that cannot be rebuilt "
                                   f"({type(err).__name__}: {err}): its tensors do not match its config; re-save the "
                                   "map from its source or retrain it") from err
    return fmap


def load_feature_map(path: str | Path, allow_unchecked: bool = False) -> FeatureMap:
    """Load a map written by :meth:`FeatureMap.save` (a file) or by :func:`load_or_train_feature_map`
    (an artifact folder), dispatching on its recorded kind.

    A file's config and tensors are verified against the SHA-256 recorded in its header on save.

    Parameters
    ----------
    path : str or Path
    allow_unchecked : bool
        Load a file that records no checksum (saved before checksums were recorded), with a warning, e.g. to
        re-save it: ``load_feature_map(path, allow_unchecked=True).save(path)``. Refused by default.

    Raises
    ------
    FeatureMapNotFoundError
        (a ``FileNotFoundError``) if nothing is there.
    InputError
        if ``path`` is a directory that is no artifact folder, or the file is not a feature map or of an unknown
        kind.
    mmlib.core.artifacts.CorruptArtifactError
        if the file cannot be read back intact: not a safetensors file, truncated, edited after saving (checksum
        mismatch), or without a checksum.
    """
    path = as_path(path, "path")
    if path.is_dir():
        if not (path / META_FILE).exists() and not (path / TENSORS_FILE).exists():
            raise InputError(f"{path} is a directory, not a feature map: pass the .safetensors file written by "
                             "FeatureMap.save, or an artifact folder written by load_or_train_feature_map (it holds "
                             f"{META_FILE} and {TENSORS_FILE})")
        art = load_artifact(path.parent.name, path.name, path.parent.parent)
        return _map_from_parts(art.tensors, art.meta.get("feature_map", {}), str(path))
    if not path.exists():
        raise FeatureMapNotFoundError(f"no feature map at {path}: check the path (save a map there with "
                                      "FeatureMap.save)")
    if not path.is_file():
        raise InputError(f"{path} is not a regular file: pass the .safetensors file written by FeatureMap.save")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CorruptArtifactError(f"{path} is not a readable safetensors file ({err}): it is truncated, damaged or "
                                   "not a feature map; re-save the map from its source or retrain it") from err
    tensors = read_tensors(path)
    raw = header.get("config")
    recorded = header.get(CHECKSUM_KEY)
    if recorded is not None and (not isinstance(raw, str) or feature_map_checksum(raw, tensors) != recorded):
        raise CorruptArtifactError(f"{path} does not match the checksum recorded when it was saved: its tensors or "
                                   "its config changed on disk since; re-save the map from its source or retrain it")
    try:
        config = json.loads(raw) if isinstance(raw, str) else {}
    except json.JSONDecodeError as err:
        raise CorruptArtifactError(f"{path} has an unreadable feature-map config ({err}): re-save the map from its "
                                   "source or retrain it") from err
    if recorded is None:
        _check_format(config, str(path))
        if not allow_unchecked:
            raise CorruptArtifactError(f"{path} records no checksum: it was saved before mmlib recorded checksums, "
                                       "or its header was edited. Retrain it, or, if you trust the file, re-save it "
                                       "with load_feature_map(path, allow_unchecked=True).save(path)")
        warnings.warn(f"{path} records no checksum and was loaded unverified; re-save it with FeatureMap.save",
                      RuntimeWarning, stacklevel=2)
    return _map_from_parts(tensors, config, str(path))


@dataclasses.dataclass(frozen=True)
class TrainedFeatureMap:
    """A feature map from the artifact store, with its training history.

    Attributes
    ----------
    fmap : FeatureMap
    history : dict of str to list of float
        Logged training curves (empty for raw dims).
    seconds : float
        Training time when it was computed.
    key : str
    path : Path
        The artifact folder (loadable with :func:`load_feature_map`).
    """

    fmap: FeatureMap
    history: dict[str, list[float]]
    seconds: float
    key: str
    path: Path


def _data_key(embeddings: Any) -> str:
    key = getattr(embeddings, "key", None)
    if key is not None:
        return str(key)
    src = source_of(embeddings)
    if src.embeddings_key is None:
        raise ArgumentTypeError("load_or_train_feature_map needs Embeddings or an (image, text) pair of tensors "
                        "(a stream has no fingerprint to key the artifact on)")
    return src.embeddings_key


def feature_map_key(kind: str, config: Any, embeddings: Any, threads: int | None = 1,
                    device: str | torch.device = "cpu") -> str:
    """Artifact key: kind, config, the embeddings' key (or tensor fingerprint), the code that trains the map
    (:func:`~mmlib.core.artifacts.code_version`), and, for trained kinds, the device type and the effective torch
    thread count (on the CPU, 1 and 2 threads give different bytes after a few dozen steps).
    """
    entry = kind_of(kind)
    runtime = None
    if entry.train is not None:
        dev = resolve_device(device)
        runtime = {"device": dev.type, "threads": effective_threads(threads) if dev.type == "cpu" else None}
    return stable_hash("feature_map", kind, config, _data_key(embeddings), runtime,
                       code_version(__name__), code_version(entry.map_class.__module__))


def load_or_train_feature_map(kind: str, config: Any, embeddings: Any, root: Path | None = None,
                              progress: bool = True, threads: int | None = 1,
                              device: str | torch.device = "cpu") -> TrainedFeatureMap:
    """The feature map of ``kind`` with ``config`` trained on ``embeddings``: loaded from the artifact store,
    or trained and stored when missing (or corrupt).

    Parameters
    ----------
    kind : {"raw", "sae", "ncl"}
    config : RawConfig, mmlib.feature_maps.sae.SAEConfig or mmlib.feature_maps.ncl.NCLConfig
        Must match ``kind``.
    embeddings : Embeddings or (image (n, d), text (n, d))
        Training pairs (the artifact key uses their key or fingerprint).
    root : Path, optional
        Artifact root (default :func:`mmlib.core.paths.artifacts_dir`).
    progress : bool
        Show the training progress bar.
    threads : int or None
        torch CPU threads while training (``None``: torch's setting). The effective count is part of the key
        (training on the CPU is bit-identical for a fixed count only).
    device : str
        Where to train (``"cpu"``, ``"cuda"``, ``"auto"``); its type is part of the key. Training is deterministic
        on the CPU only.
    """
    entry = kind_of(kind)
    if not isinstance(config, entry.config_class):
        raise ArgumentTypeError(f"kind {kind!r} needs a {entry.config_class.__name__}, got {type(config).__name__}")
    check_pairs(embeddings, what="embeddings")  # 2-D, aligned, finite: before keying or training on them
    key = feature_map_key(kind, config, embeddings, threads, device)
    train = entry.train

    def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        started = time.perf_counter()
        if train is None:
            image = embeddings.image if hasattr(embeddings, "image") else embeddings[0]
            fmap: FeatureMap = RawDims(int(image.shape[1]), config, source=source_of(embeddings))
            history: dict[str, list[float]] = {}
        else:
            fmap, history = train(embeddings, config, progress=progress, threads=threads, device=device)
        return fmap.state_tensors(), {"feature_map": fmap.config(), "history": history,
                                      "seconds": round(time.perf_counter() - started, 3)}

    art = load_or_compute(ARTIFACT_KIND, key, compute, root)
    fmap = _map_from_parts(art.tensors, art.meta["feature_map"], str(art.path))
    return TrainedFeatureMap(fmap=fmap, history={k: list(v) for k, v in art.meta.get("history", {}).items()},
                             seconds=float(art.meta.get("seconds", 0.0)), key=key, path=art.path)
