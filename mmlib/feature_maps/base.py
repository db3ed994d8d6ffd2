"""Monosemantic feature maps ``g``: the common interface, raw CLIP dimensions, storage and training data.

A feature map turns joint-space embeddings ``z`` ``(n, d)`` of either modality into non-negative
activations ``h = g(z)`` ``(n, K)``; the MDS, the categories and every later chapter work on these
activations, whatever the map. Three kinds exist (PAPER.md §2):

* :class:`RawDims` (kind ``"raw"``, this module): the ``d`` CLIP dimensions themselves, activation
  ``|z|`` (default) or ``ReLU(z)``. No decoder: it is not an autoencoder and the sign of ``z`` is lost.
* :class:`mmlib.feature_maps.sae.SAEMap` (kind ``"sae"``): a multimodal sparse autoencoder, with a decoder.
* :class:`mmlib.feature_maps.ncl.NCLMap` (kind ``"ncl"``): a non-negative contrastive head, without a decoder.

Every map records its hyper-parameters (``hparams``) and its :class:`Source`, the identity of the model
whose embeddings it was trained on, so that :func:`check_source` refuses a map trained on another model's
embeddings. :meth:`FeatureMap.save` writes one safetensors file whose header holds the JSON config (one
atomic write, no pickle); :func:`load_feature_map` reads it back, or an artifact folder written by
:func:`load_or_train_feature_map`, and dispatches on the recorded kind.

Training data for the trainable maps is given as a :data:`PairData` and streamed in chunks by
:func:`pair_chunks`, so memory does not grow with the corpus.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import importlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from mmlib.core.artifacts import (CorruptArtifactError, load_artifact, load_or_compute, module_version, read_tensors,
                             stable_hash, tensor_fingerprint, to_jsonable, write_tensors_atomic)

__all__ = ["MODALITIES", "Modality", "Source", "FeatureMap", "RawConfig", "RawDims", "SourceMismatchError",
           "check_modality", "check_embeddings", "check_source", "source_of", "PairData", "pair_chunks",
           "DataStats", "data_stats", "training_data", "iterate_batches", "torch_threads", "training_device",
           "check_schedule", "linear_decay_lr", "Liveness",
           "History", "load_feature_map", "TrainedFeatureMap",
           "feature_map_key", "load_or_train_feature_map"]

Modality = Literal["image", "text"]
#: The two modalities, in the order used by every stacked tensor ``(2, ...)`` of this package.
MODALITIES: tuple[str, str] = ("image", "text")

#: Identifies a safetensors file written by :meth:`FeatureMap.save` (the header key holding the config).
FORMAT = "mmlib.feature_map/1"
ARTIFACT_KIND = "feature_maps"

#: kind -> (module, map class, config class, train function or ``None`` for maps that need no training).
_KINDS: dict[str, tuple[str, str, str, str | None]] = {
    "raw": ("mmlib.feature_maps.base", "RawDims", "RawConfig", None),
    "sae": ("mmlib.feature_maps.sae", "SAEMap", "SAEConfig", "train_sae"),
    "ncl": ("mmlib.feature_maps.ncl", "NCLMap", "NCLConfig", "train_ncl"),
}


class SourceMismatchError(ValueError):
    """A feature map is applied to embeddings of another model than the one it was trained on."""


# ------------------------------------------------------------------------------------------- input checks

def check_modality(modality: str) -> str:
    """Return ``modality`` if it is ``"image"`` or ``"text"``; raise ``ValueError`` otherwise."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}: expected 'image' or 'text'")
    return modality


def check_embeddings(z: torch.Tensor | np.ndarray, dim: int | None = None, what: str = "embeddings"
                     ) -> torch.Tensor:
    """Validate embeddings ``(n, d)`` and return them as a float32 tensor.

    Parameters
    ----------
    z : (n, d) tensor or array
    dim : int, optional
        The dimension ``d`` they must have (e.g. a map's ``input_dim``).
    what : str
        How to name them in error messages.

    Raises
    ------
    ValueError
        if ``z`` is not 2-D, has another dimension than ``dim`` (the message says expected and got), or
        holds NaN or Inf (the message says in how many rows).
    """
    z = torch.as_tensor(z)
    if z.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (n, d) tensor, got shape {tuple(z.shape)}")
    if dim is not None and z.shape[1] != dim:
        raise ValueError(f"{what} have dimension d={z.shape[1]} but this feature map expects d={dim} "
                         f"(expected {dim}, got {z.shape[1]}): was it trained on another model's embeddings?")
    if not z.is_floating_point():
        z = z.float()
    bad = ~torch.isfinite(z).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()
        raise ValueError(f"{what} contain NaN or Inf in {len(rows)} of {len(z)} rows "
                         f"(first at row {int(rows[0])})")
    return z.float()


