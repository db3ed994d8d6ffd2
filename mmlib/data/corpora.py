"""Real image-caption corpora for the ``paper`` profile, as :class:`mmlib.data.protocol.PairDataset` objects.

Two on-disk formats, the two that open_clip's training code reads:

* :class:`CsvPairs`: a CSV/TSV file with a header row and one image path + caption per row (open_clip's
  ``--dataset-type csv``: columns ``filepath`` and ``title``).
* :class:`WebDatasetPairs`: local webdataset tar shards as written by ``img2dataset`` (e.g. for CC3M):
  ``{key}.jpg`` (or ``.png``, ``.jpeg``, ``.webp``) + ``{key}.txt`` (+ an optional ``{key}.json``).

:func:`open_pairs` picks the reader from the path. Both validate their input when constructed and raise
:class:`mmlib.data.protocol.DatasetError` with a message that says where the problem is and what to do; an
unreadable image is reported by ``image(i)``, which names the file (or shard and key). Images are decoded lazily;
only the index is held in memory. (CelebA faces, a labelled image folder, are :mod:`mmlib.data.celeba`.)
"""

from __future__ import annotations

import csv
import io
import re
import tarfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import braceexpand
from PIL import Image, UnidentifiedImageError

from mmlib.core.artifacts import file_sha256, stable_hash
from mmlib.data.protocol import IMAGE_EXTENSIONS, DatasetError, PairDataset, check_index, open_rgb

__all__ = ["CsvPairs", "WebDatasetPairs", "open_pairs"]

_DELIMITERS = {".csv": ",", ".tsv": "\t"}


class CsvPairs:
    """Image-caption pairs listed in a CSV/TSV file (open_clip's CSV dataset format).

    Parameters
    ----------
    path : str or Path
        The CSV/TSV file. Its first row is a header naming the columns.
    image_root : str or Path, optional
        Folder against which relative image paths are resolved; default: the CSV's folder.
    image_key, caption_key : str
        Column names of the image path and of the caption (open_clip's defaults).
    delimiter : str, optional
        Field separator; default: inferred from the extension (``.tsv`` -> tab, ``.csv`` -> comma).

    Notes
    -----
    ``fingerprint`` hashes the CSV bytes, the resolved image root and the column names. Image bytes are
    *not* hashed (that would read the whole corpus): replace an image in place and cached embeddings stay
    stale; change the CSV (or delete the cache) when images change.

    Raises
    ------
    DatasetError
        if the file is missing or empty, lacks a column, or has a malformed row (the line number is given).
    """

    def __init__(self, path: str | Path, image_root: str | Path | None = None, image_key: str = "filepath",
                 caption_key: str = "title", delimiter: str | None = None) -> None:
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise DatasetError(f"CSV file {self.path} does not exist; pass the path of a CSV/TSV with "
                               f"columns {image_key!r} and {caption_key!r}.")
        if delimiter is None:
            delimiter = _DELIMITERS.get(self.path.suffix.lower())
            if delimiter is None:
                raise DatasetError(f"cannot infer the delimiter of {self.path.name} from its extension; "
                                   "name it .csv or .tsv, or pass delimiter=',' or delimiter='\\t'.")
        self.delimiter = delimiter
        self.image_root = Path(image_root).expanduser().resolve() if image_root is not None \
            else self.path.parent
        self.image_key, self.caption_key = image_key, caption_key
        self._paths, self._captions, self._lines = self._parse()
        self._fingerprint = stable_hash("CsvPairs", file_sha256(self.path), str(self.image_root),
                                        image_key, caption_key, delimiter)

    def _parse(self) -> tuple[list[str], list[str], list[int]]:
        paths: list[str] = []
        captions: list[str] = []
        lines: list[int] = []
        with open(self.path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=self.delimiter)
            try:
                header = next(reader, None)
                if header is None:
                    raise DatasetError(f"{self.path} is empty; it needs a header row with columns "
                                       f"{self.image_key!r} and {self.caption_key!r} and at least one row.")
                missing = [k for k in (self.image_key, self.caption_key) if k not in header]
                if missing:
                    raise DatasetError(
                        f"{self.path} has no column {' or '.join(map(repr, missing))}: its header is {header} "
                        f"(delimiter {self.delimiter!r}); expected columns {self.image_key!r} and "
                        f"{self.caption_key!r}. Rename the columns or pass image_key=/caption_key=/delimiter=.")
                img_col, cap_col = header.index(self.image_key), header.index(self.caption_key)
                previous_end = reader.line_num
                for row in reader:
                    line = previous_end + 1  # first physical line of this row
                    previous_end = reader.line_num
                    if not row:  # blank line
                        continue
                    if len(row) != len(header):
                        raise DatasetError(
                            f"{self.path}, line {line}: {len(row)} fields, expected {len(header)} as in the "
                            f"header {header}. Quote fields that contain the delimiter {self.delimiter!r}.")
                    path, caption = row[img_col].strip(), row[cap_col].strip()
                    if not path or not caption:
                        empty = self.image_key if not path else self.caption_key
                        raise DatasetError(f"{self.path}, line {line}: empty {empty!r}; every row needs an "
                                           "image path and a caption. Fix or remove the row.")
                    paths.append(path)
                    captions.append(caption)
                    lines.append(line)
            except csv.Error as err:
                raise DatasetError(f"{self.path}, line {reader.line_num}: not valid CSV ({err}).") from err
        if not paths:
            raise DatasetError(f"{self.path} has a header but no rows; add at least one image-caption row.")
        return paths, captions, lines

    @property
    def fingerprint(self) -> str:
        """Hash of the CSV bytes, the resolved image root and the column names (not of the images)."""
        return self._fingerprint

    def __len__(self) -> int:
        return len(self._paths)

    def __repr__(self) -> str:
        return f"CsvPairs({str(self.path)!r}, n={len(self)}, image_root={str(self.image_root)!r})"

    def image_path(self, index: int) -> Path:
        """The resolved path of the ``index``-th image."""
        path = Path(self._paths[check_index(index, len(self))]).expanduser()
        return path if path.is_absolute() else self.image_root / path

    def image(self, index: int) -> Image.Image:
        """The ``index``-th image, RGB.

        Raises
        ------
        DatasetError
            if the file is missing or cannot be decoded (the message names the file, row and CSV line).
        """
        path = self.image_path(index)
        where = f"row {index} (line {self._lines[index]} of {self.path})"
        if not path.is_file():
            raise DatasetError(f"image {path} of {where} does not exist; check the path in the CSV and "
                               f"image_root (now {self.image_root}).")
        try:
            return open_rgb(path)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise DatasetError(f"image {path} of {where} is unreadable ({err}); replace or remove it.") from err

    def caption(self, index: int) -> str:
        """The ``index``-th caption."""
        return self._captions[check_index(index, len(self))]


