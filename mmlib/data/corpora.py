"""Real image-caption corpora for the ``paper`` profile, as :class:`mmlib.data.protocol.PairDataset` objects.

Two on-disk formats, the two that open_clip's training code reads:

* :class:`CsvPairs`: a CSV/TSV file with a header row and one image path + caption per row (open_clip's
  ``--dataset-type csv``: columns ``filepath`` and ``title``).
* :class:`WebDatasetPairs`: local webdataset tar shards as written by ``img2dataset`` (e.g. for CC3M):
  ``{key}.jpg`` (or ``.png``, ``.jpeg``, ``.webp``) + ``{key}.txt`` (+ an optional ``{key}.json``).

:func:`open_pairs` picks the reader from the path. Both validate their input when constructed and raise
:class:`mmlib.data.protocol.DatasetError` with a message that says where the problem is and what to do: both check
every caption with the same rule, :func:`mmlib.data.protocol.validate_caption` (UTF-8, not blank, no control
character), when they are constructed; an unreadable image (or one too large to decode safely) is reported by
``image(i)``, which names the file (or shard and key). Images are decoded lazily; only the index and the captions
are held in memory. (CelebA faces, a labelled image folder, are :mod:`mmlib.data.celeba`.)
"""

from __future__ import annotations

import csv
import io
import os
import re
import tarfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import braceexpand
from PIL import Image

