"""Embeddings of paired images and captions, as every later step consumes them.

:class:`Embeddings` holds the joint-space image and text embeddings ``(n, d)`` of ``n`` pairs (unnormalised, as the
model returns them), optionally each tower's activation before the projection, the artifact key that identifies
them and their metadata. :func:`mmlib.models.embed.embed_dataset` produces them; the feature maps, the MDS and
every analysis read them without needing the model.

The constructor checks every value (finite) as well as the shapes, so it reads every byte it is given. A cache hit
uses :meth:`Embeddings.from_verified_artifact` instead, which checks the shapes only: the values of a stored
artifact were checked before it was saved, and its checksum says they are still those values.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmlib.core.artifacts import Artifact
from mmlib.core.errors import InputError
from mmlib.core.validation import check_finite

#: The tensors of an embeddings artifact, in the order of the fields.
TENSOR_FIELDS = ("image", "text", "image_tower", "text_tower")


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """Embeddings of ``n`` image-caption pairs.

    Attributes
    ----------
    image, text : Tensor
        ``(n, d)`` float32, unnormalised joint-space embeddings (``encode_image`` / ``encode_text``).
    key : str
        The artifact key (a hash of everything that determines the result).
    meta : dict
        Model name and identity, dataset fingerprint, ``n``, timings, ...
    image_tower : Tensor or None
        ``(n, w_img)`` pooled vision activation before the projection (``towers=True`` only).
    text_tower : Tensor or None
        ``(n, w_txt)`` pooled text activation before the projection (``towers=True`` only).
    path : Path or None
        The artifact folder.
    """

    image: torch.Tensor
    text: torch.Tensor
    key: str
    meta: dict[str, Any]
    image_tower: torch.Tensor | None = None
    text_tower: torch.Tensor | None = None
    path: Path | None = None

    def __post_init__(self) -> None:
        self._validate(check_values=True)

    @classmethod
    def from_verified_artifact(cls, artifact: Artifact) -> Embeddings:
        """The embeddings stored in a verified ``"embeddings"`` artifact, without reading its tensors.

        The shapes are checked as by the constructor, but not the values: the tensors stay lazy views of the mapped
        file (:func:`mmlib.core.artifacts.read_tensors`), so this costs ``O(1)`` whatever ``n``. This is only sound
        for an artifact returned by :func:`mmlib.core.artifacts.load_artifact` (its tensor file matches the checksum
        recorded when it was written) whose producer refused non-finite values before saving, as
        :func:`mmlib.models.embed.embed_dataset` does (:func:`mmlib.models.embed.check_outputs`). Tensors from
        anywhere else go through the constructor, which checks every value.

        Parameters
        ----------
        artifact : Artifact
            With tensors ``image`` and ``text`` (optionally ``image_tower`` and ``text_tower``) and ``meta["key"]``.

        Raises
        ------
        InputError
            if it is not an ``"embeddings"`` artifact, lacks ``image`` or ``text``, or the shapes do not fit.
        """
        if not isinstance(artifact, Artifact) or artifact.meta.get("kind") != "embeddings":
            what = (f"an artifact of kind {artifact.meta.get('kind')!r}" if isinstance(artifact, Artifact)
                    else f"a {type(artifact).__name__}")
            raise InputError(f"Embeddings.from_verified_artifact takes an 'embeddings' artifact from load_artifact, "
                             f"got {what}; build Embeddings(...) from other tensors.")
        missing = [name for name in ("image", "text") if name not in artifact.tensors]
        if missing:
            raise InputError(f"the artifact {artifact.path} holds no {' or '.join(missing)} tensor (it holds "
                             f"{', '.join(sorted(artifact.tensors)) or 'none'}): it is no embeddings artifact.")
        made = cls.__new__(cls)  # not __init__: its __post_init__ scans every value
        fields = {name: artifact.tensors.get(name) for name in TENSOR_FIELDS}
        fields.update(key=artifact.meta.get("key"), meta=artifact.meta, path=artifact.path)
        for name, value in fields.items():
            object.__setattr__(made, name, value)
        made._validate(check_values=False)
        return made

    def without_towers(self) -> Embeddings:
        """The same pairs without the tower activations: the same ``image`` and ``text`` tensors, key, meta and
        path, neither copied nor scanned again (they were checked when these embeddings were made).
        """
        made = object.__new__(type(self))
        for field in dataclasses.fields(self):
            value = None if field.name in ("image_tower", "text_tower") else getattr(self, field.name)
            object.__setattr__(made, field.name, value)
        return made

    def _validate(self, check_values: bool) -> None:
        """Check types, shapes, key, meta and path; with ``check_values`` also that every value is finite."""
        for name in TENSOR_FIELDS:
            value = getattr(self, name)
            if value is None and name.endswith("_tower"):
                continue
            if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
                value = torch.from_numpy(value)
                object.__setattr__(self, name, value)
            if not isinstance(value, torch.Tensor):
                raise InputError(f"Embeddings.{name} must be a 2-D (n, d) tensor, got {type(value).__name__}.")
            if value.ndim != 2 or value.is_complex():
                raise InputError(f"Embeddings.{name} must be a real 2-D (n, d) tensor, got shape "
                                 f"{tuple(value.shape)} ({value.dtype}).")
            if len(value) != len(self.image):
                raise InputError(f"Embeddings.{name} has {len(value)} rows but Embeddings.image has "
                                 f"{len(self.image)}: every tensor holds one row per pair.")
            if check_values:
                check_finite(value, f"Embeddings.{name}", hint="embed the pairs again, or drop the bad rows "
                                                                 "from every tensor")
        if self.text.shape[1] != self.image.shape[1]:
            raise InputError(f"Embeddings.text has dimension {self.text.shape[1]} but Embeddings.image "
                             f"{self.image.shape[1]}: both must be joint-space embeddings of the same model.")
        if not isinstance(self.key, str) or not self.key:
            raise InputError(f"Embeddings.key must be a non-empty string (the artifact key), got {self.key!r}.")
        if not isinstance(self.meta, Mapping):
            raise InputError(f"Embeddings.meta must be a dict, got {type(self.meta).__name__}.")
        if self.path is not None and not isinstance(self.path, (str, os.PathLike)):
            raise InputError(f"Embeddings.path must be a folder path or None, got {type(self.path).__name__}.")

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def dim(self) -> int:
        """Dimension ``d`` of the joint embedding space."""
        return int(self.image.shape[1])

    def normalized(self) -> Embeddings:
        """A copy whose ``image`` and ``text`` rows have unit L2 norm (towers unchanged)."""
        return dataclasses.replace(self, image=F.normalize(self.image, dim=-1),
                                   text=F.normalize(self.text, dim=-1))