# ----------------------------------------------------------------------------------------------- sources

@dataclasses.dataclass(frozen=True)
class Source:
    """What a feature map was trained on.

    Attributes
    ----------
    identity : str or None
        Identity of the model whose embeddings were used (``Embeddings.meta["identity"]``, e.g.
        ``"open_clip:ViT-B-32:openai"``); ``None`` when unknown (plain tensors).
    model : str or None
        The model's display name.
    embeddings_key : str or None
        The artifact key of those embeddings, or a fingerprint of the tensors.
    n : int or None
        Number of training pairs.
    """

    identity: str | None = None
    model: str | None = None
    embeddings_key: str | None = None
    n: int | None = None


def source_of(data: Any) -> Source:
    """The :class:`Source` of training data: read from an :class:`~mmlib.models.embed.Embeddings` (``meta``,
    ``key``), else fingerprinted from an ``(image, text)`` pair of tensors, else unknown."""
    meta, key = getattr(data, "meta", None), getattr(data, "key", None)
    if isinstance(meta, Mapping) and key is not None:
        n = len(data) if hasattr(data, "__len__") else meta.get("n")
        return Source(identity=meta.get("identity"), model=meta.get("model"), embeddings_key=str(key),
                      n=None if n is None else int(n))
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in data):
        image, text = (torch.as_tensor(t) for t in data)
        return Source(embeddings_key=tensor_fingerprint({"image": image, "text": text}), n=int(image.shape[0]))
    return Source()


def _identity_of(expected: Any) -> str:
    if isinstance(expected, str):
        return expected
    identity = getattr(expected, "identity", None)  # a ModelBundle or a Source
    if identity is None and isinstance(getattr(expected, "meta", None), Mapping):  # Embeddings
        identity = expected.meta.get("identity")
    if not isinstance(identity, str):
        raise TypeError(f"cannot read a model identity from {type(expected).__name__}: pass the identity string, "
                        "a ModelBundle or Embeddings")
    return identity


def check_source(fmap: FeatureMap, expected: Any, allow_unknown: bool = False) -> None:
    """Raise :class:`SourceMismatchError` unless ``fmap`` was trained on embeddings of model ``expected``.

    Parameters
    ----------
    fmap : FeatureMap
    expected : str, ModelBundle or Embeddings
        The model identity the embeddings at hand come from (or an object carrying it).
    allow_unknown : bool
        Accept a map that records no source model (trained on plain tensors); refused by default.
    """
    want = _identity_of(expected)
    have = fmap.source.identity
    if have is None:
        if allow_unknown:
            return
        raise SourceMismatchError(f"{fmap.name} records no source model, so it cannot be checked against "
                                  f"{want!r}; train it on Embeddings (or pass allow_unknown=True)")
    if have != want:
        raise SourceMismatchError(f"{fmap.name} was trained on embeddings of model {have!r} "
                                  f"(model name {fmap.source.model!r}, embeddings {fmap.source.embeddings_key}), "
                                  f"not of {want!r}: its features mean nothing for this model; "
                                  "train or load a map for this model")


# ---------------------------------------------------------------------------------------- the interface

