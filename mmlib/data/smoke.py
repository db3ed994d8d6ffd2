"""A small corpus in the real formats, written from the generated world: the data of the ``paper`` profile's smoke run.

The ``paper`` profile reads data that only exist on a user's disk: an image-caption corpus as a CSV/TSV or as
img2dataset's webdataset shards (:mod:`mmlib.data.corpora`), CelebA in its own layout (:mod:`mmlib.data.celeba`)
and a concept word list for SpLiCE. :func:`write_smoke_data` writes a few dozen generated pairs in each of those
formats, so that every reader and every ``paper`` code path can run offline (in CI, with random weights) on files
that are byte-for-byte in the formats a user brings:

* ``pairs.csv`` + ``images/*.jpg`` (columns ``filepath``, ``title``; paths relative to the CSV's folder);
* ``wds/{00000..NNNNN}.tar``: ``{key}.jpg`` + ``{key}.txt`` + ``{key}.json`` per sample, as img2dataset writes them;
* ``celeba/``: ``list_attr_celeba.txt`` with CelebA's 40 attribute names, ``img_align_celeba/*.jpg`` and
  ``list_eval_partition.txt``; ``Male`` is the world's planted gender (+1 for ``male``);
* ``vocabulary.txt``: one concept per line, the world's factor values (so that SpLiCE's audit finds concepts tied
  to the attributes of the data) followed by distractor words that no factor uses.

Everything is written into a temporary sibling folder and renamed into place: an interrupted call leaves no
partial corpus. The same ``(n, seed, image_size)`` gives the same bytes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import tarfile
import uuid
from pathlib import Path

import numpy as np

from mmlib.core.errors import InputError
from mmlib.core.validation import as_path, at_least, validate_config
from mmlib.data.protocol import PairDataset
from mmlib.data.world import WorldConfig, generate_world

__all__ = ["CELEBA_ATTRIBUTES", "SmokeConfig", "SmokeData", "write_smoke_data", "write_csv_corpus",
           "write_wds_shards", "write_celeba", "write_vocabulary"]

#: CelebA's 40 attribute names, in the order of ``list_attr_celeba.txt``.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young")

#: Words of the smoke vocabulary that name no factor of the world (SpLiCE's controls need concepts that are absent).
DISTRACTORS: tuple[str, ...] = ("bicycle", "violin", "volcano", "sandwich", "telescope", "umbrella", "giraffe",
                                "library", "harbor", "lantern")


@dataclasses.dataclass(frozen=True)
class SmokeConfig:
    """What :func:`write_smoke_data` writes.

    Attributes
    ----------
    n : int
        Pairs of the corpus (also the number of CelebA-format faces).
    seed : int
        Seed of the generated world the pairs come from.
    image_size : int
        Side of the images in pixels (the models' preprocessing resizes them).
    shard_size : int
        Samples per webdataset shard.
    """

    n: int = 64
    seed: int = 0
    image_size: int = 64
    shard_size: int = 16

    def __post_init__(self) -> None:
        validate_config(self, n=at_least(2), seed=at_least(0), image_size=at_least(16), shard_size=at_least(1))


@dataclasses.dataclass(frozen=True)
class SmokeData:
    """Where :func:`write_smoke_data` put each format (the values of the chapters' data parameters).

    Attributes
    ----------
    folder : Path
    csv : Path
        The CSV corpus (``pairs`` parameter).
    shards : str
        The webdataset shards as a brace pattern (``pairs`` parameter).
    celeba_root : Path
        The CelebA-format folder (``celeba_root`` parameter of chapter 06).
    vocabulary_file : Path
        The word list (``vocabulary_file`` parameter of chapter 09).
    n : int
        Pairs written.
    """

    folder: Path
    csv: Path
    shards: str
    celeba_root: Path
    vocabulary_file: Path
    n: int


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_csv_corpus(pairs: PairDataset, folder: str | os.PathLike, name: str = "pairs.csv") -> Path:
    """Write ``pairs`` as ``folder/name`` (a CSV, or a TSV for a ``.tsv`` name) plus ``folder/images/*.jpg``.

    Returns the CSV's path. Columns ``filepath`` (relative to ``folder``) and ``title``, open_clip's defaults.
    """
    folder = as_path(folder, "folder")
    if not name.endswith((".csv", ".tsv")):
        raise InputError(f"name must end in .csv or .tsv (the separator follows the extension), got {name!r}")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t" if name.endswith(".tsv") else ",")
        writer.writerow(["filepath", "title"])
        for i in range(len(pairs)):
            (folder / "images" / f"{i:06d}.jpg").write_bytes(_jpeg(pairs.image(i)))
            writer.writerow([f"images/{i:06d}.jpg", pairs.caption(i)])
    return path


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same pairs give the same bytes
    tar.addfile(info, io.BytesIO(data))


def _shard_pattern(folder: Path, n_shards: int) -> str:
    """The brace pattern of shards ``folder/00000.tar`` ... (``mmlib.data.corpora.open_pairs`` expands it)."""
    return str(folder / (f"{{00000..{n_shards - 1:05d}}}.tar" if n_shards > 1 else "00000.tar"))


def write_wds_shards(pairs: PairDataset, folder: str | os.PathLike, shard_size: int = 16) -> str:
    """Write ``pairs`` as img2dataset-style webdataset shards ``folder/00000.tar`` ... and return their brace pattern.

    Each sample is ``{key}.jpg``, ``{key}.txt`` (the caption) and ``{key}.json`` (img2dataset's metadata: key,
    caption, status), with keys ``{shard:05d}{index:04d}``.
    """
    folder = as_path(folder, "folder")
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise InputError(f"shard_size must be a positive integer, got {shard_size!r}")
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-len(pairs) // shard_size))
    for s in range(n_shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for j, i in enumerate(range(s * shard_size, min(len(pairs), (s + 1) * shard_size))):
                key, caption = f"{s:05d}{j:04d}", pairs.caption(i)
                _add_member(tar, f"{key}.jpg", _jpeg(pairs.image(i)))
                _add_member(tar, f"{key}.txt", caption.encode("utf-8"))
                _add_member(tar, f"{key}.json", json.dumps({"key": key, "caption": caption,
                                                            "status": "success"}).encode("utf-8"))
    return _shard_pattern(folder, n_shards)


def write_celeba(images: PairDataset, male: np.ndarray, folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write ``images`` in CelebA's layout under ``folder`` and return it.

    ``male`` ``(n,)`` bool gives the ``Male`` attribute; the other 39 attributes are drawn at random (seeded).
    Image ``i`` (``{i + 1:06d}.jpg``) goes to partition ``i % 3`` of ``list_eval_partition.txt``.
    """
    folder = as_path(folder, "folder")
    male = np.asarray(male)
    if male.shape != (len(images),) or male.dtype != bool:
        raise InputError(f"male must be a bool array with one entry per image ({len(images)}), got "
                         f"{male.dtype} {male.shape}")
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    values = np.where(rng.random((len(images), len(CELEBA_ATTRIBUTES))) < 0.3, 1, -1)
    values[:, CELEBA_ATTRIBUTES.index("Male")] = np.where(male, 1, -1)
    rows = [str(len(images)), " ".join(CELEBA_ATTRIBUTES) + " "]
    for i in range(len(images)):
        name = f"{i + 1:06d}.jpg"
        (folder / "img_align_celeba" / name).write_bytes(_jpeg(images.image(i)))
        rows.append(name + " " + " ".join(f"{v:2d}" for v in values[i]))
    (folder / "list_attr_celeba.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (folder / "list_eval_partition.txt").write_text("".join(f"{i + 1:06d}.jpg {i % 3}\n" for i in range(len(images))),
                                                    encoding="utf-8")
    return folder


def write_vocabulary(words: list[str] | tuple[str, ...], path: str | os.PathLike) -> Path:
    """Write a word list, one concept per line (duplicates removed, first occurrence kept), and return its path."""
    path = as_path(path, "path")
    words = list(dict.fromkeys(w.strip() for w in words))
    if not words or any(not w or "\n" in w for w in words):
        raise InputError("the vocabulary needs at least one concept, each a non-empty single-line string")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(words) + "\n", encoding="utf-8")
    return path


def write_smoke_data(folder: str | os.PathLike, config: SmokeConfig = SmokeConfig()) -> SmokeData:
    """Write the smoke corpus (see the module docstring) into ``folder`` and return where each format is.

    ``folder`` must not exist yet, or be empty: the data are assembled in a temporary sibling and renamed into place.
    """
    folder = as_path(folder, "folder")
    if not isinstance(config, SmokeConfig):
        raise InputError(f"config must be a SmokeConfig, got {type(config).__name__}")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"{folder} exists and is not an empty folder; choose a new folder for the smoke data")
    world = generate_world(WorldConfig(n_train=config.n, n_val=0, n_test=0, image_size=config.image_size,
                                       seed=config.seed))
    pairs = world.subset("train")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex}.tmp"
    try:
        write_csv_corpus(pairs, tmp)
        shards = Path(write_wds_shards(pairs, tmp / "wds", config.shard_size)).name  # the brace pattern's file part
        male = np.asarray(world.factor("gender").values)[pairs.values("gender")] == "male"
        write_celeba(pairs, male, tmp / "celeba", seed=config.seed)
        concepts = [v for f in world.factors for v in f.values] + list(DISTRACTORS)
        write_vocabulary(concepts, tmp / "vocabulary.txt")
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SmokeData(folder=folder, csv=folder / "pairs.csv", shards=str(folder / "wds" / shards),
                     celeba_root=folder / "celeba", vocabulary_file=folder / "vocabulary.txt", n=config.n)
