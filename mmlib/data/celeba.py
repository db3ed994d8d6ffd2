"""CelebA faces for the gender study (chapter 06), as a :class:`mmlib.data.protocol.PairDataset`.

:class:`CelebAFaces` reads CelebA's own layout, ``img_align_celeba/`` + ``list_attr_celeba.txt`` (+ the optional
``list_eval_partition.txt``), and yields the images, one binary attribute as labels and a fixed caption. It
validates the layout when constructed and raises :class:`mmlib.data.protocol.DatasetError` naming the file and line.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
from PIL import Image

from mmlib.core.artifacts import file_sha256, stable_hash
from mmlib.data.protocol import DatasetError, as_path, check_file, check_folder, check_index, load_image, read_text

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
        for a missing folder or file (or a file where a folder is expected, and vice versa), a file that is not
        UTF-8 or a malformed line (its line number is given), an image name that is not a plain file name, an
        unknown attribute (with the closest names), an unknown partition, a parameter of the wrong type or value,
        or no image left; ``image(i)`` names an unreadable file (or one too large to decode safely).
    """

    def __init__(self, root: str | Path, attribute: str = "Male", values: tuple[str, str] = ("woman", "man"),
                 partition: str | None = None, caption: str = "a photo of a person", limit: int | None = None,
                 attr_file: str = "list_attr_celeba.txt", image_dir: str = "img_align_celeba") -> None:
        for name, value in (("attribute", attribute), ("caption", caption), ("attr_file", attr_file),
                            ("image_dir", image_dir)):
            if not isinstance(value, str) or not value.strip():
                raise DatasetError(f"CelebAFaces: {name} must be a non-empty string, got {value!r}.")
        self.root = as_path(root, "CelebAFaces: root").resolve()
        check_folder(self.root, "CelebA folder", f"pass the folder that holds {attr_file} and {image_dir}/")
        self.attr_path = self.root / attr_file
        self.image_root = self.root / image_dir
        layout = f"the folder {self.root} must hold {attr_file} and {image_dir}/ as CelebA distributes them"
        check_file(self.attr_path, "CelebA attribute table", layout)
        check_folder(self.image_root, "CelebA image folder", layout)
        if (not isinstance(values, (tuple, list)) or len(values) != 2 or len(set(values)) != 2
                or not all(isinstance(v, str) and v.strip() for v in values)):
            raise DatasetError(f"values must name the two values of {attribute!r} (for -1, then +1) as two "
                               f"different non-empty strings, got {values!r}")
        if partition is not None and partition not in CELEBA_PARTITIONS:
            raise DatasetError(f"unknown partition {partition!r}; choose one of {list(CELEBA_PARTITIONS)} or None")
        if limit is not None and (not isinstance(limit, (int, np.integer)) or isinstance(limit, bool) or limit < 1):
            raise DatasetError(f"limit must be a positive number of images (an integer) or None, got {limit!r}")
        self.attribute, self.values = attribute, tuple(values)
        self.partition, self.caption_template = partition, caption
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
        lines = read_text(path).splitlines()
        if len(lines) < 2:
            raise DatasetError(f"{path} has {len(lines)} line(s); CelebA's attribute table starts with the image "
                               "count (line 1) and the attribute names (line 2).")
        try:
            declared = int(lines[0].strip())
        except ValueError:
            raise DatasetError(f"{path}, line 1: expected the number of images, got {lines[0][:60]!r}.") from None
        if declared < 0:
            raise DatasetError(f"{path}, line 1: the number of images must not be negative, got {declared}.")
        names = lines[1].split()
        if not names:
            raise DatasetError(f"{path}, line 2: expected the attribute names, found an empty line.")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise DatasetError(f"{path}, line 2: attribute name(s) {repeated} appear more than once; each column "
                               "needs a unique name.")
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
                raise DatasetError(f"{path}, line {number}: value {bad!r} for {fields[0]}; "
                                   "attribute values are 1 or -1.")
            if fields[0] in seen:
                raise DatasetError(f"{path}, line {number}: {fields[0]} is listed twice; remove the duplicate line.")
            if "/" in fields[0] or "\\" in fields[0] or fields[0] in (".", ".."):
                raise DatasetError(f"{path}, line {number}: {fields[0]!r} is not a plain file name; list the images "
                                   f"of {self.image_root} by name (e.g. 000001.jpg).")
            seen.add(fields[0])
            files.append(fields[0])
            column.append(int(fields[1 + col]))
            numbers.append(number)
        if len(files) != declared:
            raise DatasetError(f"{path}: line 1 declares {declared} images but the table lists {len(files)}; the "
                               "file is truncated or was edited.")
        return names, files, np.asarray(column, dtype=np.int64), numbers

    def _partition_mask(self, path: Path, files: list[str], wanted: int) -> np.ndarray:
        if path.is_dir():
            raise DatasetError(f"partition {self.partition!r} needs the file {path}, but it is a directory; replace "
                               "it with CelebA's list_eval_partition.txt or pass partition=None.")
        if not path.is_file():
            raise DatasetError(f"partition {self.partition!r} needs {path} (CelebA's list_eval_partition.txt); "
                               "add it or pass partition=None.")
        part: dict[str, int] = {}
        for number, line in enumerate(read_text(path).splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise DatasetError(f"{path}, line {number}: expected 'FILE 0|1|2', got {line.strip()[:60]!r}.")
            if fields[0] in part and part[fields[0]] != int(fields[1]):
                raise DatasetError(f"{path}, line {number}: {fields[0]} is listed again with another partition "
                                   f"({fields[1]}, before {part[fields[0]]}); keep one line per image.")
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
        return self._files[check_index(index, len(self))]

    def image(self, index: int) -> Image.Image:
        """The ``index``-th image, RGB.

        Raises
        ------
        DatasetError
            if the file is missing or cannot be decoded (the message names the file and its table line).
        """
        path = self.image_root / self.filename(index)
        where = f"line {self._lines[index]} of {self.attr_path}"
        if path.is_dir():
            raise DatasetError(f"image {path} ({where}) is a directory, not an image file; replace it with the "
                               "image.")
        if not path.is_file():
            raise DatasetError(f"image {path} ({where}) does not exist; is {self.image_root} complete?")
        return load_image(path, f"image {path} ({where})", "replace or remove it")

    def caption(self, index: int) -> str:
        """The caption of the ``index``-th image (``caption`` with ``{value}`` filled in)."""
        return self.caption_template.replace("{value}", self.values[int(self.labels[check_index(index, len(self))])])