class FeatureMap(abc.ABC):
    """A map ``g`` from embeddings ``(n, d)`` of either modality to non-negative activations ``(n, K)``.

    Attributes
    ----------
    kind : str
        ``"raw"``, ``"sae"`` or ``"ncl"`` (what :func:`load_feature_map` dispatches on).
    has_decoder : bool
        Whether :meth:`decode` maps activations back to embeddings.
    input_dim : int
        ``d``.
    n_features : int
        ``K``.
    hparams : dict
        The training configuration (JSON values), recorded with the map.
    source : Source
        What it was trained on.
    """

    kind: ClassVar[str]
    has_decoder: ClassVar[bool] = False

    def __init__(self, input_dim: int, n_features: int, hparams: Mapping[str, Any] | None = None,
                 source: Source | None = None) -> None:
        if input_dim < 1 or n_features < 1:
            raise ValueError(f"input_dim and n_features must be positive, got {input_dim} and {n_features}")
        self.input_dim = int(input_dim)
        self.n_features = int(n_features)
        self.hparams: dict[str, Any] = to_jsonable(dict(hparams or {}))
        self.source = source or Source()

    @property
    def name(self) -> str:
        """A short display name, e.g. ``"sae(K=512)"``."""
        return f"{self.kind}(K={self.n_features})"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(d={self.input_dim}, K={self.n_features}, "
                f"source={self.source.model or self.source.identity!r})")

    # ---- encode / decode
    def encode(self, z: torch.Tensor | np.ndarray, modality: str) -> torch.Tensor:
        """Non-negative activations ``(n, K)`` of embeddings ``z`` ``(n, d)`` of ``modality``.

        Raises
        ------
        ValueError
            for an unknown modality, a dimension other than ``input_dim``, or NaN/Inf rows.
        """
        modality = check_modality(modality)
        z = check_embeddings(z, self.input_dim, f"{modality} embeddings")
        with torch.no_grad():
            return self._encode(z, modality)

    def decode(self, h: torch.Tensor | np.ndarray, modality: str) -> torch.Tensor:
        """Embeddings ``(n, d)`` reconstructed from activations ``h`` ``(n, K)`` of ``modality``.

        Raises
        ------
        NotImplementedError
            for a map without a decoder (``has_decoder`` is False).
        ValueError
            for an unknown modality, a width other than ``n_features``, or NaN/Inf rows.
        """
        if not self.has_decoder:
            raise NotImplementedError(f"{self.name} has no decoder (has_decoder is False): only SAE maps "
                                      "reconstruct embeddings; use its activations directly")
        modality = check_modality(modality)
        h = torch.as_tensor(h)
        if h.ndim == 2 and h.shape[1] != self.n_features:
            raise ValueError(f"activations have {h.shape[1]} features but {self.name} has K={self.n_features} "
                             f"(expected {self.n_features}, got {h.shape[1]})")
        h = check_embeddings(h, self.n_features, f"{modality} activations")
        with torch.no_grad():
            return self._decode(h, modality)

    def reconstruct(self, z: torch.Tensor | np.ndarray, modality: str) -> torch.Tensor:
        """``decode(encode(z))`` ``(n, d)`` (maps with a decoder only)."""
        return self.decode(self.encode(z, modality), modality)

    def activations(self, data: Any, batch_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text activations ``(n, K)`` each, of :class:`~mmlib.models.embed.Embeddings` or an
        ``(image (n, d), text (n, d))`` pair, encoded in batches of ``batch_size`` rows."""
        image, text = (data.image, data.text) if hasattr(data, "image") else data

        def encode_all(z: torch.Tensor, modality: str) -> torch.Tensor:
            parts = [self.encode(z[i:i + batch_size], modality) for i in range(0, len(z), batch_size)]
            return torch.cat(parts) if parts else torch.zeros(0, self.n_features)
        return encode_all(image, "image"), encode_all(text, "text")

    @abc.abstractmethod
    def _encode(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        """Activations ``(n, K)`` of checked float32 embeddings ``(n, d)``."""

    def _decode(self, h: torch.Tensor, modality: str) -> torch.Tensor:
        raise NotImplementedError

    # ---- storage
    @abc.abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The map's tensors (what :meth:`save` writes)."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> FeatureMap:
        """Rebuild a map from :meth:`state_tensors` and :meth:`config`."""

    def config(self) -> dict[str, Any]:
        """The JSON description recorded with the map (kind, shapes, hparams, source, code version)."""
        return {"format": FORMAT, "kind": self.kind, "input_dim": self.input_dim, "n_features": self.n_features,
                "hparams": self.hparams, "source": to_jsonable(self.source),
                "code_version": module_version(sys.modules[type(self).__module__])}

    def save(self, path: str | Path) -> Path:
        """Write the map to one safetensors file (config as JSON in its header), atomically; return the path."""
        path = Path(path)
        write_tensors_atomic(path, self.state_tensors(), {"config": json.dumps(self.config(), sort_keys=True)})
        return path


def _map_from_parts(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], origin: str) -> FeatureMap:
    if config.get("format") != FORMAT:
        raise ValueError(f"{origin} is not a feature map written by mmlib.feature_maps.base (format "
                         f"{config.get('format')!r}, expected {FORMAT!r})")
    kind = config.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"{origin} holds a feature map of unknown kind {kind!r} (known: {sorted(_KINDS)})")
    module, cls_name, _, _ = _KINDS[kind]
    cls = getattr(importlib.import_module(module), cls_name)
    fmap = cls.from_state(tensors, config)
    fmap.hparams = dict(config.get("hparams", {}))
    fmap.source = Source(**config.get("source", {}))
    return fmap


def load_feature_map(path: str | Path) -> FeatureMap:
    """Load a map written by :meth:`FeatureMap.save` (a file) or by :func:`load_or_train_feature_map`
    (an artifact folder), dispatching on its recorded kind.

    Raises
    ------
    FileNotFoundError
        if nothing is there.
    ValueError
        if the file is not a feature map or of an unknown kind.
    mmlib.core.artifacts.CorruptArtifactError
        if the file cannot be read back intact.
    """
    path = Path(path)
    if path.is_dir():
        art = load_artifact(path.parent.name, path.name, path.parent.parent)
        return _map_from_parts(art.tensors, art.meta.get("feature_map", {}), str(path))
    if not path.is_file():
        raise FileNotFoundError(f"no feature map at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CorruptArtifactError(f"{path} is not a readable safetensors file ({err})") from err
    try:
        config = json.loads(header.get("config", "{}"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} has an unreadable feature-map config ({err})") from err
    return _map_from_parts(read_tensors(path), config, str(path))


# ------------------------------------------------------------------------------------------- raw dims

@dataclasses.dataclass(frozen=True)
class RawConfig:
    """Raw CLIP dimensions as features.

    Attributes
    ----------
    activation : {"abs", "relu"}
        ``|z|`` (default: a dimension is "active" for large values of either sign) or ``ReLU(z)``.
    """

    activation: str = "abs"

    def __post_init__(self) -> None:
        if self.activation not in ("abs", "relu"):
            raise ValueError(f"activation must be 'abs' or 'relu', got {self.activation!r}")


class RawDims(FeatureMap):
    """The ``d`` raw embedding dimensions as ``K = d`` features: ``|z|`` (default) or ``ReLU(z)``.

    No decoder (``has_decoder`` is False): ``|z|`` loses the sign and ``ReLU(z)`` the negative part, so
    neither is an autoencoder. Needs no training.
    """

    kind = "raw"
    has_decoder = False

    def __init__(self, input_dim: int, config: RawConfig = RawConfig(), source: Source | None = None) -> None:
        super().__init__(input_dim, input_dim, hparams=to_jsonable(config), source=source)
        self.activation = config.activation

    @property
    def name(self) -> str:
        return f"raw-{self.activation}(K={self.n_features})"

    def _encode(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        return z.abs() if self.activation == "abs" else torch.relu(z)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"input_dim": torch.tensor([self.input_dim])}  # safetensors needs at least one tensor

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> RawDims:
        return cls(int(config["input_dim"]), RawConfig(**config.get("hparams", {})))


# ------------------------------------------------------------------------------------------ training data

#: Training data: Embeddings (``.image``, ``.text``), an ``(image (n, d), text (n, d))`` pair of tensors or
#: arrays, a callable returning an iterable of such pairs (chunks), or a re-iterable of chunks (a list).
PairData = Union[Any, tuple[torch.Tensor, torch.Tensor], Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                 Iterable[tuple[torch.Tensor, torch.Tensor]]]


def pair_chunks(data: PairData, chunk_size: int = 65536) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """A restartable stream of checked ``(image (c, d), text (c, d))`` float32 chunks of ``data``.

    Each call of the returned function starts a new pass. Tensors held in memory are cut into chunks of
    ``chunk_size`` rows; a callable is called once per pass; a one-shot iterator (e.g. a generator object)
    cannot be read twice and is refused.

    Raises
    ------
    ValueError
        (during a pass) if a chunk's image and text differ in shape, or hold NaN/Inf.
    TypeError
        if ``data`` is none of the accepted forms.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if hasattr(data, "image") and hasattr(data, "text"):
        data = (data.image, data.text)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in data):
        image, text = (torch.as_tensor(t) for t in data)

        def raw() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for i in range(0, len(image), chunk_size):
                yield image[i:i + chunk_size], text[i:i + chunk_size]
    elif callable(data):
        raw = lambda: iter(data())  # noqa: E731
    elif isinstance(data, Iterable):
        if iter(data) is data:
            raise TypeError("a one-shot iterator cannot be read once per epoch: pass a function that returns a "
                            "fresh iterable of (image, text) chunks")
        raw = lambda: iter(data)  # noqa: E731
    else:
        raise TypeError(f"cannot read training pairs from {type(data).__name__}: pass Embeddings, an (image, text) "
                        "pair of (n, d) tensors, or a function returning (image, text) chunks")

    def stream() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for c, (img, txt) in enumerate(raw()):
            img = check_embeddings(img, None, f"image embeddings (chunk {c})")
            txt = check_embeddings(txt, img.shape[1], f"text embeddings (chunk {c})")
            if len(img) != len(txt):
                raise ValueError(f"chunk {c} has {len(img)} image but {len(txt)} text embeddings: pairs must align")
            yield img, txt
    return stream


