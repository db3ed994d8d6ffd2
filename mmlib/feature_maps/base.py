"""Monosemantic feature maps ``g``: the common interface, raw CLIP dimensions, storage and training data.

A feature map turns joint-space embeddings ``z`` ``(n, d)`` of either modality into non-negative
activations ``h = g(z)`` ``(n, K)``; the MDS, the categories and every later chapter work on these
activations, whatever the map. Three kinds exist (the book's Method page, `method-feature-maps`):

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
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch

from mmlib.analysis.mds import Encoder
from mmlib.core.artifacts import (
    code_version,
    tensor_fingerprint,
    to_jsonable,
    write_tensors_atomic,
)
from mmlib.core.errors import ArgumentTypeError, InputError, InputNotFoundError, NonFiniteError, UnsupportedModelError
from mmlib.core.validation import as_path, check_finite, is_int

Modality = Literal["image", "text"]
#: The two modalities, in the order used by every stacked tensor ``(2, ...)`` of this package.
MODALITIES: tuple[str, str] = ("image", "text")

#: Identifies a safetensors file written by :meth:`FeatureMap.save` (the header key holding the config).
FORMAT = "mmlib.feature_map/1"
#: The header key holding the SHA-256 of the config JSON and the tensors (:func:`feature_map_checksum`).
CHECKSUM_KEY = "sha256"


class SourceMismatchError(InputError):
    """A feature map is applied to embeddings of another model than the one it was trained on."""


class FeatureMapNotFoundError(InputNotFoundError):
    """No feature map file or artifact folder at the given path (also a ``FileNotFoundError``)."""


def feature_map_checksum(config_json: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex, full length) of a saved map: the format, the config JSON exactly as stored in the header and
    the full fingerprint of the tensors (names, dtypes, shapes, bytes).
    """
    digest = hashlib.sha256()
    digest.update(FORMAT.encode() + b"\0" + config_json.encode() + b"\0")
    digest.update(tensor_fingerprint(tensors, length=64).encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- input checks

def check_modality(modality: str) -> str:
    """Return ``modality`` if it is ``"image"`` or ``"text"``; raise :class:`InputError` otherwise."""
    if not isinstance(modality, str) or modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}: expected 'image' or 'text'")
    return modality


def check_embeddings(z: torch.Tensor | np.ndarray, dim: int | None = None, what: str = "embeddings",
                     expects: str = "this feature map expects") -> torch.Tensor:
    """Validate embeddings ``(n, d)`` and return them as a float32 tensor.

    Parameters
    ----------
    z : (n, d) tensor or array
    dim : int, optional
        The dimension ``d`` they must have (e.g. a map's ``input_dim``).
    what : str
        How to name them in error messages.
    expects : str
        Who expects ``dim``, in the message (``"... but <expects> d=<dim>"``).

    Raises
    ------
    InputError
        if ``z`` is not a real 2-D tensor or array, or has another dimension than ``dim`` (the message says
        expected and got).
    NonFiniteError
        if ``z`` holds NaN or Inf (the message says in how many rows, and the first bad row and column).
    """
    try:
        z = torch.as_tensor(z)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{what} must be a numeric 2-D (n, d) tensor or array, got {type(z).__name__} "
                         f"({err})") from err
    if z.is_complex():
        raise InputError(f"{what} must be real numbers, got dtype {z.dtype}")
    if z.ndim != 2:
        raise InputError(f"{what} must be a 2-D (n, d) tensor, got shape {tuple(z.shape)}")
    if dim is not None and z.shape[1] != dim:
        hint = ("was it trained on another model's embeddings?" if expects == "this feature map expects" else
                "every row must have the same d")
        raise InputError(f"{what} have dimension d={z.shape[1]} but {expects} d={dim} "
                         f"(expected {dim}, got {z.shape[1]}): {hint}")
    if not z.is_floating_point():
        z = z.float()
    bad = ~torch.isfinite(z)
    if bool(bad.any()):
        rows = torch.nonzero(bad.any(dim=1)).flatten()
        row, col = (int(i) for i in torch.nonzero(bad)[0])
        raise NonFiniteError(f"{what} contain NaN or Inf in {len(rows)} of {len(z)} rows (first at row "
                             f"{int(rows[0])}): {z[row, col].item()} at row {row}, column {col}; remove or impute "
                             "those rows first")
    return z.float()


def _pair_of(data: Any, what: str = "data") -> tuple[Any, Any]:
    """``(image, text)`` of Embeddings or of an ``(image, text)`` pair (:class:`ArgumentTypeError` otherwise)."""
    if hasattr(data, "image") and hasattr(data, "text"):
        return data.image, data.text
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    raise ArgumentTypeError(f"{what} must be Embeddings or an (image (n, d), text (n, d)) pair, got "
                            f"{type(data).__name__}")