from mmlib.core.artifacts import file_sha256, stable_hash
from mmlib.data.protocol import (
    IMAGE_EXTENSIONS,
    DatasetError,
    PairDataset,
    as_path,
    check_file,
    check_folder,
    check_index,
    load_image,
    not_utf8_error,
    validate_caption,
)

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
        if the file is missing, a directory, empty or not UTF-8, lacks a column (or has it twice), has a malformed
        row, an empty image path or a caption that :func:`~mmlib.data.protocol.validate_caption` rejects (the line
        number is given); or if an argument has the wrong type.
    """

    def __init__(self, path: str | Path, image_root: str | Path | None = None, image_key: str = "filepath",
                 caption_key: str = "title", delimiter: str | None = None) -> None:
        for name, value in (("image_key", image_key), ("caption_key", caption_key)):
            if not isinstance(value, str) or not value:
                raise DatasetError(f"CsvPairs: {name} must be a non-empty column name, got {value!r}.")
        if image_key == caption_key:
            raise DatasetError(f"CsvPairs: image_key and caption_key are both {image_key!r}; name two different "
                               "columns.")
        self.path = as_path(path, "CsvPairs: path").resolve()
        check_file(self.path, "CSV file", f"pass the path of a CSV/TSV with columns {image_key!r} and "
                                          f"{caption_key!r}")
        if delimiter is None:
            delimiter = _DELIMITERS.get(self.path.suffix.lower())
            if delimiter is None:
                raise DatasetError(f"cannot infer the delimiter of {self.path.name} from its extension; "
                                   "name it .csv or .tsv, or pass delimiter=',' or delimiter='\\t'.")
        elif not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n':
            raise DatasetError(f"CsvPairs: delimiter must be one character other than a quote or a line break "
                               f"(e.g. ',' or '\\t'), got {delimiter!r}.")
        self.delimiter = delimiter
        if image_root is not None:
            self.image_root = as_path(image_root, "CsvPairs: image_root").resolve()
            check_folder(self.image_root, "image_root", "pass the folder the CSV's relative image paths start from")
        else:
            self.image_root = self.path.parent
        self.image_key, self.caption_key = image_key, caption_key
        self._paths, self._captions, self._lines = self._parse()
        self._fingerprint = stable_hash("CsvPairs", file_sha256(self.path), str(self.image_root),
                                        image_key, caption_key, delimiter)

    def _parse(self) -> tuple[list[str], list[str], list[int]]:
        paths: list[str] = []
        captions: list[str] = []
        lines: list[int] = []
        try:
            handle = open(self.path, newline="", encoding="utf-8-sig")
        except OSError as err:
            raise DatasetError(f"cannot read CSV file {self.path} ({err.strerror or err}); check its "
                               "permissions.") from err
        with handle:
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
                twice = [k for k in (self.image_key, self.caption_key) if header.count(k) > 1]
                if twice:
                    raise DatasetError(f"{self.path}, line 1: the header {header} names column {twice[0]!r} "
                                       f"{header.count(twice[0])} times; rename the duplicates so that each "
                                       "column is unique.")
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
                    path = row[img_col].strip()
                    if not path:
                        raise DatasetError(f"{self.path}, line {line}: empty {self.image_key!r}; every row needs an "
                                           "image path and a caption. Fix or remove the row.")
                    caption = validate_caption(row[cap_col], f"{self.path}, line {line}", self.caption_key)
                    paths.append(path)
                    captions.append(caption)
                    lines.append(line)
            except csv.Error as err:
                raise DatasetError(f"{self.path}, line {reader.line_num}: not valid CSV ({err}); fix the line "
                                   "(quote fields that hold quotes or the delimiter).") from err
            except UnicodeDecodeError:
                raise not_utf8_error(self.path) from None
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
        check_file(path, "image", f"{where} must name an image file; check the path in the CSV and image_root "
                                  f"(now {self.image_root})")
        return load_image(path, f"image {path} of {where}", "replace or remove it")

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
    if isinstance(shards, (str, os.PathLike)):
        if not str(shards).strip():
            raise DatasetError("WebDatasetPairs: shards is an empty string; pass a list of .tar paths or a brace "
                               "pattern such as 'cc3m/{00000..00331}.tar'.")
        try:
            names = list(braceexpand.braceexpand(str(shards)))
        except ValueError as err:  # braceexpand.UnbalancedBracesError
            raise DatasetError(f"shard pattern {str(shards)!r} is malformed ({err}); write it as "
                               "'folder/{00000..00099}.tar'.") from None
    elif isinstance(shards, Sequence):
        names = []
        for i, shard in enumerate(shards):
            if not isinstance(shard, (str, os.PathLike)) or not str(shard).strip():
                raise DatasetError(f"WebDatasetPairs: shards[{i}] must be the path of a .tar shard, got {shard!r}.")
            names.append(str(shard))
    else:
        raise DatasetError(f"WebDatasetPairs: shards must be a path, a brace pattern or a list of paths, got "
                           f"{shards!r} ({type(shards).__name__}).")
    if not names:
        raise DatasetError("no shard given; pass a list of .tar paths or a brace pattern such as "
                           "'cc3m/{00000..00331}.tar'.")
    paths = [Path(name).expanduser().resolve() for name in names]
    seen: set[Path] = set()
    for path in paths:
        if path in seen:
            raise DatasetError(f"shard {path} is given twice; list every shard once (its pairs would be counted "
                               "twice).")
        seen.add(path)
    folders = [p for p in paths if p.is_dir()]
    if folders:
        raise DatasetError(f"shard {folders[0]} is a directory, not a .tar file; pass the shard files, e.g. "
                           f"'{folders[0]}/{{00000..00099}}.tar'.")
    missing = [p for p in paths if not p.is_file()]
    if len(missing) == len(paths):
        raise DatasetError(f"no shard found: none of the {len(paths)} path(s) from {shards!r} exists "
                           f"(first: {paths[0]}). Check the pattern and the folder.")
    if missing:
        shown = ", ".join(str(p) for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(f"{len(missing)} of {len(paths)} shards do not exist: {shown}. Fix the pattern "
                           "or download the missing shards.")
    return paths


_BLOCK = 512  # tar block size
_MAX_CAPTION_BYTES = 1 << 20  # a caption member larger than this is not a caption


@dataclass
class _ShardIndex:
    """What indexing one shard found: member groups by key, caption bytes, fingerprint rows, truncation."""

    groups: dict[str, dict[str, _Member]]
    texts: dict[str, bytes]
    rows: list[tuple[str, int, str, str, int, int]]
    truncated_at: int | None = None  # byte offset where the shard breaks off
    problem: str = ""  # how it breaks off
    cut_keys: tuple[str, ...] = ()  # keys whose members may lie beyond the cut


#: What tarfile says when a file ends before a header is complete (a cut shard, not a garbled one).
_CUT_MESSAGES = ("unexpected end of data", "truncated header", "empty header")


def _index_shard(s: int, shard: Path) -> _ShardIndex:
    """Index shard number ``s``: every file member's offset and size, the ``.txt`` bytes, and where it breaks off.

    tarfile stops silently at a header cut short or garbled after the first one, and does not check that a member's
    data fits in the file: both are checked here (a shard must end with tar's end-of-archive zero block).
    """
    size = shard.stat().st_size
    index = _ShardIndex({}, {}, [])
    last_key: str | None = None
    offset = 0
    try:
        with open(shard, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            for info in tar:
                offset = info.offset
                match = _KEY_EXT.match(info.name) if info.isfile() else None
                key = match.group(1) if match else None
                if info.offset_data + info.size > size:
                    index.truncated_at = size
                    index.problem = (f"member {info.name!r} (header at byte {info.offset}) holds {info.size} bytes "
                                     f"from byte {info.offset_data}, but the file ends at byte {size}")
                    index.cut_keys = tuple(k for k in (last_key, key) if k is not None)
                    break
                if match is None:
                    continue
                ext = match.group(2).lower()
                last_key = key
                group = index.groups.setdefault(key, {})
                if ext in group:
                    raise DatasetError(f"shard {shard}: duplicate member {info.name!r} for key "
                                       f"{key!r}; rewrite the shard with unique keys.")
                group[ext] = _Member(s, info.offset_data, info.size)
                index.rows.append((shard.name, s, key, ext, info.offset_data, info.size))
                if ext == "txt":
                    if info.size > _MAX_CAPTION_BYTES:
                        raise DatasetError(f"shard {shard}, key {key!r}: caption member {info.name!r} holds "
                                           f"{info.size} bytes, more than a caption ({_MAX_CAPTION_BYTES}); "
                                           "rewrite the shard without it.")
                    handle.seek(info.offset_data)
                    index.texts[key] = handle.read(info.size)
            else:
                offset = tar.offset  # where tarfile stopped: the end-of-archive block, or a header it could not read
                handle.seek(offset)
                tail = handle.read(_BLOCK)
                if not tail:
                    index.truncated_at = offset
                    index.problem = "it ends after a member without tar's end-of-archive block"
                    index.cut_keys = (last_key,) if last_key else ()
                elif tail.count(0) == len(tail) < _BLOCK:  # every member is whole, the end marker is cut
                    index.truncated_at = offset + len(tail)
                    index.problem = (f"it ends inside tar's end-of-archive block ({len(tail)} of {_BLOCK} zero "
                                     "bytes): the file was cut after its last member")
                elif tail.count(0) != len(tail):
                    if len(tail) == _BLOCK:
                        raise DatasetError(f"shard {shard}: unreadable tar header at byte {offset} (the shard is "
                                           "corrupt from there on); re-download or rewrite it.")
                    index.truncated_at = offset
                    index.problem = f"it ends inside a tar header ({len(tail)} of {_BLOCK} bytes)"
                    index.cut_keys = (last_key,) if last_key else ()
    except tarfile.ReadError as err:
        with open(shard, "rb") as handle:
            magic = handle.read(2)
        if magic == b"\x1f\x8b":
            raise DatasetError(f"shard {shard} is gzip-compressed; decompress it (gunzip) to an uncompressed .tar, "
                               "which can be read at random offsets.") from err
        if size == 0:
            raise DatasetError(f"shard {shard} is empty (0 bytes); re-download it.") from err
        if str(err) not in _CUT_MESSAGES:  # not a cut: garbage
            raise DatasetError(f"shard {shard} is not a readable uncompressed tar file ({err}); re-download it, or "
                               "decompress it if it is compressed.") from err
        if not index.rows:  # cut inside the first member's header(s): nothing to keep
            raise DatasetError(f"shard {shard} is truncated at byte {size}: it ends inside the header of its first "
                               "member; re-download it.") from err
        # the file ends before the next header: inside a (PAX) header, or in the last member's padding
        index.truncated_at = size
        index.problem = (f"it ends after the member whose header is at byte {offset}, inside the next header or "
                         "the padding before it")
        index.cut_keys = (last_key,) if last_key else ()
    except (tarfile.TarError, OSError) as err:
        where = f" near byte {offset}" if offset else ""
        raise DatasetError(f"shard {shard} is not a readable uncompressed tar file ({err}{where}); "
                           "re-download it, or decompress it if it is gzipped.") from err
    return index


class WebDatasetPairs:
    """Image-caption pairs in local webdataset tar shards (img2dataset's output, e.g. CC3M).

    A sample is the group of members sharing a key (webdataset's convention: the path up to the first dot of
    the file name): an image ``{key}.jpg|.jpeg|.png|.webp`` and a caption ``{key}.txt``; other members
    (``{key}.json``) are ignored. An index of member offsets is built once, so ``image(i)`` is random
    access. Keys lacking an image or a caption (img2dataset's failed downloads) are skipped with one
    warning that counts them. Captions are read and checked when the index is built, with the CSV reader's rule
    (:func:`~mmlib.data.protocol.validate_caption`): a blank, non-UTF-8 or control-character caption of a complete
    sample is an error naming the shard and the key.

    Parameters
    ----------
    shards : str, Path or sequence of them
        Uncompressed ``.tar`` shards: a list of paths, or one path / brace pattern
        (``"cc3m/{00000..00331}.tar"``).
    on_truncated : {"error", "skip"}
        A shard that breaks off (cut inside a member's data or header, or ending without tar's end-of-archive
        block, as an interrupted download leaves it): ``"error"`` (default) raises :class:`DatasetError` naming the
        shard and the byte offset; ``"skip"`` keeps the shard's complete samples, drops the ones cut off, and
        reports them in ``truncated`` / ``n_truncated`` and one warning.

    Attributes
    ----------
    n_skipped : int
        Keys lacking an image or a caption (not counting those cut off by truncation).
    truncated : list of (str, int)
        ``(shard path, byte offset)`` of every truncated shard (``on_truncated="skip"`` only; else empty).
    n_truncated : int
        Samples dropped because a truncated shard cut them off.

    Notes
    -----
    ``fingerprint`` hashes the shard file names and sizes and the member index (names, sizes, offsets),
    not the image bytes.

    Raises
    ------
    DatasetError
        if no shard exists, a shard path is a directory or given twice, a shard is not a readable uncompressed tar,
        is truncated (unless skipped) or has a corrupt header, a key is duplicated within a shard, a caption is
        unusable, or the shards hold no complete pair.
    """

    def __init__(self, shards: str | Path | Sequence[str | Path], on_truncated: str = "error") -> None:
        if on_truncated not in ("error", "skip"):
            raise DatasetError(f"WebDatasetPairs: on_truncated must be 'error' or 'skip', got {on_truncated!r}.")
        self.shards: list[Path] = _expand_shards(shards)
        self.on_truncated = on_truncated
        self._samples: list[_Sample] = []
        self._captions: list[str] = []
        index_rows: list[tuple[str, int, str, str, int, int]] = []
        skipped: list[tuple[str, str]] = []
        self.truncated: list[tuple[str, int]] = []
        self.n_truncated = 0
        for s, shard in enumerate(self.shards):
            index = _index_shard(s, shard)
            if index.truncated_at is not None:
                if on_truncated == "error":
                    raise DatasetError(f"shard {shard} is truncated at byte {index.truncated_at}: {index.problem}. "
                                       "Re-download or rewrite it, or pass on_truncated='skip' to keep its "
                                       "complete samples.")
                self.truncated.append((str(shard), index.truncated_at))
            index_rows.extend(index.rows)
            for key, group in index.groups.items():
                image_ext = next((e for e in IMAGE_EXTENSIONS if e in group), None)
                if image_ext is None or "txt" not in group:
                    if key in index.cut_keys:
                        self.n_truncated += 1
                    else:
                        skipped.append((shard.name, key))
                    continue
                caption = validate_caption(index.texts[key], f"shard {shard}, key {key!r}", f"{key}.txt")
                self._samples.append(_Sample(key, group[image_ext], group["txt"]))
                self._captions.append(caption)
            for key in index.cut_keys:  # a cut member whose key had no member before the cut
                if key not in index.groups:
                    self.n_truncated += 1
        if not self._samples:
            raise DatasetError(f"the {len(self.shards)} shard(s) hold no complete image+caption pair "
                               f"({len(skipped)} incomplete keys); expected members {{key}}.jpg/.png/.jpeg/"
                               ".webp and {key}.txt as written by img2dataset.")
        if skipped:
            shard_name, key = skipped[0]
            warnings.warn(f"skipped {len(skipped)} of {len(skipped) + len(self._samples)} keys lacking an "
                          f"image or a caption (first: key {key!r} in {shard_name})", UserWarning,
                          stacklevel=2)
        if self.truncated:
            shard_path, at = self.truncated[0]
            warnings.warn(f"{len(self.truncated)} truncated shard(s) (first: {shard_path} at byte {at}): kept their "
                          f"complete samples, dropped {self.n_truncated} cut off; re-download them to use all of "
                          "their data", UserWarning, stacklevel=2)
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
        truncated = f", truncated={self.n_truncated}" if self.truncated else ""
        return f"WebDatasetPairs({len(self.shards)} shards, n={len(self)}, skipped={self.n_skipped}{truncated})"

    def key(self, index: int) -> str:
        """The webdataset key of the ``index``-th pair."""
        return self._samples[check_index(index, len(self))].key

    def _read(self, member: _Member) -> bytes:
        with open(self.shards[member.shard], "rb") as handle:
            handle.seek(member.offset)
            data = handle.read(member.size)
        if len(data) != member.size:
            raise OSError(f"truncated member: read {len(data)} of {member.size} bytes at byte {member.offset}; "
                          "the shard changed after it was indexed")
        return data

    def image(self, index: int) -> Image.Image:
        """The ``index``-th image, RGB.

        Raises
        ------
        DatasetError
            if it cannot be read or decoded, or is too large to decode safely (the message names the shard and
            the key).
        """
        sample = self._samples[check_index(index, len(self))]
        shard = self.shards[sample.image.shard]
        where = f"image of key {sample.key!r} in shard {shard}"
        try:
            data = self._read(sample.image)
        except OSError as err:
            raise DatasetError(f"{where} is unreadable ({err}); re-download the shard or drop the key.") from err
        return load_image(io.BytesIO(data), where, "re-download the shard or drop the key")

    def caption(self, index: int) -> str:
        """The ``index``-th caption (UTF-8, surrounding whitespace stripped; checked when the index was built)."""
        return self._captions[check_index(index, len(self))]


def open_pairs(pairs: str | Path) -> PairDataset:
    """A real paired corpus by path: webdataset shards (a path or brace pattern containing ``.tar``) or a
    CSV/TSV of (image path, caption).

    Raises
    ------
    DatasetError
        if ``pairs`` is not a path, is a directory, or is neither a ``.csv``/``.tsv`` file nor ``.tar`` shards
        (and whatever the chosen reader raises).
    """
    path = as_path(pairs, "pairs")
    text = str(pairs)
    if path.suffix.lower() in _DELIMITERS:
        return CsvPairs(path)
    if ".tar" in text.lower():
        return WebDatasetPairs(text)
    if path.is_dir():
        raise DatasetError(f"pairs {path} is a directory; pass a CSV/TSV file or webdataset shards (a .tar path "
                           f"or a brace pattern such as '{path}/{{00000..00099}}.tar').")
    raise DatasetError(f"pairs {text!r} is neither a CSV/TSV file (.csv, .tsv) nor webdataset shards (.tar); "
                       "rename it or pass CsvPairs(path, delimiter=...) / WebDatasetPairs(shards) directly.")