@dataclasses.dataclass(frozen=True)
class DataStats:
    """Statistics of paired training data from one streamed pass.

    Attributes
    ----------
    n, dim : int
        Number of pairs and embedding dimension ``d``.
    chunk_sizes : tuple of int
        Rows per chunk (to count the steps of an epoch).
    mean : Tensor
        ``(2, d)`` per-modality mean (image, text).
    sq_norm : Tensor
        ``(2,)`` per-modality mean squared norm ``E||z||²``.
    centered_sq_norm : Tensor
        ``(2,)`` per-modality mean squared norm around the mean ``E||z - mean||²``.
    """

    n: int
    dim: int
    chunk_sizes: tuple[int, ...]
    mean: torch.Tensor
    sq_norm: torch.Tensor
    centered_sq_norm: torch.Tensor

    def steps_per_epoch(self, batch_size: int, min_batch: int = 1) -> int:
        """Batches of at most ``batch_size`` rows per pass (chunk remainders below ``min_batch`` dropped)."""
        return sum(c // batch_size + (c % batch_size >= min_batch) for c in self.chunk_sizes)


def data_stats(chunks: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> DataStats:
    """One pass over ``chunks`` (see :func:`pair_chunks`), accumulated in float64."""
    n, sizes = 0, []
    total = sq = None
    for img, txt in chunks():
        z = torch.stack([img, txt]).double()  # (2, c, d)
        total = z.sum(1) if total is None else total + z.sum(1)
        sq = z.square().sum((1, 2)) if sq is None else sq + z.square().sum((1, 2))
        n += len(img)
        sizes.append(len(img))
    if n == 0 or total is None or sq is None:
        raise ValueError("the training data holds no pairs")
    mean = total / n
    sq_norm = sq / n
    centered = (sq_norm - mean.square().sum(1)).clamp_min(0.0)
    return DataStats(n=n, dim=int(mean.shape[1]), chunk_sizes=tuple(sizes), mean=mean.float(),
                     sq_norm=sq_norm.float(), centered_sq_norm=centered.float())


def training_data(data: PairData, chunk_size: int, source: Source | None = None
                  ) -> tuple[Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]], DataStats, Source]:
    """The chunk stream (:func:`pair_chunks`), its statistics (:func:`data_stats`, one pass) and its
    :class:`Source` (given, or read from ``data``; ``n`` filled in)."""
    chunks = pair_chunks(data, chunk_size)
    stats = data_stats(chunks)
    source = source or source_of(data)
    if source.n is None:
        source = dataclasses.replace(source, n=stats.n)
    return chunks, stats, source


