"""Paired image-caption datasets: the protocol every data source implements, and the checks they share.

A :class:`PairDataset` is anything with ``len()``, ``image(i)`` (an RGB ``PIL.Image``), ``caption(i)`` and a
``fingerprint`` string that changes whenever the data changes (used in cache keys). The generated world
(:mod:`mmlib.data.world`) and the real-data adapters (:mod:`mmlib.data.corpora`, :mod:`mmlib.data.celeba`)
implement it.

The readers share one rule per kind of input, so that a bad input gives the same error whichever format it came in:

* :func:`validate_caption`: a caption is UTF-8 text that is not blank and holds no control character (tab and
  line breaks allowed); surrounding whitespace is stripped.
* :func:`load_image`: an image that cannot be decoded, or is too large to decode safely (a decompression bomb),
  raises :class:`DatasetError` naming where it came from.
* :func:`check_file` / :func:`check_folder`: a missing path says "does not exist", a folder where a file is expected
  says "is a directory" (and vice versa).
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmlib.core import validation
from mmlib.core.errors import InputError


class DatasetError(InputError):
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

#: Exceptions PIL raises on a damaged or hostile image file (besides the decompression-bomb ones).
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, struct.error, IndexError,
                  KeyError, TypeError, ZeroDivisionError, MemoryError)

# C0 control characters except tab, line feed and carriage return, and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def open_rgb(source: Path | io.BytesIO) -> Image.Image:
    """Decode an image fully and convert it to RGB.

    Raises ``OSError``/``UnidentifiedImageError`` for a damaged file and ``PIL.Image.DecompressionBombError`` for
    an image above ``PIL.Image.MAX_IMAGE_PIXELS`` (PIL's warning for one above half of twice that limit is turned
    into the error too). Readers call :func:`load_image`, which names the file in a :class:`DatasetError`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source) as img:
                img.load()
                return img.convert("RGB")
        except Image.DecompressionBombWarning as warning:
            raise Image.DecompressionBombError(str(warning)) from None


def load_image(source: Path | io.BytesIO, where: str, hint: str) -> Image.Image:
    """:func:`open_rgb` of ``source``, with any decoding failure raised as :class:`DatasetError`.

    Parameters
    ----------
    where : str
        The image's place in the data, e.g. ``"image a.png of row 3 (line 4 of pairs.csv)"``.
    hint : str
        What to do about an unreadable image (e.g. ``"replace or remove it"``).
    """
    try:
        return open_rgb(source)
    except Image.DecompressionBombError as err:
        raise DatasetError(f"{where} is too large to decode safely ({err}); it may be a decompression bomb. "
                           f"Replace it with a smaller image, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust "
                           "the file.") from None
    except _DECODE_ERRORS as err:
        raise DatasetError(f"{where} is unreadable ({type(err).__name__}: {err}); {hint}.") from err


def validate_caption(text: str | bytes, where: str, field: str = "caption") -> str:
    """The caption ``text`` stripped of surrounding whitespace, if it is usable; :class:`DatasetError` otherwise.

    One rule for every reader: bytes must be valid UTF-8, the stripped text must not be empty, and it must hold no
    control character other than tab and line breaks.

    Parameters
    ----------
    where : str
        Where the caption comes from (``"pairs.csv, line 4"``, ``"shard a.tar, key 'x'"``), used in the message.
    field : str
        The caption's column or member name, used in the message (``"title"``, ``"x.txt"``).
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise DatasetError(f"{where}: {field!r} is not valid UTF-8 (byte 0x{text[err.start]:02x} at position "
                               f"{err.start}); re-encode the caption as UTF-8 or remove the pair.") from None
    if not isinstance(text, str):
        raise DatasetError(f"{where}: {field!r} must be text, got {type(text).__name__}.")
    text = text.strip()
    if not text:
        raise DatasetError(f"{where}: empty {field!r}; every pair needs an image and a non-blank caption. "
                           "Fix or remove it.")
    bad = _CONTROL.search(text)
    if bad is not None:
        raise DatasetError(f"{where}: {field!r} holds the control character U+{ord(bad.group()):04X} at position "
                           f"{bad.start()}; remove it (or the pair).")
    return text


def as_path(value: Any, name: str) -> Path:
    """:func:`mmlib.core.validation.as_path` raising :class:`DatasetError` (a reader's path arguments)."""
    return validation.as_path(value, name, error=DatasetError)


def check_file(path: Path, what: str, hint: str) -> Path:
    """``path`` if it is an existing file; :class:`DatasetError` ("does not exist" / "is a directory") otherwise."""
    if path.is_dir():
        raise DatasetError(f"{what} {path} is a directory, not a file; {hint}.")
    if not path.is_file():
        if path.exists():
            raise DatasetError(f"{what} {path} is not a regular file; {hint}.")
        raise DatasetError(f"{what} {path} does not exist; {hint}.")
    return path


def check_folder(path: Path, what: str, hint: str) -> Path:
    """``path`` if it is an existing folder; :class:`DatasetError` ("does not exist" / "is a file") otherwise."""
    if not path.is_dir():
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"{what} {path} {state}; {hint}.")
    return path


def utf8_error_line(path: Path) -> tuple[int, int, int] | None:
    """``(line, column, byte)`` of the first byte of ``path`` that is not valid UTF-8 (1-based), or ``None``."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return number, err.start + 1, raw[err.start]
    return None


def not_utf8_error(path: Path) -> DatasetError:
    """The :class:`DatasetError` for a text file that is not UTF-8, naming the first bad line and byte."""
    found = utf8_error_line(path)
    where = f"{path}, line {found[0]}, column {found[1]}: byte 0x{found[2]:02x}" if found else f"{path}"
    return DatasetError(f"{where} is not valid UTF-8; re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 "
                        "in > out`) and retry.")


def read_text(path: Path) -> str:
    """The whole UTF-8 text of ``path`` (a BOM dropped); :class:`DatasetError` naming the line if not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise not_utf8_error(path) from None
    except OSError as err:
        raise DatasetError(f"cannot read {path} ({err.strerror or err}); check that it is a readable file.") from err


class DatasetIndexError(DatasetError, IndexError):
    """An index given to ``image(i)`` / ``caption(i)`` is not an integer in ``[0, len)``."""


def check_index(index: int, n: int) -> int:
    """``index`` if it is a valid index of a dataset of ``n`` pairs (:class:`DatasetIndexError` otherwise)."""
    if not isinstance(index, (int, np.integer)) or isinstance(index, (bool, np.bool_)):
        raise DatasetIndexError(f"index must be an integer, got {index!r} ({type(index).__name__}).")
    if not 0 <= index < n:
        raise DatasetIndexError(f"index {index} is out of range for a dataset of {n} pairs; pass 0 <= index < {n}.")
    return int(index)
