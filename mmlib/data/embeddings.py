"""Embeddings of paired images and captions, as every later step consumes them.

:class:`Embeddings` holds the joint-space image and text embeddings ``(n, d)`` of ``n`` pairs (unnormalised, as the
model returns them), optionally each tower's activation before the projection, the artifact key that identifies
them and their metadata. :func:`mmlib.models.embed.embed_dataset` produces them; the feature maps, the MDS and
every analysis read them without needing the model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


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