def iterate_batches(chunks: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], batch_size: int,
                    generator: torch.Generator, min_batch: int = 1) -> Iterator[torch.Tensor]:
    """One pass of shuffled batches ``(2, b, d)`` (image, text) of paired rows.

    Rows are shuffled within each chunk (with ``generator``), so only one chunk is in memory at a time;
    a chunk's last batch may be smaller, and is dropped if below ``min_batch`` rows.
    """
    for img, txt in chunks():
        perm = torch.randperm(len(img), generator=generator)
        z = torch.stack([img, txt])
        for i in range(0, len(img), batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) >= min_batch:
                yield z[:, idx]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (``None``: leave torch's setting), then restore it.

    One thread is often faster for these small matrices, and much faster on a machine whose cores are
    shared with other processes.
    """
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be a positive integer or None, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_schedule(config: Any, positive: Iterable[str] = ("epochs", "batch_size", "dead_window", "log_every",
                                                             "chunk_size")) -> None:
    """Validate the training-schedule fields shared by the trainable maps' configs: the ``positive`` integer
    fields, ``lr`` (finite, > 0) and ``lr_decay`` (in [0, 1]); raise ``ValueError`` naming the field."""
    for name in positive:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(config, name)}")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ValueError(f"lr must be a finite number > 0, got {config.lr}")
    if not 0 <= config.lr_decay <= 1:
        raise ValueError(f"lr_decay must lie in [0, 1], got {config.lr_decay}")


def linear_decay_lr(step: int, total: int, lr: float, decay: float) -> float:
    """Learning rate at ``step`` (1-based) of ``total``: ``lr``, decayed linearly to 0 over the last
    ``decay`` fraction of the steps."""
    return lr * min(1.0, (total - step + 1) / max(1.0, decay * total))


def training_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda if available, else mps, else cpu (:func:`mmlib.models.embed.resolve_device`); anything else
    -> ``torch.device(device)``."""
    if str(device) == "auto":
        from mmlib.models.embed import resolve_device
        return resolve_device("auto")
    return torch.device(device)


class Liveness:
    """When each latent of ``M`` groups last fired; a latent is dead after ``window`` silent steps."""

    def __init__(self, n_groups: int, n_latents: int, window: int, device: str | torch.device = "cpu") -> None:
        self.last = torch.zeros(n_groups, n_latents, dtype=torch.long, device=device)
        self.window = window

    def update(self, fired: torch.Tensor, step: int) -> torch.Tensor:
        """Record the latents that ``fired`` ``(M, K)`` bool at ``step``; return the dead mask ``(M, K)``."""
        self.last[fired] = step
        return self.dead(step)

    def dead(self, step: int) -> torch.Tensor:
        """Dead mask ``(M, K)`` at ``step``."""
        return (step - self.last) >= self.window

    def revive(self, mask: torch.Tensor, step: int) -> None:
        """Count the latents of ``mask`` ``(M, K)`` as fired at ``step`` (after resampling them)."""
        self.last[mask] = step


class History:
    """Training curves: per-step values averaged over each ``log_every`` window, plus ``step``, ``dead``
    (fraction of dead latents) and ``lr`` at the window's end; shown on a tqdm ``bar`` if given."""

    def __init__(self, names: Iterable[str], log_every: int, total: int, bar: Any = None) -> None:
        self.names = tuple(names)
        self.log_every, self.total, self.bar = log_every, total, bar
        self.data: dict[str, list[float]] = {k: [] for k in ("step", *self.names, "dead", "lr")}
        self._sums = dict.fromkeys(self.names, 0.0)
        self._count = 0

    def add(self, step: int, dead_fraction: float, lr: float, **values: float) -> None:
        """Accumulate this step's ``values`` (one per name); record the window when it ends."""
        for k in self.names:
            self._sums[k] += float(values[k])
        self._count += 1
        if step % self.log_every and step != self.total:
            return
        self.data["step"].append(step)
        for k in self.names:
            self.data[k].append(self._sums[k] / self._count)
        self.data["dead"].append(float(dead_fraction))
        self.data["lr"].append(float(lr))
        self._sums, self._count = dict.fromkeys(self.names, 0.0), 0
        if self.bar is not None:
            self.bar.set_postfix({k: f"{self.data[k][-1]:.4g}" for k in (*self.names, "dead")}, refresh=False)


# ------------------------------------------------------------------------------------------ artifact store

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
        raise TypeError("load_or_train_feature_map needs Embeddings or an (image, text) pair of tensors "
                        "(a stream has no fingerprint to key the artifact on)")
    return src.embeddings_key


def _kind_parts(kind: str) -> tuple[Any, type, Callable | None]:
    if kind not in _KINDS:
        raise ValueError(f"unknown feature map kind {kind!r}: expected one of {sorted(_KINDS)}")
    module_name, _, config_name, train_name = _KINDS[kind]
    module = importlib.import_module(module_name)
    return module, getattr(module, config_name), getattr(module, train_name) if train_name else None


def feature_map_key(kind: str, config: Any, embeddings: Any) -> str:
    """Artifact key: kind, config, the embeddings' key (or tensor fingerprint) and the code versions."""
    module, _, _ = _kind_parts(kind)
    return stable_hash("feature_map", kind, config, _data_key(embeddings),
                       module_version(sys.modules[__name__]), module_version(module))


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
        torch CPU threads while training (``None``: torch's setting). Neither ``threads`` nor ``device`` is
        part of the key.
    device : str
        Where to train (``"cpu"``, ``"cuda"``, ``"auto"``); training is deterministic on the CPU only.
    """
    module, config_cls, train = _kind_parts(kind)
    if not isinstance(config, config_cls):
        raise TypeError(f"kind {kind!r} needs a {config_cls.__name__}, got {type(config).__name__}")
    key = feature_map_key(kind, config, embeddings)

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
