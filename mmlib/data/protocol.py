"""Paired image-caption datasets: the protocol every data source implements.

A :class:`PairDataset` is anything with ``len()``, ``image(i)`` (an RGB ``PIL.Image``), ``caption(i)`` and a
``fingerprint`` string that changes whenever the data changes (used in cache keys). The generated world
(:mod:`mmlib.data.world`) and the real-data adapters (:mod:`mmlib.data.corpora`) implement it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image


class DatasetError(ValueError):
    """A dataset is missing, empty or malformed; the message says where and what to do."""


@runtime_checkable
class PairDataset(Protocol):
    """A finite, indexable set of (image, caption) pairs."""

    @property
    def fingerprint(self) -> str:
        """A short string that identifies the data's content (changes when the data changes)."""
        ...

    def __len__(self) -> int: ...

    def image(self, index: int) -> Image.Image:
        """The ``index``-th image as an RGB PIL image."""
        ...

    def caption(self, index: int) -> str:
        """The ``index``-th caption."""
        ...


#: Image member extensions recognised in webdataset shards, in order of preference.
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")


def open_rgb(source: Path | io.BytesIO) -> Image.Image:
    """Decode an image fully and convert it to RGB (raises ``OSError``/``UnidentifiedImageError``)."""
    with Image.open(source) as img:
        img.load()
        return img.convert("RGB")


def check_index(index: int, n: int) -> int:
    """``index`` if it is a valid index of a dataset of ``n`` pairs (IndexError otherwise)."""
    if not 0 <= index < n:
        raise IndexError(f"index {index} is out of range for a dataset of {n} pairs")
    return index