def check_pairs(data: Any, dim: int | None = None, what: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """Checked float32 ``(image (n, d), text (n, d))`` of Embeddings or an ``(image, text)`` pair: 2-D, aligned
    rows, the same (or the given) ``d``, finite (:func:`check_embeddings`; row indices are of the whole data).
    """
    image, text = _pair_of(data, what)
    image = check_embeddings(image, dim, f"{what}.image (image embeddings)" if hasattr(data, "image")
                             else f"{what}[0] (image embeddings)")
    text = check_embeddings(text, image.shape[1], f"{what}.text (text embeddings)" if hasattr(data, "text")
                            else f"{what}[1] (text embeddings)", "the image embeddings have")
    if len(image) != len(text):
        raise InputError(f"{what} has {len(image)} image but {len(text)} text embeddings: pairs must align "
                         "(one text row per image row)")
    return image, text


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
    """The :class:`Source` of training data: read from an :class:`~mmlib.data.embeddings.Embeddings` (``meta``,
    ``key``), else fingerprinted from an ``(image, text)`` pair of tensors, else unknown.
    """
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
        raise ArgumentTypeError(f"cannot read a model identity from {type(expected).__name__}: pass the identity "
                                "string, a ModelBundle or Embeddings")
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

class FeatureMapLike(Encoder, Protocol):
    """What the case studies need of a feature map (structural: :class:`FeatureMap` and test doubles satisfy it).

    ``encode(z (n, d), modality) -> (n, K)`` non-negative, ``decode(h (n, K), modality) -> (n, d)`` when
    ``has_decoder``; ``input_dim`` is ``d`` and ``n_features`` is ``K``.
    """

    has_decoder: bool
    input_dim: int
    n_features: int

    def decode(self, h: torch.Tensor, modality: str) -> torch.Tensor:
        """Embeddings ``(n, d)`` reconstructed from activations ``h`` ``(n, K)`` (maps with a decoder)."""


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
        for name, value in (("input_dim", input_dim), ("n_features", n_features)):
            if not is_int(value) or value < 1:
                raise InputError(f"{type(self).__name__}: {name} must be a positive integer, got {value!r}")
        if source is not None and not isinstance(source, Source):
            raise ArgumentTypeError(f"{type(self).__name__}: source must be a Source or None, got "
                                    f"{type(source).__name__}")
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
        InputError
            for an unknown modality or a dimension other than ``input_dim``.
        NonFiniteError
            for NaN/Inf entries (naming the first bad row and column).
        """
        modality = check_modality(modality)
        z = check_embeddings(z, self.input_dim, f"z ({modality} embeddings)")
        with torch.no_grad():
            return self._encode(z, modality)

    def decode(self, h: torch.Tensor | np.ndarray, modality: str) -> torch.Tensor:
        """Embeddings ``(n, d)`` reconstructed from activations ``h`` ``(n, K)`` of ``modality``.

        Raises
        ------
        NotImplementedError
            for a map without a decoder (``has_decoder`` is False).
        InputError
            for an unknown modality, a width other than ``n_features``, or NaN/Inf entries.
        """
        if not self.has_decoder:
            raise UnsupportedModelError(f"{self.name} has no decoder (has_decoder is False): only SAE maps "
                                      "reconstruct embeddings; use its activations directly")
        modality = check_modality(modality)
        h = torch.as_tensor(h)
        if h.ndim == 2 and h.shape[1] != self.n_features:
            raise InputError(f"activations h have {h.shape[1]} features but {self.name} has K={self.n_features} "
                             f"(expected {self.n_features}, got {h.shape[1]})")
        h = check_embeddings(h, self.n_features, f"h ({modality} activations)")
        with torch.no_grad():
            return self._decode(h, modality)

    def reconstruct(self, z: torch.Tensor | np.ndarray, modality: str) -> torch.Tensor:
        """``decode(encode(z))`` ``(n, d)`` (maps with a decoder only)."""
        return self.decode(self.encode(z, modality), modality)

    def activations(self, data: Any, batch_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text activations ``(n, K)`` each, of :class:`~mmlib.data.embeddings.Embeddings` or an
        ``(image (n, d), text (n, d))`` pair, encoded in batches of ``batch_size`` rows.

        Raises
        ------
        InputError
            for a ``batch_size`` below 1, unaligned pairs or another ``d`` than ``input_dim``.
        NonFiniteError
            for NaN/Inf entries (naming ``data.image`` or ``data.text`` and the first bad row of the whole data).
        """
        if not is_int(batch_size) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        image, text = check_pairs(data, self.input_dim)

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
                "code_version": code_version(type(self).__module__)}

    def save(self, path: str | Path) -> Path:
        """Write the map to one safetensors file, atomically; return the path.

        The header holds the config as JSON and a SHA-256 of the config and the tensors
        (:func:`feature_map_checksum`), verified by :func:`~mmlib.feature_maps.store.load_feature_map`.

        Raises
        ------
        InputError
            if ``path`` is a directory or cannot be written.
        NonFiniteError
            if a tensor of the map holds NaN or Inf (a diverged training run).
        """
        path = as_path(path, "path")
        if path.is_dir():
            raise InputError(f"{path} is a directory: pass a file name for the feature map, e.g. "
                             f"{path / (self.kind + '.safetensors')}")
        tensors = self.state_tensors()
        for name, tensor in tensors.items():
            check_finite(tensor, f"{self.name}'s tensor {name!r}", hint="the map is unusable: retrain it (lower the "
                                                                         "learning rate if training diverged)")
        config_json = json.dumps(self.config(), sort_keys=True)
        metadata = {"config": config_json, CHECKSUM_KEY: feature_map_checksum(config_json, tensors)}
        try:
            write_tensors_atomic(path, tensors, metadata)
        except OSError as err:
            raise InputError(f"cannot write the feature map to {path} ({err}): choose a writable file "
                             "location") from err
        return path


# ------------------------------------------------------------------------------------------- raw dims

# ------------------------------------------------------------------------------------------ training data

# ------------------------------------------------------------------------------------------ artifact store

