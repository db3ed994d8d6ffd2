"""Real image-caption corpora for the ``paper`` profile, as :class:`mmlib.data.protocol.PairDataset` objects.

Two on-disk formats, the two that open_clip's training code reads:

* :class:`CsvPairs`: a CSV/TSV file with a header row and one image path + caption per row (open_clip's
  ``--dataset-type csv``: columns ``filepath`` and ``title``).
* :class:`WebDatasetPairs`: local webdataset tar shards as written by ``img2dataset`` (e.g. for CC3M):
  ``{key}.jpg`` (or ``.png``, ``.jpeg``, ``.webp``) + ``{key}.txt`` (+ an optional ``{key}.json``).

and one labelled image folder, for the gender study (chapter 06):

* :class:`CelebAFaces`: CelebA's own layout, ``img_align_celeba/`` + ``list_attr_celeba.txt`` (+ the optional
  ``list_eval_partition.txt``), yielding the images, one binary attribute as labels and a fixed caption.

Both validate their input when constructed and raise :class:`mmlib.data.protocol.DatasetError` with a message that
says where the problem is and what to do; an unreadable image is reported by ``image(i)``, which names the
file (or shard and key). Images are decoded lazily; only the index is held in memory.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
import tarfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import braceexpand
import numpy as np
from PIL import Image, UnidentifiedImageError

from mmlib.core.artifacts import file_sha256, stable_hash
from mmlib.data.protocol import DatasetError

__all__ = ["CsvPairs", "WebDatasetPairs", "CelebAFaces", "IMAGE_EXTENSIONS", "CELEBA_PARTITIONS"]

#: Image member extensions recognised in webdataset shards, in order of preference.
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
_DELIMITERS = {".csv": ",", ".tsv": "\t"}


def _open_rgb(source: Path | io.BytesIO) -> Image.Image:
    """Decode an image fully and convert it to RGB (raises ``OSError``/``UnidentifiedImageError``)."""
    with Image.open(source) as img:
        img.load()
        return img.convert("RGB")


def _check_index(index: int, n: int) -> int:
    if not 0 <= index < n:
        raise IndexError(f"index {index} is out of range for a dataset of {n} pairs")
    return index


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
        path = Path(self._paths[_check_index(index, len(self))]).expanduser()
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
            return _open_rgb(path)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise DatasetError(f"image {path} of {where} is unreadable ({err}); replace or remove it.") from err

    def caption(self, index: int) -> str:
        """The ``index``-th caption."""
        return self._captions[_check_index(index, len(self))]


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
        return self._samples[_check_index(index, len(self))].key

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
        sample = self._samples[_check_index(index, len(self))]
        shard = self.shards[sample.image.shard]
        try:
            return _open_rgb(io.BytesIO(self._read(sample.image)))
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise DatasetError(f"image of key {sample.key!r} in shard {shard} is unreadable ({err}); "
                               "re-download the shard or drop the key.") from err

    def caption(self, index: int) -> str:
        """The ``index``-th caption (UTF-8, surrounding whitespace stripped)."""
        sample = self._samples[_check_index(index, len(self))]
        try:
            return self._read(sample.caption).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(f"caption of key {sample.key!r} in shard {self.shards[sample.caption.shard]} "
                               f"is unreadable ({err}).") from err


#: CelebA's evaluation partitions (``list_eval_partition.txt``: 0 train, 1 validation, 2 test).
CELEBA_PARTITIONS: dict[str, int] = {"train": 0, "val": 1, "test": 2}


class CelebAFaces:
    """Face images with one binary attribute, in CelebA's own layout, as a :class:`~mmlib.data.protocol.PairDataset`.

    Layout of ``root`` (as distributed by CelebA)::

        list_attr_celeba.txt      line 1: the number of images; line 2: the 40 attribute names;
                                  then one line per image: "000001.jpg -1  1  1 -1 ..." (values 1 / -1)
        img_align_celeba/         the images named in the first column
        list_eval_partition.txt   optional: "000001.jpg 0" (0 train, 1 val, 2 test); needed for ``partition``

    Parameters
    ----------
    root : str or Path
        The CelebA folder.
    attribute : str
        The binary attribute used as labels (default ``"Male"``).
    values : (str, str)
        Names of the attribute's two values, for -1 then +1 (label 0 then 1): default ``("woman", "man")``
        for ``Male``, so that the labels follow the world's order (female 0, male 1).
    partition : {"train", "val", "test"} or None
        Keep one evaluation partition (needs ``list_eval_partition.txt``); None keeps every image.
    caption : str
        The caption of every image [ours]: default a neutral ``"a photo of a person"`` (CelebA has no captions
        and a caption naming the value would leak the label into the text side). ``"{value}"`` is replaced by
        the image's value name.
    limit : int, optional
        Keep only the first ``limit`` images (after the partition filter), e.g. for a quick run.
    attr_file, image_dir : str
        File and folder names inside ``root``.

    Attributes
    ----------
    labels : (n,) int array
        0 for -1, 1 for +1.
    attribute_names : list of str
        The attribute table's 40 (or however many) names.

    Notes
    -----
    ``fingerprint`` hashes the attribute (and partition) file bytes and the parameters, not the images.

    Raises
    ------
    DatasetError
        for a missing folder or file, a malformed line (its line number is given), an unknown attribute (with
        the closest names), an unknown partition, or no image left; ``image(i)`` names an unreadable file.
    """

    def __init__(self, root: str | Path, attribute: str = "Male", values: tuple[str, str] = ("woman", "man"),
                 partition: str | None = None, caption: str = "a photo of a person", limit: int | None = None,
                 attr_file: str = "list_attr_celeba.txt", image_dir: str = "img_align_celeba") -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DatasetError(f"CelebA folder {self.root} does not exist; pass the folder that holds "
                               f"{attr_file} and {image_dir}/.")
        self.attr_path = self.root / attr_file
        self.image_root = self.root / image_dir
        for path, what in ((self.attr_path, "attribute table"), (self.image_root, "image folder")):
            if not path.exists():
                raise DatasetError(f"CelebA {what} {path} does not exist; the folder {self.root} must hold "
                                   f"{attr_file} and {image_dir}/ as CelebA distributes them.")
        if len(values) != 2 or len(set(values)) != 2:
            raise DatasetError(f"values must name the two values of {attribute!r} (for -1, then +1), got {values}")
        if partition is not None and partition not in CELEBA_PARTITIONS:
            raise DatasetError(f"unknown partition {partition!r}; choose one of {list(CELEBA_PARTITIONS)} or None")
        if limit is not None and limit < 1:
            raise DatasetError(f"limit must be a positive number of images, got {limit}")
        self.attribute, self.values, self.partition, self.caption_template = attribute, tuple(values), partition, caption
        names, files, column, lines = self._parse_attributes(attribute)
        self.attribute_names = names
        keep = np.ones(len(files), bool)
        parts = [file_sha256(self.attr_path)]
        if partition is not None:
            part_path = self.root / "list_eval_partition.txt"
            keep = self._partition_mask(part_path, files, CELEBA_PARTITIONS[partition])
            parts.append(file_sha256(part_path))
        index = np.flatnonzero(keep)[:limit]
        if len(index) == 0:
            raise DatasetError(f"no image left in {self.root} (partition {partition!r}, limit {limit}).")
        self._files = [files[i] for i in index]
        self._lines = [lines[i] for i in index]
        self.labels = (column[index] > 0).astype(np.int64)
        self._fingerprint = stable_hash("CelebAFaces", parts, str(self.image_root), attribute, self.values,
                                        partition, caption, limit)

    def _parse_attributes(self, attribute: str) -> tuple[list[str], list[str], np.ndarray, list[int]]:
        path = self.attr_path
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        if len(lines) < 2:
            raise DatasetError(f"{path} has {len(lines)} line(s); CelebA's attribute table starts with the image "
                               "count (line 1) and the attribute names (line 2).")
        try:
            declared = int(lines[0].strip())
        except ValueError:
            raise DatasetError(f"{path}, line 1: expected the number of images, got {lines[0][:60]!r}.") from None
        names = lines[1].split()
        if not names:
            raise DatasetError(f"{path}, line 2: expected the attribute names, found an empty line.")
        if attribute not in names:
            close = difflib.get_close_matches(attribute, names, n=3)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise DatasetError(f"unknown attribute {attribute!r}: {path.name} has {names}.{hint}")
        col = names.index(attribute)
        files: list[str] = []
        column: list[int] = []
        numbers: list[int] = []
        seen: set[str] = set()
        for number, line in enumerate(lines[2:], start=3):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != len(names) + 1:
                raise DatasetError(f"{path}, line {number}: {len(fields)} fields, expected {len(names) + 1} (a file "
                                   f"name and one value per attribute of line 2).")
            if any(v not in ("1", "-1") for v in fields[1:]):
                bad = next(v for v in fields[1:] if v not in ("1", "-1"))
                raise DatasetError(f"{path}, line {number}: value {bad!r} for {fields[0]}; attribute values are 1 or -1.")
            if fields[0] in seen:
                raise DatasetError(f"{path}, line {number}: {fields[0]} is listed twice.")
            seen.add(fields[0])
            files.append(fields[0])
            column.append(int(fields[1 + col]))
            numbers.append(number)
        if len(files) != declared:
            raise DatasetError(f"{path}: line 1 declares {declared} images but the table lists {len(files)}; the "
                               "file is truncated or was edited.")
        return names, files, np.asarray(column, dtype=np.int64), numbers

    def _partition_mask(self, path: Path, files: list[str], wanted: int) -> np.ndarray:
        if not path.is_file():
            raise DatasetError(f"partition {self.partition!r} needs {path} (CelebA's list_eval_partition.txt); "
                               "add it or pass partition=None.")
        part: dict[str, int] = {}
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                    raise DatasetError(f"{path}, line {number}: expected 'FILE 0|1|2', got {line.strip()[:60]!r}.")
                part[fields[0]] = int(fields[1])
        missing = [f for f in files if f not in part]
        if missing:
            raise DatasetError(f"{path} has no partition for {len(missing)} image(s) of the attribute table "
                               f"(first: {missing[0]}).")
        return np.array([part[f] == wanted for f in files])

    @property
    def fingerprint(self) -> str:
        """Hash of the attribute (and partition) table bytes and of the parameters (not of the images)."""
        return self._fingerprint

    def __len__(self) -> int:
        return len(self._files)

    def __repr__(self) -> str:
        counts = np.bincount(self.labels, minlength=2)
        return (f"CelebAFaces({str(self.root)!r}, {self.attribute!r}, n={len(self)}, "
                f"{self.values[0]}={counts[0]}, {self.values[1]}={counts[1]}, partition={self.partition!r})")

    def filename(self, index: int) -> str:
        """The file name of the ``index``-th image (as listed in the attribute table)."""
        return self._files[_check_index(index, len(self))]

    def image(self, index: int) -> Image.Image:
        """The ``index``-th image, RGB.

        Raises
        ------
        DatasetError
            if the file is missing or cannot be decoded (the message names the file and its table line).
        """
        path = self.image_root / self.filename(index)
        where = f"line {self._lines[index]} of {self.attr_path}"
        if not path.is_file():
            raise DatasetError(f"image {path} ({where}) does not exist; is {self.image_root} complete?")
        try:
            return _open_rgb(path)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise DatasetError(f"image {path} ({where}) is unreadable ({err}); replace or remove it.") from err

    def caption(self, index: int) -> str:
        """The caption of the ``index``-th image (``caption`` with ``{value}`` filled in)."""
        return self.caption_template.replace("{value}", self.values[int(self.labels[_check_index(index, len(self))])])
