"""Embeddings of paired images and captions, as every later step consumes them.

:class:`Embeddings` holds the joint-space image and text embeddings ``(n, d)`` of ``n`` pairs (unnormalised, as the
model returns them), optionally each tower's activation before the projection, the artifact key that identifies
them and their metadata. :func:`mmlib.models.embed.embed_dataset` produces them; the feature maps, the MDS and
every analysis read them without needing the model.
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

from mmlib.core.errors import InputError
from mmlib.core.validation import check_finite


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
        for name in ("image", "text", "image_tower", "text_tower"):
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
            check_finite(value, f"Embeddings.{name}", hint="embed the pairs again, or drop the bad rows from "
                                                             "every tensor")
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