@dataclass(frozen=True)
class _Member:
    """Where one tar member's bytes lie: shard number, byte offset and size."""

    shard: int
    offset: int
    size: int


@dataclass(frozen=True)
class _Sample:
    key: str
    image: _Member
    caption: _Member


_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext convention


def _expand_shards(shards: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(shards, (str, Path)):
        names = list(braceexpand.braceexpand(str(shards)))
    else:
        names = [str(s) for s in shards]
    if not names:
        raise DatasetError("no shard given; pass a list of .tar paths or a brace pattern such as "
                           "'cc3m/{00000..00331}.tar'.")
    paths = [Path(name).expanduser().resolve() for name in names]
    missing = [p for p in paths if not p.is_file()]
    if len(missing) == len(paths):
        raise DatasetError(f"no shard found: none of the {len(paths)} path(s) from {shards!r} exists "
                           f"(first: {paths[0]}). Check the pattern and the folder.")
    if missing:
        shown = ", ".join(str(p) for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(f"{len(missing)} of {len(paths)} shards do not exist: {shown}. Fix the pattern "
                           "or download the missing shards.")
    return paths


class WebDatasetPairs:
    """Image-caption pairs in local webdataset tar shards (img2dataset's output, e.g. CC3M).

    A sample is the group of members sharing a key (webdataset's convention: the path up to the first dot of
    the file name): an image ``{key}.jpg|.jpeg|.png|.webp`` and a caption ``{key}.txt``; other members
    (``{key}.json``) are ignored. An index of member offsets is built once, so ``image(i)`` is random
    access. Keys lacking an image or a caption (img2dataset's failed downloads) are skipped with one
    warning that counts them.

    Parameters
    ----------
    shards : str, Path or sequence of them
        Uncompressed ``.tar`` shards: a list of paths, or one path / brace pattern
        (``"cc3m/{00000..00331}.tar"``).

    Notes
    -----
    ``fingerprint`` hashes the shard file names and sizes and the member index (names, sizes, offsets),
    not the image bytes.

    Raises
    ------
    DatasetError
        if no shard exists, a shard is not a readable uncompressed tar, a key is duplicated within a shard,
        or the shards hold no complete pair.
    """

    def __init__(self, shards: str | Path | Sequence[str | Path]) -> None:
        self.shards: list[Path] = _expand_shards(shards)
        self._samples: list[_Sample] = []
        index_rows: list[tuple[str, int, str, str, int, int]] = []
        skipped: list[tuple[str, str]] = []
        for s, shard in enumerate(self.shards):
            groups: dict[str, dict[str, _Member]] = {}
            try:
                with tarfile.open(shard, mode="r:") as tar:
                    for info in tar:
                        if not info.isfile():
                            continue
                        match = _KEY_EXT.match(info.name)
                        if match is None:
                            continue
                        key, ext = match.group(1), match.group(2).lower()
                        group = groups.setdefault(key, {})
                        if ext in group:
                            raise DatasetError(f"shard {shard}: duplicate member {info.name!r} for key "
                                               f"{key!r}; rewrite the shard with unique keys.")
                        group[ext] = _Member(s, info.offset_data, info.size)
                        index_rows.append((shard.name, s, key, ext, info.offset_data, info.size))
            except (tarfile.TarError, OSError) as err:
                raise DatasetError(f"shard {shard} is not a readable uncompressed tar file ({err}); "
                                   "re-download it, or decompress it if it is gzipped.") from err
            for key, group in groups.items():
                image_ext = next((e for e in IMAGE_EXTENSIONS if e in group), None)
                if image_ext is None or "txt" not in group:
                    skipped.append((shard.name, key))
                    continue
                self._samples.append(_Sample(key, group[image_ext], group["txt"]))
        if not self._samples:
            raise DatasetError(f"the {len(self.shards)} shard(s) hold no complete image+caption pair "
                               f"({len(skipped)} incomplete keys); expected members {{key}}.jpg/.png/.jpeg/"
                               ".webp and {key}.txt as written by img2dataset.")
        if skipped:
            shard_name, key = skipped[0]
            warnings.warn(f"skipped {len(skipped)} of {len(skipped) + len(self._samples)} keys lacking an "
                          f"image or a caption (first: key {key!r} in {shard_name})", UserWarning,
                          stacklevel=2)
        self.n_skipped = len(skipped)
        sizes = [(p.name, p.stat().st_size) for p in self.shards]
        self._fingerprint = stable_hash("WebDatasetPairs", sizes, stable_hash(index_rows, length=64))

    @property
    def fingerprint(self) -> str:
        """Hash of the shard names and sizes and of the member index (not of the image bytes)."""
        return self._fingerprint

    def __len__(self) -> int:
        return len(self._samples)

    def __repr__(self) -> str:
        return f"WebDatasetPairs({len(self.shards)} shards, n={len(self)}, skipped={self.n_skipped})"

    def key(self, index: int) -> str:
        """The webdataset key of the ``index``-th pair."""
        return self._samples[check_index(index, len(self))].key

    def _read(self, member: _Member) -> bytes:
        with open(self.shards[member.shard], "rb") as handle:
            handle.seek(member.offset)
            data = handle.read(member.size)
        if len(data) != member.size:
            raise OSError(f"truncated member: read {len(data)} of {member.size} bytes")
        return data

    def image(self, index: int) -> Image.Image:
        """The ``index``-th image, RGB.

        Raises
        ------
        DatasetError
            if it cannot be read or decoded (the message names the shard and the key).
        """
        sample = self._samples[check_index(index, len(self))]
        shard = self.shards[sample.image.shard]
        try:
            return open_rgb(io.BytesIO(self._read(sample.image)))
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise DatasetError(f"image of key {sample.key!r} in shard {shard} is unreadable ({err}); "
                               "re-download the shard or drop the key.") from err

    def caption(self, index: int) -> str:
        """The ``index``-th caption (UTF-8, surrounding whitespace stripped)."""
        sample = self._samples[check_index(index, len(self))]
        try:
            return self._read(sample.caption).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(f"caption of key {sample.key!r} in shard {self.shards[sample.caption.shard]} "
                               f"is unreadable ({err}).") from err


def open_pairs(pairs: str | Path) -> PairDataset:
    """A real paired corpus by path: webdataset shards (a path or brace pattern containing ``.tar``) or a
    CSV/TSV of (image path, caption).
    """
    return WebDatasetPairs(pairs) if ".tar" in str(pairs) else CsvPairs(pairs)
