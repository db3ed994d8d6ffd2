"""Shared fixtures: offline mode, a tiny random CLIP, a temporary artifact root and small real-format corpora."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

# Before anything imports huggingface_hub / open_clip: a stray download must fail at once, not retry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from mmlib.core.artifacts import stable_hash  # noqa: E402
from mmlib.models.clip import ModelBundle, TinyClipArch, build_tiny_clip, tiny_bundle  # noqa: E402

#: The smallest useful CLIP: 16 px images, 2x2 patches, one layer per tower.
TEST_ARCH = TinyClipArch(embed_dim=16, image_size=16, patch_size=8, vision_width=32, vision_layers=1,
                         vision_head_width=16, text_width=32, text_layers=1, text_heads=2, context_length=16)


@pytest.fixture
def tiny_arch() -> TinyClipArch:
    """The test architecture (embed 16, widths 32, one layer per tower)."""
    return TEST_ARCH


@pytest.fixture
def tiny_clip(tiny_arch: TinyClipArch) -> ModelBundle:
    """A tiny CLIP at random (seed 0) weights, in eval mode."""
    return tiny_bundle(build_tiny_clip(tiny_arch, seed=0), tiny_arch)


@pytest.fixture
def artifact_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh artifact root; ``$MMLIB_ARTIFACTS`` points at it for the test's duration."""
    root = tmp_path / "artifacts"
    monkeypatch.setenv("MMLIB_ARTIFACTS", str(root))
    return root


def pattern_image(index: int, size: int = 20) -> Image.Image:
    """A deterministic RGB image that differs for every ``index``."""
    rng = np.random.default_rng(index)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB")


@pytest.fixture(name="pattern_image")
def pattern_image_fixture() -> Callable[..., Image.Image]:
    """The :func:`pattern_image` function: ``pattern_image(index, size=20)`` -> RGB image."""
    return pattern_image


class SyntheticPairs:
    """An in-memory PairDataset of ``n`` deterministic random images and captions."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed = n, seed

    @property
    def fingerprint(self) -> str:
        return stable_hash("SyntheticPairs", self.n, self.seed)

    def __len__(self) -> int:
        return self.n

    def image(self, index: int) -> Image.Image:
        return pattern_image(1000 * self.seed + index)

    def caption(self, index: int) -> str:
        colors = ("red", "green", "blue", "yellow", "purple")
        return f"a photo of {index % 7} {colors[(index + self.seed) % 5]} things"


@pytest.fixture
def synthetic_pairs() -> type[SyntheticPairs]:
    """The :class:`SyntheticPairs` class (call it with ``n`` and an optional ``seed``)."""
    return SyntheticPairs


@pytest.fixture
def make_csv_corpus(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_csv_corpus(n=40, name="pairs.csv")`` writes ``n`` PNGs and a CSV/TSV listing them.

    Image paths are relative (``images/00000.png``) to the CSV's folder; columns ``filepath`` and ``title``.
    """

    def make(n: int = 40, name: str = "pairs.csv") -> Path:
        folder = tmp_path / "csv_corpus"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        path = folder / name
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t" if name.endswith(".tsv") else ",")
            writer.writerow(["filepath", "title"])
            for i in range(n):
                pattern_image(i).save(folder / "images" / f"{i:05d}.png")
                writer.writerow([f"images/{i:05d}.png", SyntheticPairs(n).caption(i)])
        return path

    return make


@pytest.fixture
def make_wds_shards(tmp_path: Path) -> Callable[..., list[Path]]:
    """Factory: ``make_wds_shards(sizes=(3, 2))`` writes img2dataset-style shards with ``webdataset.TarWriter``.

    Shard ``s`` holds ``sizes[s]`` samples ``{key}.png`` + ``{key}.txt`` + ``{key}.json`` with keys
    ``f"{s:05d}{j:04d}"``; ``extra`` maps a shard number to additional raw samples (dicts for TarWriter).
    Returns the shard paths (``<tmp>/wds/00000.tar``, ...).
    """
    import webdataset

    def make(sizes: tuple[int, ...] = (3, 2), extra: dict[int, list[dict]] | None = None) -> list[Path]:
        folder = tmp_path / "wds"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for s, size in enumerate(sizes):
            path = folder / f"{s:05d}.tar"
            with webdataset.TarWriter(str(path)) as sink:
                for j in range(size):
                    key = f"{s:05d}{j:04d}"
                    sink.write({"__key__": key, "png": pattern_image(100 * s + j),
                                "txt": f"caption {key}", "json": {"key": key, "status": "success"}})
                for sample in (extra or {}).get(s, []):
                    sink.write(sample)
            paths.append(path)
        return paths

    return make


#: Attribute names of the CelebA fixture (a subset of CelebA's 40, in CelebA's order).
CELEBA_FIXTURE_ATTRIBUTES = ("5_o_Clock_Shadow", "Eyeglasses", "Male", "Smiling", "Young")


@pytest.fixture
def make_celeba(tmp_path: Path) -> Callable[..., Path]:
    """``make(n=12, partitions=True)`` -> a folder in CelebA's exact layout: ``list_attr_celeba.txt`` (count,
    names, then ``000001.jpg -1  1 ...`` rows, values padded as CelebA pads them), ``img_align_celeba/*.jpg``
    and ``list_eval_partition.txt`` (image ``i`` in partition ``i % 3``). ``Male`` is +1 for odd ``i``.
    """
    def make(n: int = 12, partitions: bool = True) -> Path:
        root = tmp_path / "celeba"
        (root / "img_align_celeba").mkdir(parents=True)
        rows = [str(n), " ".join(CELEBA_FIXTURE_ATTRIBUTES) + " "]
        for i in range(1, n + 1):
            name = f"{i:06d}.jpg"
            pattern_image(i, size=24).save(root / "img_align_celeba" / name, quality=90)
            values = [1 if (i * (a + 2)) % 3 == 0 else -1 for a in range(len(CELEBA_FIXTURE_ATTRIBUTES))]
            values[CELEBA_FIXTURE_ATTRIBUTES.index("Male")] = 1 if i % 2 else -1
            rows.append(name + " " + " ".join(f"{v:2d}" for v in values))
        (root / "list_attr_celeba.txt").write_text("\n".join(rows) + "\n")
        if partitions:
            (root / "list_eval_partition.txt").write_text(
                "".join(f"{i:06d}.jpg {i % 3}\n" for i in range(1, n + 1)))
        return root
    return make


@pytest.fixture
def load_benchmark() -> Callable[[str], object]:
    """Import ``benchmarks/<name>.py`` as the module ``<name>`` (the benchmarks are scripts, not a package).

    ``benchmarks/`` is put on ``sys.path``, as the scripts themselves run, and the module is registered in
    ``sys.modules`` under its name (dataclasses with postponed annotations need it, and ``bench_*`` import ``fair``).
    """
    import importlib
    import sys

    from mmlib.core.paths import REPO_ROOT

    folder = str(REPO_ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)

    def load(name: str):
        module = importlib.import_module(name)
        assert module.__file__ == str(REPO_ROOT / "benchmarks" / f"{name}.py"), module.__file__
        return module

    return load
